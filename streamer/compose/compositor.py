"""The compositor: (image, alpha, t) -> the output picture, on the inference device.

Everything stays on the compositor's device (the GPU when there is one); only the final uint8
picture is copied to the CPU. `.params` may be replaced between frames (live controls) from
another thread: each frame reads it once and passes that snapshot down, so a change never lands
half-way through a frame. The background is reloaded only when its file changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from pydantic import model_validator

from streamer.compose.background import ImageBackground, SolidBackground, VideoBackground
from streamer.compose.blur import blur_background, blur_background_cpu
from streamer.compose.edges import shape_alpha
from streamer.compose.foreground import estimate_foreground
from streamer.compose.foreground_tiles import estimate_foreground_u8
from streamer.config import Colour, FieldProblem, Maybe, Number, Params, Whole, shorten
from streamer.errors import ConfigError, MediaError

MODES = ("matte", "rgba", "color", "image", "video", "blur")
CHANNELS = {"matte": 1, "rgba": 4}
BACKGROUNDS = {"color": SolidBackground, "image": ImageBackground, "video": VideoBackground}


class CompositeParams(Params):
    mode: Literal[MODES] = "color"
    color: Colour = (0, 255, 0)
    """Background colour of mode `color` (green screen by default)."""
    background: Maybe(str) = None
    """Image (mode `image`) or video (mode `video`) file."""
    blur_radius: Whole(0, 500) = 25
    """Pixels; strength of mode `blur`."""
    refine_foreground: bool = True
    """Estimate the subject's own colour in soft edges (no halo of the old background)."""
    threshold: Maybe(Number(0, 1)) = None
    """Hard matte at this level (0..1); None keeps the soft matte."""
    gamma: Number(0.05, 20) = 1.0
    """Above 1 tightens soft edges, below 1 widens them (ignored with a threshold)."""
    grow: Whole(-100, 100) = 0
    """Pixels to dilate (> 0) or erode (< 0) the matte."""
    feather: Whole(0, 100) = 0
    """Pixels of edge softening."""
    mirror: bool = False
    """Flip horizontally (webcams are expected to behave like a mirror)."""

    @model_validator(mode="after")
    def _background_for_mode(self) -> CompositeParams:
        if self.mode in ("image", "video"):
            if not self.background:
                raise FieldProblem("background", f"mode {self.mode!r} needs a file (pass --background PATH)")
            if not _is_file(self.background):
                raise FieldProblem(
                    "background",
                    f"not found: {shorten(self.background, quote=False)} (pass --background PATH)",
                )
        return self

    @property
    def channels(self) -> int:
        return CHANNELS.get(self.mode, 3)


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # a name the OS refuses (too long, a NUL byte) is no file
        return False


def check_background(p: CompositeParams, current: CompositeParams | None = None) -> None:
    """Reads `p`'s background file once unless `current` already shows it, so that a live change
    to a file that cannot be read is refused (ConfigError, nothing changed) instead of ending the
    stream at its next frame. The frame path loads it again: it may be a video in use elsewhere."""
    if p.mode not in ("image", "video"):
        return
    if current is not None and (current.mode, current.background) == (p.mode, p.background):
        return
    try:
        background = BACKGROUNDS[p.mode](p.background)
    except MediaError as err:
        raise ConfigError(f"composite.background: {err}") from None
    if hasattr(background, "close"):
        background.close()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)


def blend_u8(fg: np.ndarray, back: np.ndarray, a8: np.ndarray) -> np.ndarray:
    """fg * a + back * (1 - a) on 8-bit pictures (H, W, 3) and matte (H, W), each product
    rounded: within one level of the float blend of the same matte (all 2^24 cases checked),
    exactly `fg` where the matte is 255 and `back` where it is 0, in half the time of OpenCV's
    float-weighted `blendLinear`."""
    a3 = cv2.cvtColor(a8, cv2.COLOR_GRAY2RGB)
    out = cv2.multiply(fg, a3, scale=1 / 255)
    cv2.bitwise_not(a3, dst=a3)  # in place: fewer frame-sized allocations
    cv2.multiply(back, a3, dst=a3, scale=1 / 255)
    return cv2.add(out, a3, dst=out)


