"""streamer: real-time video matting with BiRefNet."""

__version__ = "0.1.0"
