"""The package version, shared by every rank's start-up check."""

__version__ = "0.1.0"
