"""`open_source(spec)`: one string names any input.

webcam:0, /dev/video2        a camera (WebcamSource)
frames/, 'shots/*.png', a.jpg an image folder, glob or single image (ImageSource)
rtsp://..., https://..., a.mp4 a stream or video file (VideoSource)
"""

from __future__ import annotations

import re
from pathlib import Path

from streamer.sources.base import Source
from streamer.sources.images import GLOB_CHARS, ImageSource, ImageSourceParams, is_image
from streamer.sources.video import VideoSource, VideoSourceParams, scheme_of
from streamer.sources.webcam import WebcamParams, WebcamSource

CAMERA_PATH = re.compile(r"^/dev/video\d+$")


def kind_of(spec: str) -> str:
    """'webcam', 'images' or 'video'."""
    if spec.startswith("webcam:") or CAMERA_PATH.match(spec):
        return "webcam"
    if scheme_of(spec) is not None:
        return "video"
    if any(ch in spec for ch in GLOB_CHARS) or Path(spec).is_dir() or is_image(Path(spec)):
        return "images"
    return "video"


def open_source(
    spec: str,
    *,
    live: bool | None = None,
    fps: float | None = None,
    width: int | None = None,
    height: int | None = None,
) -> Source:
    """Open the input named by `spec`; fails at once with a one-line StreamerError.

    `live` overrides the guess for video URLs/files; `fps` is the rate given to images or
    requested from a camera; `width`/`height` are camera requests. Video files keep their
    own size and timing.
    """
    kind = kind_of(spec)
    if kind == "webcam":
        return WebcamSource(spec, WebcamParams(width=width, height=height, fps=fps))
    if kind == "images":
        return ImageSource(spec, ImageSourceParams() if fps is None else ImageSourceParams(fps=fps))
    return VideoSource(spec, VideoSourceParams(live=live))
