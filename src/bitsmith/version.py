"""The package version, on the ground floor so back ends can stamp it without importing bitsmith."""

__version__ = "0.1.0"
