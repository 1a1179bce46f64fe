"""The track aiortc pulls the composited video from.

aiortc's sender calls `recv()` whenever it is ready for another frame. Handing it a queue
lets delay grow without bound when encoding falls behind (aiortc issue #1192), so this
track keeps only the newest frame: `recv()` waits for a frame newer than the last one it
returned, and a frame replaced before anyone pulled it counts as a drop. The sender comes
back for the next frame only once the last one is encoded and sent, which is when the
track reports it done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame


class LatestFrameTrack(MediaStreamTrack):
    kind = "video"

    def __init__(
        self, on_sent: Callable[[float], None] | None = None, on_done: Callable[[], None] | None = None
    ) -> None:
        super().__init__()
        self._frame: VideoFrame | None = None
        self._captured_at = 0.0
        self._fresh = asyncio.Event()
        self._on_sent = on_sent
        self._on_done = on_done
        self.published = 0
        self.sent = 0
        self.dropped = 0

    def publish(self, frame: VideoFrame, captured_at: float) -> None:
        """Offer the newest composited frame; `captured_at` is its capture time (monotonic)."""
        if self._fresh.is_set():
            self.dropped += 1
        self._frame = frame
        self._captured_at = captured_at
        self.published += 1
        self._fresh.set()

    async def recv(self) -> VideoFrame:
        if self.sent and self._on_done is not None:
            self._on_done()
        while not self._fresh.is_set():
            if self.readyState != "live":
                raise MediaStreamError
            await self._fresh.wait()
        if self.readyState != "live":
            raise MediaStreamError
        self._fresh.clear()
        self.sent += 1
        if self._on_sent is not None:
            self._on_sent(time.monotonic() - self._captured_at)
        return self._frame

    def stop(self) -> None:
        super().stop()
        # Wake a pending recv() so the sender sees the end instead of waiting forever.
        self._fresh.set()
