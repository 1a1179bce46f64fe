"""Backgrounds for composites: a solid colour, an image, or a video looped by time.

Each is loaded once; `frame(h, w, t, device)` returns float (h, w, 3) in [0, 1] on `device`,
scaled to cover the output and centre-cropped, and cached per output size (a still background
costs nothing per frame).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streamer.errors import MediaError
from streamer.sources.video import VideoSource, VideoSourceParams


def cover(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (h, w, 3): scaled to cover h x w (aspect kept), centre-cropped."""
    src_h, src_w = image.shape[:2]
    scale = max(h / src_h, w / src_w)
    new_h, new_w = max(h, math.ceil(src_h * scale - 1e-6)), max(w, math.ceil(src_w * scale - 1e-6))
    x = image.permute(2, 0, 1)[None].to(torch.float32) / 255.0
    if (new_h, new_w) != (src_h, src_w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - h) // 2, (new_w - w) // 2
    return x[0, :, top : top + h, left : left + w].permute(1, 2, 0).clamp(0, 1).contiguous()


def probably_video(path: str | Path) -> bool:
    import av

    try:
        with av.open(str(path)) as container:
            # FFmpeg opens a still (even a broken one) as a one-frame "image2" video.
            still = container.format.name == "image2" or container.format.name.endswith("_pipe")
            return bool(container.streams.video) and not still
    except (av.FFmpegError, OSError):
        return False


class SolidBackground:
    def __init__(self, color: tuple[int, int, int]):
        self.color = tuple(color)
        self._cache: dict = {}

    def frame(self, h: int, w: int, t: float, device: torch.device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._cache:
            rgb = torch.tensor(self.color, dtype=torch.float32, device=device) / 255.0
            self._cache = {key: rgb.expand(h, w, 3)}
        return self._cache[key]


class ImageBackground:
    def __init__(self, path: str | Path):
        from PIL import UnidentifiedImageError

        from streamer.stills import TooLarge, read_rgb

        try:
            self.image = torch.from_numpy(read_rgb(path))
        except TooLarge as err:
            raise MediaError(f"background image {err}") from None
        except (OSError, UnidentifiedImageError, ValueError) as err:
            fix = "pass --background PATH to a PNG or JPEG"
            if Path(path).is_file() and probably_video(path):
                fix = "it is a video: pass --mode video for a moving background"
            raise MediaError(f"cannot read background image: {path} ({fix})") from err
        self._cache: dict = {}

    def frame(self, h: int, w: int, t: float, device: torch.device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._cache:
            self._cache = {key: cover(self.image.to(device), h, w)}
        return self._cache[key]


class VideoBackground:
    """Decodes lazily, in presentation order, on the caller's thread; loops by time. The frames are
    the video source's: upright, and a packet that does not decode is skipped, not the job ended."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.duration: float | None = None
        self._source = self._frames = None
        self._restart()
        self._current: tuple[float, np.ndarray] | None = None
        self._next = self._decode_next()
        self._cache: tuple | None = None

    def _restart(self) -> None:
        self.close()
        try:
            self._source = VideoSource(self.path, VideoSourceParams(live=False))
        except MediaError as err:
            raise MediaError(f"background video: {err}") from None
        self._frames = self._source.frames()

    def _decode_next(self) -> tuple[float, np.ndarray] | None:
        frame = next(self._frames, None)
        return None if frame is None else (frame.time, frame.image.numpy())

    def _rewind(self) -> None:
        self._restart()
        self._current, self._next = None, self._decode_next()

    def _at(self, t: float) -> tuple[float, np.ndarray]:
        if self.duration:
            t = t % self.duration
        if self._current is not None and t < self._current[0]:
            self._rewind()
        while self._next is not None and (self._current is None or self._next[0] <= t):
            self._current, self._next = self._next, self._decode_next()
        if self._next is None and self.duration is None:
            # End reached: the loop length is the last frame's time plus one frame.
            self.duration = self._current[0] + 1.0 / (self._source.info.fps or 25)
            if t >= self.duration:
                self._rewind()
                return self._at(t)
        return self._current

    def frame(self, h: int, w: int, t: float, device: torch.device) -> torch.Tensor:
        when, pixels = self._at(t)
        key = (when, h, w, str(device))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, cover(torch.from_numpy(pixels).to(device), h, w))
        return self._cache[1]

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()  # the source's decoder is released as its iterator ends
        if self._source is not None:
            self._source.close()
