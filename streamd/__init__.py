"""streamd: X API v2 filtered stream -> Kafka, at least once."""

__version__ = "0.1.0"

__all__ = ["__version__"]
