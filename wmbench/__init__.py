"""wmbench: a benchmark harness for robust image watermarking."""

__version__ = "0.1.0"
