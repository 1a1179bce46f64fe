"""Virtual camera sink: composited frames to v4l2loopback (Linux) or OBS Virtual Camera (Windows, macOS).

Video-call apps expect a camera that delivers frames at a steady rate, while inference may run
slower or unevenly. So `write` only converts the frame and replaces the *latest* one; a sender
thread hands the latest frame to pyvirtualcam every 1/fps on `time.monotonic()` deadlines,
repeating it when nothing new came. Nothing here blocks the event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import threading
import time
from collections.abc import Callable
from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import AfterValidator

from streamer.config import Colour, Maybe, Number, Params, Whole, merge_params
from streamer.doctor import MODPROBE, OBS_FIX
from streamer.errors import ConfigError, DeviceError
from streamer.frame import Frame

log = logging.getLogger(__name__)


FORMATS = ("rgb", "bgr", "i420", "nv12", "yuyv", "uyvy", "gray")
"""Pixel formats handed to pyvirtualcam; with rgb/bgr it converts natively (to I420 on Linux)."""
BACKENDS = ("v4l2loopback", "obs", "unitycapture")
FITS = ("cover", "contain", "stretch")


def _even_side(value: int) -> int:
    if value % 2:
        raise ValueError("expected an even number of pixels (cameras subsample colour in 2x2 blocks)")
    return value


CameraSide = Annotated[Whole(2, 16384), AfterValidator(_even_side)]


class VcamParams(Params):
    width: Maybe(CameraSide) = None
    """Camera width; None: the source's."""
    height: Maybe(CameraSide) = None
    fps: Maybe(Number(hi=240, above=0)) = None
    """Rate the camera is fed at, whatever the inference rate; None: the source's (30 if unknown)."""
    device: Maybe(str) = None
    """e.g. /dev/video10 or 'OBS Virtual Camera'; None: the first free one."""
    fmt: Literal[FORMATS] = "rgb"
    backend: Maybe(Literal[BACKENDS]) = None
    """v4l2loopback, obs or unitycapture; None: whichever works on this OS."""
    fit: Literal[FITS] = "cover"
    """How a frame of another shape fills the camera: crop (cover), pad (contain) or stretch."""
    flatten_color: Colour = (0, 0, 0)
    """RGB that transparent pixels show (cameras have no alpha) and that pads 'contain'."""


# --- pixels ---------------------------------------------------------------------------------------


