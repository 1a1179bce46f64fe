"""A webcam through OpenCV's VideoCapture (V4L2 on Linux, the platform default elsewhere).

The pts are microseconds of the monotonic clock at capture, counted from the first frame,
so a camera that delivers irregularly keeps its real timing. Width, height and fps are
requests: the camera picks the nearest mode it has, and `info` reports what it picked.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer.config import Maybe, Number, Params, Whole
from streamer.errors import ConfigError, DeviceError
from streamer.frame import Frame
from streamer.sources.base import SourceInfo

log = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 1_000_000)
MAX_FAILED_READS = 50
"""Consecutive failed reads (about 1-2 s at camera rates) before the camera counts as gone."""


class WebcamParams(Params):
    prefix = "webcam"
    width: Maybe(Whole(1, 16384)) = None
    height: Maybe(Whole(1, 16384)) = None
    fps: Maybe(Number(above=0, hi=1000)) = None
    """None: the camera's current mode."""


def parse_device(spec: str) -> int | str:
    """`webcam:N` -> N; a device path stays a path."""
    if spec.startswith("webcam:"):
        number = spec.removeprefix("webcam:")
        if not number.isdigit():
            raise ConfigError(f"input: {spec!r} is not a camera (use webcam:0, webcam:1, ... or /dev/videoN)")
        return int(number)
    return spec


def cameras_here() -> list[str] | None:
    """The `webcam:N` names of this machine's cameras, or None where they cannot be listed."""
    if not sys.platform.startswith("linux"):
        return None
    from streamer.doctor import video_devices

    return [f"webcam:{Path(d.node).name.removeprefix('video')}" for d in video_devices() if d.capture]


def missing_camera(spec: str, cameras: list[str] | None) -> str:
    """The one line for a camera that did not open, naming the ones that would."""
    others = [name for name in cameras or [] if name != spec and f"/dev/video{name[7:]}" != spec]
    if cameras is None:
        hint = "or pass webcam:1, webcam:2, ..."
    elif others:
        hint = f"or pass {' or '.join(others)}"
    else:
        hint = "no other camera is connected (`streamer doctor` lists them)"
    return f"no camera at {spec}: check it is connected and not used by another app; {hint}"


def open_capture(device: int | str) -> Any:
    import cv2

    # OpenCV prints its own warnings for a missing camera; our one-line error says it better.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    return cv2.VideoCapture(device, backend)


class WebcamSource:
    """`capture` replaces the OpenCV VideoCapture (tests pass a stub with read/set/get/release)."""

    def __init__(self, spec: str, params: WebcamParams | None = None, capture: Any = None) -> None:
        import cv2

        self.spec = spec
        self.params = params or WebcamParams()
        device = parse_device(spec)
        self._cap = capture if capture is not None else open_capture(device)
        if not self._cap.isOpened():
            self._cap.release()
            raise DeviceError(missing_camera(spec, cameras_here()))
        self._request(cv2)
        width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0) or None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._reading = False
        self.info = SourceInfo(
            width=width,
            height=height,
            fps=fps,
            time_base=TIME_BASE,
            frame_count=None,
            live=True,
            audio_path=None,
            description=f"{spec} ({width}x{height}" + (f" @ {fps:g} fps)" if fps else ")"),
        )

    def _request(self, cv2: Any) -> None:
        p = self.params
        if p.width or p.height:
            # MJPG lets USB cameras reach HD rates that raw YUYV cannot; ignored where unsupported.
            self._cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        if p.width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, p.width)
        if p.height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, p.height)
        if p.fps:
            self._cap.set(cv2.CAP_PROP_FPS, p.fps)

    def frames(self) -> Iterator[Frame]:
        with self._lock:
            if self._stop.is_set():
                return
            self._reading = True
        try:
            yield from self._read_loop()
        finally:
            with self._lock:
                self._reading = False
                self._cap.release()

    def _read_loop(self) -> Iterator[Frame]:
        start: int | None = None
        last_pts = -1
        failures = 0
        index = 0
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            now = time.monotonic_ns() // 1000
            if not ok or bgr is None:
                failures += 1
                if failures >= MAX_FAILED_READS:
                    raise DeviceError(
                        f"camera {self.spec} stopped delivering frames (check the cable, or close other apps using it)"
                    )
                continue
            failures = 0
            start = now if start is None else start
            pts = max(now - start, last_pts + 1)  # strictly increasing even if two reads share a tick
            last_pts = pts
            yield Frame(
                image=bgr_to_rgb(bgr),
                pts=pts,
                time_base=TIME_BASE,
                index=index,
                captured_at=now / 1e6,
            )
            index += 1

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if not self._reading:
                self._cap.release()


def bgr_to_rgb(bgr: np.ndarray) -> torch.Tensor:
    if bgr.ndim == 2:  # some cameras deliver gray
        return torch.from_numpy(np.ascontiguousarray(np.repeat(bgr[:, :, None], 3, axis=2)))
    return torch.from_numpy(np.ascontiguousarray(bgr[:, :, 2::-1]))
