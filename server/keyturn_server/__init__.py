"""Keyturn: key management and rotating workflow handles behind a gRPC API."""

__version__ = "0.1.0"
