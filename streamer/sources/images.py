"""An image folder, a glob or a single image as a clip at a fixed frame rate.

Files are taken in natural order (frame2 before frame10), frame `i` gets pts `i` in a time
base of 1/fps; EXIF orientation is applied. An image that cannot be read is skipped (its time
slot stays empty) and named in `damage` for the job's final warning; only a folder of which no
image can be read is an error. Images whose size differs from the first one are resized to the first one's
size (a clip has one size; sinks cannot change it midway) and a warning is logged once.
"""

from __future__ import annotations

import glob
import logging
import re
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from streamer.config import Number, Params
from streamer.errors import MediaError
from streamer.frame import Frame
from streamer.sources.base import InputDamage, SourceInfo
from streamer.stills import TooLarge, read_rgb

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
GLOB_CHARS = ("*", "?", "[")


class ImageSourceParams(Params):
    prefix = "images"
    fps: Number(above=0, hi=1000) = 25.0
    """Frame rate given to the images (they carry no timing of their own)."""


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(spec: str) -> list[Path]:
    """The images a folder, glob or single file names, naturally sorted."""
    if any(ch in spec for ch in GLOB_CHARS):
        paths = [Path(p) for p in glob.glob(spec)]
    elif Path(spec).is_dir():
        paths = list(Path(spec).iterdir())
    else:
        paths = [Path(spec)]
    images = sorted((p for p in paths if is_image(p) and p.is_file()), key=natural_key)
    if not images:
        from streamer.batch.inputs import VIDEO_SUFFIXES

        if any(p.suffix.lower() in VIDEO_SUFFIXES for p in paths):
            raise MediaError(
                f"{spec} holds videos, not images: matte each with `streamer batch {spec} -o OUT_DIR`"
            )
        kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
        raise MediaError(f"no images found in {spec} (expected files ending in {kinds})")
    return images


def load_rgb(path: Path) -> np.ndarray:
    try:
        return read_rgb(path)
    except FileNotFoundError as err:
        raise MediaError(f"input not found: {path} (check the path)") from err
    except TooLarge as err:
        raise MediaError(str(err)) from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MediaError(f"cannot read image {path}: not an image or damaged (remove or replace it)") from err


def fps_time_base(fps: float) -> Fraction:
    return 1 / Fraction(fps).limit_denominator(1001)


class ImageSource:
    """Yields the images in order; the first one is read at once to fail early and learn the size."""

    def __init__(self, spec: str, params: ImageSourceParams | None = None) -> None:
        self.spec = spec
        self.params = params or ImageSourceParams()
        self._paths = list_images(spec)
        self.damage = InputDamage(spec, files_expected=len(self._paths))
        self._first_index, self._first = self._first_readable()
        self._stop = threading.Event()
        height, width = self._first.shape[:2]
        self.info = SourceInfo(
            width=width,
            height=height,
            fps=float(self.params.fps),
            time_base=fps_time_base(self.params.fps),
            frame_count=len(self._paths),
            live=False,
            audio_path=None,
            files=tuple(map(str, self._paths)),
            description=f"{spec} ({len(self._paths)} images {width}x{height} @ {self.params.fps:g} fps)",
        )

    def _first_readable(self) -> tuple[int, np.ndarray]:
        """The first image that loads (it gives the clip's size); the unreadable ones before it are lost."""
        for index, path in enumerate(self._paths):
            try:
                return index, load_rgb(path)
            except MediaError as err:
                if len(self._paths) == 1:
                    raise
                self._lose(path, err)
        raise MediaError(
            f"none of the {len(self._paths)} images in {self.spec} can be read (damaged or not images)"
        )

    def _lose(self, path: Path, err: MediaError) -> None:
        self.damage.files_lost.append(path.name)
        log.info("skipped %s", err)

    def frames(self) -> Iterator[Frame]:
        size = (self.info.width, self.info.height)
        warned = False
        count = 0
        for index, path in enumerate(self._paths):
            if index < self._first_index:
                continue
            if self._stop.is_set():
                return
            try:
                image = self._first if index == self._first_index else load_rgb(path)
            except MediaError as err:
                self._lose(path, err)
                continue
            if image.shape[1::-1] != size:
                if not warned:
                    log.warning("%s is %dx%d; resizing to %dx%d", path, *image.shape[1::-1], *size)
                    warned = True
                image = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))
            yield Frame(
                image=torch.from_numpy(np.ascontiguousarray(image)),
                pts=index,
                time_base=self.info.time_base,
                index=count,
                captured_at=time.monotonic(),
            )
            count += 1

    def close(self) -> None:
        self._stop.set()
