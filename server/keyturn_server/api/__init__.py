"""gRPC transport: servicers (proto <-> domain), status mapping and interceptors."""
