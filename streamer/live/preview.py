"""`streamer run --source SRC --sink webrtc`: the `serve` page previewing a server-side source."""

from __future__ import annotations

from streamer.config import JobConfig
from streamer.live.serve import ServeParams, serve


def serve_source(source: str, config: JobConfig, host: str = "127.0.0.1", port: int = 8080) -> int:
    return serve(ServeParams(host=host, port=port, source=source), config)
