"""Keyturn client: generated ``keyturn.v1`` stubs and a typed asyncio client."""
