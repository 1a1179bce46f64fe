"""What every source provides.

A source is opened eagerly (so a missing file or camera fails before any work starts, with a
`MediaError`/`DeviceError` one-liner) and then iterated in a dedicated thread by the pipeline:
`frames()` is a *blocking* iterator. The pipeline decides the queue policy from `info.live`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from streamer.frame import Frame


@dataclass(frozen=True, slots=True)
class SourceInfo:
    width: int
    height: int
    fps: float | None
    """Nominal (average) frame rate; None when unknown."""
    time_base: Fraction
    frame_count: int | None
    """Number of frames when known (for progress bars and ETA)."""
    live: bool
    """True for cameras and network streams: latest frame wins downstream."""
    audio_path: str | None = None
    """A path/URL whose audio stream a file sink should carry over (None: no audio)."""
    description: str = ""
    files: tuple[str, ...] = ()
    """Local files this source reads: no output may be one of them."""


class Source(Protocol):
    info: SourceInfo

    def frames(self) -> Iterator[Frame]:
        """Yield frames in presentation order; blocking, runs in its own thread."""
        ...

    def close(self) -> None:
        """Release the device or file; safe to call twice and from another thread."""
        ...