def to_rgb(output: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """uint8 (H, W, C) with C = 1, 3 or 4 -> uint8 (H, W, 3); alpha is flattened over `color`.

    OpenCV does the arithmetic: numpy's uint16 round trip costs ~90 ms per 720p frame, OpenCV ~5.
    """
    channels = output.shape[2]
    if channels == 3:
        return output
    if channels == 1:
        return cv2.cvtColor(np.ascontiguousarray(output[..., 0]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        rgba = np.ascontiguousarray(output)
        alpha = cv2.cvtColor(cv2.extractChannel(rgba, 3), cv2.COLOR_GRAY2RGB)
        fg = cv2.multiply(cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB), alpha, scale=1 / 255)
        if not any(color):
            return fg
        bg = np.empty_like(fg)
        bg[:] = color
        return cv2.add(fg, cv2.multiply(bg, cv2.bitwise_not(alpha), scale=1 / 255))
    raise ValueError(f"frame output has {channels} channels; expected 1, 3 or 4")


def fit_to(rgb: np.ndarray, width: int, height: int, fit: str, color: tuple[int, int, int]) -> np.ndarray:
    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    if fit == "stretch":
        return _resize(rgb, width, height)
    scale = (max if fit == "cover" else min)(width / w, height / h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = _resize(rgb, sw, sh)
    if fit == "cover":
        x, y = (sw - width) // 2, (sh - height) // 2
        return np.ascontiguousarray(scaled[y : y + height, x : x + width])
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = color
    x, y = (width - sw) // 2, (height - sh) // 2
    canvas[y : y + sh, x : x + sw] = scaled
    return canvas


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = width * height < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


# BT.601 limited range, as cameras, libyuv and OpenCV's I420 conversion use; the last column is the offset.
RGB_TO_YCBCR = np.array(
    [[0.2568, 0.5041, 0.0979, 16], [-0.1482, -0.2910, 0.4392, 128], [0.4392, -0.3678, -0.0714, 128]],
    np.float32,
)


def encode(rgb: np.ndarray, fmt: str) -> np.ndarray:
    """RGB (H, W, 3) -> the array pyvirtualcam expects for `fmt` (H and W even)."""
    rgb = np.ascontiguousarray(rgb)
    if fmt == "rgb":
        return rgb
    if fmt == "bgr":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt == "gray":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # J400 is full-range luma
    h, w = rgb.shape[:2]
    if fmt in ("i420", "nv12"):
        i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).ravel()
        if fmt == "i420":
            return i420
        luma, chroma = i420[: h * w], i420[h * w :].reshape(2, -1)
        return np.concatenate([luma, chroma.T.ravel()])  # NV12 interleaves U and V
    yuv = cv2.transform(rgb, RGB_TO_YCBCR)
    half = cv2.resize(yuv, (w // 2, h), interpolation=cv2.INTER_AREA)  # 4:2:2: horizontal pairs
    packed = np.empty((h, w // 2, 4), np.uint8)
    y0, y1, u, v = yuv[:, 0::2, 0], yuv[:, 1::2, 0], half[..., 1], half[..., 2]
    for i, plane in enumerate((y0, u, y1, v) if fmt == "yuyv" else (u, y0, v, y1)):
        packed[..., i] = plane
    return packed.ravel()


# --- errors ---------------------------------------------------------------------------------------


def explain(err: Exception, device: str | None, system: str | None = None) -> DeviceError:
    """Turn pyvirtualcam's (possibly multi-backend, multi-line) RuntimeError into a one-line fix."""
    system = system or platform.system()
    text = " ".join(str(err).split())
    where = device or "any /dev/video*"
    if system != "Linux":
        return DeviceError(
            f"no virtual camera: OBS Virtual Camera is not available ({OBS_FIX}; it is then found "
            f"automatically) [{text}]"
        )
    if "No v4l2 loopback device found" in text:
        return DeviceError(f"no virtual camera: v4l2loopback is not loaded (run: {MODPROBE})")
    if "does not exist" in text:
        return DeviceError(
            f"virtual camera device not found: {where} (load v4l2loopback with: {MODPROBE}; "
            "`streamer doctor` lists the devices)"
        )
    if "missing permissions" in text:
        return DeviceError(
            f"no permission to open {where} (run: sudo usermod -a -G video $USER, then log out and in)"
        )
    if "already in use" in text:
        return DeviceError(f"virtual camera {where} is already in use by streamer (choose another device)")
    if any(k in text for k in ("not a video output device", "not a V4L2 device", "could not be queried")):
        return DeviceError(
            f"not a virtual camera: {where} is not a v4l2loopback device (choose a loopback device; "
            "`streamer doctor` lists them)"
        )
    if "could not be configured" in text:
        return DeviceError(
            f"virtual camera {where} refused the size/format ({text}); close other programs writing to it "
            "or pick another device"
        )
    return DeviceError(f"virtual camera failed: {text} (run `streamer doctor`)")


def _open_camera(width: int, height: int, fps: float, params: VcamParams):
    import pyvirtualcam

    if params.backend is not None and params.backend not in pyvirtualcam.camera.BACKENDS:
        available = ", ".join(pyvirtualcam.camera.BACKENDS) or "none"
        raise DeviceError(
            f"vcam.backend: {params.backend!r} is not available on {platform.system()} "
            f"(available: {available}; leave it unset to pick automatically)"
        )
    fmt = getattr(pyvirtualcam.PixelFormat, params.fmt.upper())
    try:
        return pyvirtualcam.Camera(width, height, fps, fmt=fmt, device=params.device, backend=params.backend)
    except RuntimeError as err:
        raise explain(err, params.device) from err


# --- the sink -------------------------------------------------------------------------------------


@dataclasses.dataclass
class VcamStats:
    written: int = 0
    """Frames given to `write`."""
    sent: int = 0
    """Frames handed to the camera (repeats included)."""
    repeated: int = 0
    """Sends of a frame that was already sent (or of the placeholder before the first write)."""
    replaced: int = 0
    """Written frames overwritten by a newer one before they were sent."""
    late: int = 0
    """Camera ticks skipped because sending fell behind by more than one period."""
    errors: list[str] = dataclasses.field(default_factory=list)


class VcamSink:
    """Feeds a virtual camera at its fps from whatever frame was written last.

    With `every_frame=True` (file sources) `write` instead waits until the previous frame was sent,
    so a file plays at the camera's rate with nothing dropped.
    """

    realtime = True
    label = "the virtual camera"

    def __init__(
        self,
        params: VcamParams,
        *,
        every_frame: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ):
        """`clock` and `wait(seconds) -> stop requested` pace the sender thread (tests step them)."""
        if params.width is None or params.height is None or params.fps is None:
            raise ValueError("VcamSink needs width, height and fps; use open_vcam() to take the source's")
        self.params = params
        self.width, self.height, self.fps = params.width, params.height, float(params.fps)
        self.every_frame = every_frame
        self.stats = VcamStats()
        self._camera = _open_camera(self.width, self.height, self.fps, params)
        self.device = self._camera.device
        self.backend = self._camera.backend
        placeholder = np.empty((self.height, self.width, 3), np.uint8)
        placeholder[:] = params.flatten_color
        self._latest = encode(placeholder, params.fmt)
        self._fresh = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._clock, self._wait = clock, wait or self._stop.wait
        self._closed = False
        self._thread = threading.Thread(target=self._send_loop, name="vcam-sender", daemon=True)
        self._thread.start()
        log.info("virtual camera %s (%s): %dx%d at %g fps", self.device, self.backend, *self.size, self.fps)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def write(self, frame: Frame) -> None:
        if self._closed:
            raise RuntimeError("write() on a closed VcamSink")
        output = frame.output if frame.output is not None else frame.image
        array = output.numpy() if hasattr(output, "numpy") else np.asarray(output)
        if array.ndim == 2:
            array = array[..., None]
        color = self.params.flatten_color
        rgb = fit_to(to_rgb(array, color), self.width, self.height, self.params.fit, color)
        data = encode(rgb, self.params.fmt)
        with self._cond:
            if self.every_frame:
                self._cond.wait_for(lambda: not self._fresh or self._error is not None or self._stop.is_set())
            self._raise_if_failed()
            if self._fresh:
                self.stats.replaced += 1
            self._latest, self._fresh = data, True
            self.stats.written += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.every_frame:
            # Let the last file frame reach the camera before stopping. The sender takes it at its
            # next tick; the generous bound is for a machine so loaded that the tick comes late.
            with self._cond:
                self._cond.wait_for(
                    lambda: not self._fresh or self._error is not None, timeout=2 / self.fps + 10
                )
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join()
        self._camera.close()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise DeviceError(
                f"virtual camera {self.device} stopped: {self._error} (check that the device still exists)"
            )

    def _send_loop(self) -> None:
        period = 1.0 / self.fps
        deadline = self._clock()
        while True:
            delay = deadline - self._clock()
            if delay > 0 and self._wait(delay) or self._stop.is_set():
                return
            with self._cond:
                data, fresh = self._latest, self._fresh
                self._fresh = False
            try:
                self._camera.send(data)
            except Exception as err:  # a vanished device must surface in write(), not die silently
                with self._cond:
                    self._error = err
                    self.stats.errors.append(str(err))
                    self._cond.notify_all()
                return
            with self._cond:
                self.stats.sent += 1
                self.stats.repeated += not fresh
                self._cond.notify_all()
            deadline += period
            behind = self._clock() - deadline
            if behind > period:
                # After a stall, skip the missed ticks rather than sending a burst of repeats.
                missed = int(behind / period)
                self.stats.late += missed
                deadline += missed * period


def open_vcam(
    params: VcamParams,
    *,
    width: int | None,
    height: int | None,
    fps: float | None,
    every_frame: bool = False,
) -> VcamSink:
    """Open the virtual camera; size and fps not set in `params` come from the source (even-rounded)."""
    w = params.width or _even(width)
    h = params.height or _even(height)
    if not w or not h:
        raise ConfigError("vcam: the camera size is unknown (set vcam.width and vcam.height)")
    rate = params.fps or fps or 30.0
    rate = min(float(rate), 240.0)
    resolved = merge_params(params, "vcam", {"width": w, "height": h, "fps": rate})
    return VcamSink(resolved, every_frame=every_frame)


def _even(value: int | None) -> int | None:
    return None if not value else max(2, int(value) // 2 * 2)
