"""A numbered PNG per frame: `out/frame_%05d.png`, or a folder ending in `/` (frame_%06d.png).

RGBA frames give RGBA PNGs, RGB give RGB and mattes give grayscale. Files are numbered
from 0 in the order written (PNG has no timestamps; the pipeline never drops file frames).
Each PNG is written under a temporary name and renamed, so an interrupted job never leaves
a half-written image (the half-written `.partial` files a killed job leaves are removed
by the next run). With `overwrite`, images from an earlier run that match the pattern
are removed first, so no stale frame lingers past the new end.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from PIL import Image

from streamer.errors import MediaError
from streamer.frame import Frame
from streamer.sinks.paths import PARTIAL, ensure_writable_folder, output_array, remove_quietly

DEFAULT_PATTERN = "frame_%06d.png"
PRINTF_INT = re.compile(r"%0?(\d*)d")
PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def is_png_sequence(path: str) -> bool:
    return path.endswith(("/", os.sep)) or (
        path.lower().endswith(".png") and PRINTF_INT.search(path) is not None
    )


def pattern_of(path: str) -> str:
    return os.path.join(path, DEFAULT_PATTERN) if path.endswith(("/", os.sep)) else path


def existing_frames(pattern: str, suffix: str = "") -> list[Path]:
    """Files in the pattern's folder whose names the pattern could have produced (plus `suffix`):
    `%d.png` never makes `0001.png`, so `--overwrite` leaves a folder's own pictures alone."""
    folder, name = os.path.split(pattern)
    field = PRINTF_INT.search(name)
    head, tail = name[: field.start()], name[field.end() :]
    regex = re.compile(re.escape(head) + r"( *\d+)" + re.escape(tail + suffix) + "$")

    def made_here(path: Path) -> bool:
        number = regex.match(path.name)
        return number is not None and field.group(0) % int(number[1]) == number[1]

    root = Path(folder or ".")
    return sorted(filter(made_here, root.iterdir())) if root.is_dir() else []


class PngSequenceSink:
    realtime = False
    keep_up = "record a video file instead: .mp4, or .webm or .mkv for alpha"

    def __init__(self, path: str, *, overwrite: bool = False, compress_level: int = 1) -> None:
        self.pattern = pattern_of(str(path))
        if len(PRINTF_INT.findall(os.path.basename(self.pattern))) != 1:
            raise MediaError(f"bad PNG pattern: {path} (use one number field, like out/frame_%05d.png)")
        self.folder = Path(os.path.dirname(self.pattern) or ".")
        stale = existing_frames(self.pattern)
        if stale and not overwrite:
            raise MediaError(f"output exists: {stale[0]} (pass --overwrite to replace it)")
        ensure_writable_folder(self.folder)
        # Half-written images of a killed run are of no use to anyone: they go in any case.
        for old in [*stale, *existing_frames(self.pattern, PARTIAL)]:
            remove_quietly(old)
        # zlib level 1: several times faster than the default 6 for a few % more bytes.
        self.compress_level = compress_level
        self.frames_written = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return self.pattern

    def write(self, frame: Frame) -> None:
        array = output_array(frame)
        with self._lock:
            target = self.pattern % self.frames_written
            partial = f"{target}{PARTIAL}"
            image = Image.fromarray(
                array[:, :, 0] if array.shape[2] == 1 else array, PIL_MODES[array.shape[2]]
            )
            try:
                image.save(partial, format="PNG", compress_level=self.compress_level)
                os.replace(partial, target)
            except OSError as err:
                remove_quietly(partial)
                raise MediaError(
                    f"cannot write {target}: {err.strerror or err} (check the free disk space)"
                ) from err
            self.frames_written += 1

    def close(self) -> None:
        """Nothing is buffered: every written frame is already a complete file."""
