"""rayprof: profile PyTorch models on video streams, one stream per Ray actor."""

__version__ = "0.1.0"