class Compositor:
    opencv_on_cpu = True
    """Use the 8-bit OpenCV path on the CPU (the torch path is for GPUs; tests compare the two)."""

    def __init__(self, params: CompositeParams | None = None, device: torch.device | str = "cpu"):
        self.params = params or CompositeParams()
        self.device = torch.device(device)
        self._background = None
        self._background_key = None
        self._back_u8: tuple = (None, None)

    def background(self, h: int, w: int, t: float, p: CompositeParams | None = None) -> torch.Tensor:
        p = p or self.params
        self.open_background(p)
        return self._background.frame(h, w, t, self.device)

    def open_background(self, p: CompositeParams | None = None) -> None:
        """Loads `p`'s background picture or video unless it is the one loaded. Called before a job's
        network loads, so a file that cannot be read is reported at once, not after minutes."""
        p = p or self.params
        if p.mode not in BACKGROUNDS:
            return
        key = (p.mode, p.color if p.mode == "color" else p.background)
        if key != self._background_key:
            if hasattr(self._background, "close"):
                self._background.close()
            self._background = BACKGROUNDS[p.mode](p.color if p.mode == "color" else p.background)
            self._background_key = key

    def __call__(self, image: torch.Tensor, alpha: torch.Tensor, t: float) -> torch.Tensor:
        """image uint8 (H, W, 3), alpha float (H, W) -> uint8 (H, W, C) on the CPU."""
        p = self.params
        image = image.to(self.device, non_blocking=True)
        alpha = alpha.to(self.device, torch.float32, non_blocking=True)
        h, w = image.shape[:2]
        if alpha.shape != (h, w):
            alpha = torch.nn.functional.interpolate(alpha[None, None], size=(h, w), mode="bilinear")[0, 0]
        if p.mirror:
            image, alpha = image.flip(1), alpha.flip(1)
        alpha = shape_alpha(alpha.clamp(0, 1), p.threshold, p.gamma, p.grow, p.feather)
        if self.device.type == "cpu" and self.opencv_on_cpu:
            return self._compose_cpu(image, alpha, t, p)
        if p.mode == "matte":
            return to_uint8(alpha).unsqueeze(-1).cpu()
        frame = image.to(torch.float32) / 255.0
        fg = estimate_foreground(frame, alpha) if p.refine_foreground else frame
        if p.mode == "rgba":
            return torch.cat((to_uint8(fg), to_uint8(alpha).unsqueeze(-1)), dim=-1).cpu()
        a = alpha.unsqueeze(-1)
        return to_uint8(fg * a + self._back(frame, alpha, t, p) * (1 - a)).cpu()

    def _back(self, frame: torch.Tensor, alpha: torch.Tensor, t: float, p: CompositeParams) -> torch.Tensor:
        if p.mode == "blur":
            return blur_background(frame, alpha, p.blur_radius)
        return self.background(*alpha.shape, t, p)

    def _compose_cpu(
        self, image: torch.Tensor, alpha: torch.Tensor, t: float, p: CompositeParams
    ) -> torch.Tensor:
        """The same picture with OpenCV on 8-bit data: float blending of whole frames is slow here."""
        # OpenCV makes the 8-bit matte ~20x faster than torch's float ops here.
        a8 = cv2.convertScaleAbs(np.ascontiguousarray(alpha.numpy()), alpha=255.0)
        if p.mode == "matte":
            return torch.from_numpy(a8[..., None])
        pixels = np.ascontiguousarray(image.numpy())
        fg = estimate_foreground_u8(pixels, a8) if p.refine_foreground else pixels
        if p.mode == "rgba":
            return torch.from_numpy(np.concatenate((fg, a8[..., None]), axis=-1))
        if p.mode == "blur":
            back = blur_background_cpu(pixels, a8, p.blur_radius)
        else:
            still = self.background(*a8.shape, t, p)
            if self._back_u8[0] is not still:  # a still background is converted once
                self._back_u8 = (still, np.ascontiguousarray(to_uint8(still).numpy()))
            back = self._back_u8[1]
        return torch.from_numpy(blend_u8(fg, back, a8))
