"""Playing a file as a camera would: each frame released at its own presentation time.

`streamer run --live` with a file source and `streamer serve --source FILE` use it, so benchmarks,
tests and demos see a file arrive at its frame rate instead of as fast as it decodes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

from streamer.frame import Frame

LATE_RESTART_S = 1.0
"""After a stall (slow decode) longer than this, play on from now instead of rushing to catch up."""


def paced(
    frames: Iterable[Frame],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[Frame]:
    """Yield each frame when its time (`frame.time` after the first's) has come on `clock`."""
    origin: float | None = None
    for frame in frames:
        now = clock()
        if origin is None:
            origin = now - frame.time
        due = origin + frame.time
        if now - due > LATE_RESTART_S or due - now > LATE_RESTART_S:  # a stall, or a jump in pts
            origin, due = now - frame.time, now
        if due > now:
            sleep(due - now)
        yield frame


class PacedSource:
    """A file source played at its own frame rate; otherwise the source it wraps."""

    def __init__(self, source, *, clock: Callable[[], float] = time.monotonic, sleep=None) -> None:
        self._source = source
        self._stop = threading.Event()
        self._clock = clock
        # Waiting on the stop event lets `close` end a long wait at once.
        self._sleep = sleep or self._stop.wait
        self.info = source.info

    def frames(self) -> Iterator[Frame]:
        for frame in paced(self._source.frames(), clock=self._clock, sleep=self._sleep):
            if self._stop.is_set():
                return
            yield frame

    def close(self) -> None:
        self._stop.set()
        self._source.close()

    def __getattr__(self, name: str):
        return getattr(self._source, name)  # what else the source tells (e.g. damaged frames)
