"""What every source provides.

A source is opened eagerly (so a missing file or camera fails before any work starts, with a
`MediaError`/`DeviceError` one-liner) and then iterated in a dedicated thread by the pipeline:
`frames()` is a *blocking* iterator. The pipeline decides the queue policy from `info.live`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
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


@dataclass
class InputDamage:
    """What a source could not read, filled in as it goes; false when the input was whole.

    A damaged input is not an error: the job goes on past the damage, keeps everything it made,
    and ends with one warning line and exit status 3 (`errors.EXIT_DAMAGED_INPUT`).
    """

    name: str
    frames_lost: int = 0
    """Frames that could not be decoded, or that a truncated file is missing."""
    frames_expected: int | None = None
    files_lost: list[str] = field(default_factory=list)
    files_expected: int | None = None
    truncated: tuple[float, float] | None = None
    """(expected, decoded) seconds when the input ends before its stated duration."""
    unreadable_after: float | None = None
    """Seconds into a file of unknown length where it could not be read further."""

    def __bool__(self) -> bool:
        return bool(
            self.frames_lost or self.files_lost or self.truncated or self.unreadable_after is not None
        )

    def summary(self) -> str:
        """One line naming what was lost (and that the rest was kept)."""
        of_frames = f" of {self.frames_expected}" if self.frames_expected else ""
        if self.truncated:
            expected, decoded = self.truncated
            missing = f" ({self.frames_lost}{of_frames} frames missing)" if self.frames_lost else ""
            what = f"{self.name} is truncated: it ends at {decoded:.2f} s of its {expected:.2f} s{missing}"
        elif self.files_lost:
            names = ", ".join(self.files_lost[:3]) + (", ..." if len(self.files_lost) > 3 else "")
            what = (
                f"{len(self.files_lost)} of {self.files_expected} images in {self.name} could not be read "
                f"and were skipped ({names})"
            )
        elif self.unreadable_after is not None and not self.frames_lost:
            what = f"{self.name} is damaged: it could not be read past {self.unreadable_after:.2f} s"
        else:
            what = f"{self.name} is damaged: {self.frames_lost}{of_frames} frames could not be decoded and were skipped"
        return f"{what}; everything that could be read was processed and saved"


class Source(Protocol):
    info: SourceInfo

    def frames(self) -> Iterator[Frame]:
        """Yield frames in presentation order; blocking, runs in its own thread."""
        ...

    def close(self) -> None:
        """Release the device or file; safe to call twice and from another thread."""
        ...
