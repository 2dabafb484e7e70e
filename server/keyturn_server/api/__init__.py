"""gRPC transport: servicers (proto <-> domain), status mapping and the guard around every call."""
