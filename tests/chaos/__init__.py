"""Chaos tests: servers as real processes, started against each other, killed and restarted."""
