"""The compositor: (image, alpha, t) -> the output picture, on the inference device.

Everything stays on the compositor's device (the GPU when there is one); only the final uint8
picture is copied to the CPU. `.params` may be replaced between frames (live controls); the
background is reloaded only when its file changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamer.compose.background import ImageBackground, SolidBackground, VideoBackground
from streamer.compose.blur import blur_background
from streamer.compose.edges import shape_alpha
from streamer.compose.foreground import estimate_foreground
from streamer.compose.foreground_tiles import estimate_foreground_u8
from streamer.errors import ConfigError

MODES = ("matte", "rgba", "color", "image", "video", "blur")
CHANNELS = {"matte": 1, "rgba": 4}


@dataclass(frozen=True)
class CompositeParams:
    mode: str = "color"
    color: tuple[int, int, int] = (0, 255, 0)
    """Background colour of mode `color` (green screen by default)."""
    background: str | None = None
    """Image (mode `image`) or video (mode `video`) file."""
    blur_radius: int = 25
    """Pixels; strength of mode `blur`."""
    refine_foreground: bool = True
    """Estimate the subject's own colour in soft edges (no halo of the old background)."""
    threshold: float | None = None
    """Hard matte at this level (0..1); None keeps the soft matte."""
    gamma: float = 1.0
    """Above 1 tightens soft edges, below 1 widens them (ignored with a threshold)."""
    grow: int = 0
    """Pixels to dilate (> 0) or erode (< 0) the matte."""
    feather: int = 0
    """Pixels of edge softening."""
    mirror: bool = False
    """Flip horizontally (webcams are expected to behave like a mirror)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"composite.mode: {self.mode!r} is not one of {', '.join(MODES)}")
        color = tuple(self.color) if isinstance(self.color, (list, tuple)) else ()
        if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
            raise ConfigError(f"composite.color: {self.color!r} is not three integers 0..255 (e.g. 0,255,0)")
        object.__setattr__(self, "color", color)
        if self.mode in ("image", "video"):
            if not self.background:
                raise ConfigError(
                    f"composite.background: mode {self.mode!r} needs a file (pass --background PATH)"
                )
            if not Path(self.background).is_file():
                raise ConfigError(f"background not found: {self.background} (pass --background PATH)")
        _check("composite.blur_radius", self.blur_radius, 0, 500, integer=True)
        _check("composite.grow", self.grow, -100, 100, integer=True)
        _check("composite.feather", self.feather, 0, 100, integer=True)
        _check("composite.gamma", self.gamma, 0.05, 20.0)
        if self.threshold is not None:
            _check("composite.threshold", self.threshold, 0.0, 1.0)

    @property
    def channels(self) -> int:
        return CHANNELS.get(self.mode, 3)


def _check(name: str, value, lo: float, hi: float, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise ConfigError(f"{name}: {value!r} is not {what} in {lo:g}..{hi:g}")


def refine(image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Foreground colours float (H, W, 3) from uint8 image and float alpha.

    On the CPU: the tiled exact path with an 8-bit matte (as the official code reads it);
    elsewhere the dense torch path.
    """
    if image.device.type == "cpu":
        a8 = to_uint8(alpha).numpy()
        fg = estimate_foreground_u8(np.ascontiguousarray(image.numpy()), a8)
        return torch.from_numpy(fg).to(torch.float32).div_(255.0)
    return estimate_foreground(image.to(torch.float32) / 255.0, alpha)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)


class Compositor:
    def __init__(self, params: CompositeParams | None = None, device: torch.device | str = "cpu"):
        self.params = params or CompositeParams()
        self.device = torch.device(device)
        self._background = None
        self._background_key = None

    def background(self, h: int, w: int, t: float) -> torch.Tensor:
        p = self.params
        key = (p.mode, p.color if p.mode == "color" else p.background)
        if key != self._background_key:
            if hasattr(self._background, "close"):
                self._background.close()
            kinds = {
                "color": lambda: SolidBackground(p.color),
                "image": lambda: ImageBackground(p.background),
            }
            kinds["video"] = lambda: VideoBackground(p.background)
            self._background, self._background_key = kinds[p.mode](), key
        return self._background.frame(h, w, t, self.device)

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
        if p.mode == "matte":
            return to_uint8(alpha).unsqueeze(-1).cpu()
        frame = image.to(torch.float32) / 255.0
        fg = refine(image, alpha) if p.refine_foreground else frame
        if p.mode == "rgba":
            return torch.cat((to_uint8(fg), to_uint8(alpha).unsqueeze(-1)), dim=-1).cpu()
        back = blur_background(frame, alpha, p.blur_radius) if p.mode == "blur" else self.background(h, w, t)
        a = alpha.unsqueeze(-1)
        return to_uint8(fg * a + back * (1 - a)).cpu()
