"""certgate: an mTLS-terminating reverse proxy with its own small private CA."""

__version__ = "0.1.0"
