"""Logs (JSON lines by category) and Prometheus metrics."""
