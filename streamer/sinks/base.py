"""What every sink provides.

A sink is opened eagerly (an existing output without `overwrite`, an unwritable folder or an
unknown format fails before any work starts, with a one-line `MediaError`), then receives
composited frames in order. `write` and `close` block and run in the sink's own thread.
`close` must leave a playable output containing every frame written so far, also after
Ctrl-C or an error upstream.
"""

from __future__ import annotations

from typing import Protocol

from streamer.frame import Frame


class Sink(Protocol):
    realtime: bool
    """True where a late frame is worth nothing (a virtual camera, a preview): in a live job the
    newest frame wins. False for recordings (files): a live job lets them fall behind by a
    buffer of frames instead (`streamer.pipeline.runner.RECORDING_BUFFER`), so an encoder's burst
    costs no frame. A sink without the attribute counts as real time."""
    path: str
    """Recordings: the file, or the pattern of files, that the job's summary names the sink by."""
    label: str
    """Other sinks: what the job's summary names the sink by ("the virtual camera")."""
    keep_up: str
    """Recordings: what the user can change when frames were lost because the sink could not keep
    up with a live source (shown in the job's summary)."""

    def write(self, frame: Frame) -> None:
        """Consume `frame.output` (uint8 HWC, C = 1, 3 or 4, CPU) with its pts/time_base."""
        ...

    def close(self) -> None:
        """Flush encoders and finish the file or device; idempotent."""
        ...
