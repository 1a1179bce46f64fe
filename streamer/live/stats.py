"""Live counters a peer reports to its page: rates over a sliding window and latency percentiles."""

from __future__ import annotations

import time
from collections import deque


class RateMeter:
    """Events per second over the last `window_s` seconds (at most `most` events kept)."""

    def __init__(self, window_s: float = 2.0, most: int = 1024) -> None:
        self._window = window_s
        # Trimming by time bounds the window at any steady rate; the cap bounds it at any rate.
        self._times: deque[float] = deque(maxlen=most)

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float | None = None) -> float:
        self._trim(time.monotonic() if now is None else now)
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()


class Interval:
    """A running average of the gaps between successive times (seconds); a gap outside
    (0, `longest`) is a stall or a seek, not the pace, and is left out."""

    def __init__(self, longest: float, weight: float) -> None:
        self.longest, self.weight = longest, weight
        self.value: float | None = None
        self._last: float | None = None

    @property
    def last(self) -> float | None:
        """The time noted last."""
        return self._last

    def note(self, t: float) -> None:
        last, self._last = self._last, t
        if last is None or not 0.0 < t - last < self.longest:
            return
        gap = t - last
        self.value = gap if self.value is None else self.value + self.weight * (gap - self.value)


class LatencyWindow:
    """The last `size` latencies (seconds) and their percentiles."""

    def __init__(self, size: int = 120) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._values.append(seconds)

    def percentile(self, q: float) -> float | None:
        return percentile(self._values, q)


def percentile(values, q: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
