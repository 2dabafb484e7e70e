"""Persistence: one Store protocol, an embedded SQLite store and a PostgreSQL store."""
