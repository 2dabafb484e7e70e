"""Persistence: the domain's repository protocols implemented in SQL (sql/), on an
embedded SQLite store and a PostgreSQL store."""
