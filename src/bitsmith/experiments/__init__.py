"""Documented, reproducible experiments built on the public API."""
