"""Business rules of keys, handles, lifecycle, policy and audit. No gRPC in here."""
