"""A small harness in the style of pipecat's run_test: push frames through stages, collect what comes out."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from fractions import Fraction

import torch

from streamer.frame import Frame
from streamer.sources.base import SourceInfo


def make_frames(n: int, size=(8, 8), time_base=Fraction(1, 25)) -> list[Frame]:
    return [
        Frame(
            image=torch.full((*size, 3), i % 256, dtype=torch.uint8),
            pts=i,
            time_base=time_base,
            index=i,
            captured_at=0.0,
        )
        for i in range(n)
    ]


async def until(condition, what: str, timeout: float = 60.0, interval: float = 0.002) -> None:
    """Wait on the event loop until `condition()` holds, checking every `interval` seconds (longer
    for a costly condition); the timeout only stops a broken test."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


class ListSource:
    """Yields prepared frames, optionally paced like a camera (`interval` seconds apart)."""

    def __init__(self, frames: list[Frame], *, live: bool = False, interval: float = 0.0) -> None:
        self._frames = frames
        self._interval = interval
        self.closed = threading.Event()
        h, w = frames[0].image.shape[:2] if frames else (8, 8)
        self.info = SourceInfo(w, h, 25.0, Fraction(1, 25), len(frames), live)

    def frames(self):
        for frame in self._frames:
            if self.closed.is_set():
                return
            if self._interval:
                time.sleep(self._interval)
            frame.captured_at = time.monotonic()
            yield frame

    def close(self) -> None:
        self.closed.set()


class ListSink:
    def __init__(self, delay: float = 0.0) -> None:
        self.frames: list[Frame] = []
        self.closed = 0
        self.delay = delay

    def write(self, frame: Frame) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.frames.append(frame)

    def close(self) -> None:
        self.closed += 1


class FnStage:
    """A stage that applies `fn` to each frame and records the batch sizes it saw."""

    def __init__(self, name: str, fn=None, delay: float = 0.0) -> None:
        self.name = name
        self.fn = fn
        self.delay = delay
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, frames):
        self.batches.append(len(frames))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        for frame in frames:
            if self.fn is not None:
                self.fn(frame)
        return frames


@contextlib.contextmanager
def params_switched(target, choices):
    """Assign `target.params` from `choices` in turn, from another thread, while the body runs.

    The GIL is handed over as often as possible so that changes land in the middle of a frame
    (the live bug this guards: a mode read twice per frame). Yields the list holding the count
    of switches made."""
    stop, switches = threading.Event(), [0]

    def switch():
        while not stop.is_set():
            target.params = choices[switches[0] % len(choices)]
            switches[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=switch, daemon=True)
    thread.start()
    try:
        yield switches
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
