"""A server-side source shared by every previewing peer.

One thread reads the source (blocking `frames()`), paces files to their frame rate so a
preview plays in real time (`streamer.sources.pace`), loops files when they end, and hands the newest frame to the
event loop. Peers subscribe and get the latest frame each time one arrives; a slow peer
skips frames instead of queueing them.

Output timing: files restart their pts when they loop and cameras don't start at 0, so
frames are stamped with the hub's own clock (90 kHz, the RTP video clock) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from fractions import Fraction

from streamer.frame import Frame
from streamer.sources.base import Source
from streamer.sources.pace import paced

log = logging.getLogger(__name__)

CLOCK = Fraction(1, 90000)


class SourceHub:
    def __init__(self, opener: Callable[[], Source]) -> None:
        """`opener` opens the source; it is called once now (so mistakes fail early) and again
        each time a file loops."""
        self._opener = opener
        self._source: Source | None = opener()
        self.info = self._source.info
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._latest: Frame | None = None
        self._version = 0
        self._changed = asyncio.Event()
        self._ended = False
        self._started_at = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="streamer-source", daemon=True)
        self._thread.start()

    def close_now(self) -> None:
        """Close a hub that was never started."""
        self._stop.set()
        if self._source is not None:
            self._source.close()

    async def aclose(self) -> None:
        self._stop.set()
        source = self._source
        if source is not None:
            source.close()  # unblocks a camera read
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._publish(None)

    async def frames(self) -> AsyncIterator[Frame]:
        """Each newer frame as it arrives, as a copy the caller may fill in; ends with the source."""
        seen = 0
        while not self._ended:
            if self._version == seen:
                await self._changed.wait()
                continue
            seen, frame = self._version, self._latest
            yield dataclasses.replace(frame, meta=dict(frame.meta))

    def _publish(self, frame: Frame | None) -> None:
        # On the event loop: wake every subscriber, then arm a fresh event for the next frame.
        if frame is None:
            self._ended = True
        else:
            self._latest = frame
            self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._play(self._source)
                if self._stop.is_set() or self.info.live:
                    break
                self._source.close()
                self._source = self._opener()
        except Exception:
            log.exception("the preview source failed")
        finally:
            if self._source is not None:
                self._source.close()
            self._hand_over(None)

    def _play(self, source: Source) -> None:
        frames = source.frames()
        if not source.info.live:
            frames = paced(frames, sleep=self._stop.wait)  # a file plays in real time
        for frame in frames:
            if self._stop.is_set():
                return
            now = time.monotonic()
            frame.captured_at = now
            frame.pts = round((now - self._started_at) / CLOCK)
            frame.time_base = CLOCK
            self._hand_over(frame)

    def _hand_over(self, frame: Frame | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(self._publish, frame)
