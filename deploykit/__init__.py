"""deploykit: a private ChatGPT-style assistant on your own hardware, planned, rendered and run."""

__version__ = "0.1.0"
