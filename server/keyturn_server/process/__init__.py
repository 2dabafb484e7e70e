"""One host: the data-directory lock, the listening ports, and ``--workers`` (one
supervisor and the serving processes it starts, sharing one port and one database)."""
