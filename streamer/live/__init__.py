"""Live output: WebRTC server with a browser page."""
