"""Temporal smoothing of the matte: steady where the picture is still, immediate where it moves.

A per-frame network flickers at edges (the boundary jitters by a pixel or two, faint blobs and
specks come and go) even when nothing in the picture changes. The smoother blends each new
matte into the previous result with a per-pixel weight:

* where the *image* is still, the weight comes from a time constant in seconds,
  `1 - exp(-dt / tau)`, so 15 fps and 60 fps converge alike over the same time span; with
  propagated mattes (a live job's network on keyframes) it spans a few keyframe intervals;
* where the image moves, the weight goes to 1 and the new matte is taken as is (no lag);
* a large matte change over a still image is treated as network noise, unless it persists
  (it then gets through within a few time constants);
* with propagated mattes, where the propagator says a keyframe corrected the carried matte (the
  picture moved since the keyframe before, and the two disagree), the correction is taken at once:
  only the network's noise is averaged over keyframes.

It resets (returns the new matte unchanged) on scene cuts (large global image change), on gaps
(dt above a limit, time going backwards) and on size or device changes. Everything runs on the
alpha's device; the motion map is computed at a reduced resolution, which both saves work and
ignores single-pixel sensor noise.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from streamer.config import Number, Params, Whole


class SmoothingParams(Params):
    enabled: bool = True
    strength: Number(0, 1) = 0.5
    """0 = off, 1 = strongest; scales the still-region time constant up to `max_time_constant`."""
    max_time_constant: Number(0, 10) = 0.3
    """Seconds: the time constant of still regions at strength 1."""
    keyframe_span: Number(0, 100) = 3.0
    """With propagated mattes (the network on keyframes, its results carried to every frame), the
    still-region time constant at strength 1 is at least this many keyframe intervals (0 = seconds
    only). A still region's matte then changes only when a keyframe arrives, so a time constant
    shorter than the interval averages nothing: each keyframe's noise would come through whole,
    only eased in over a few frames (BENCHMARKS.md, "Temporal smoothing")."""
    max_keyframe_time_constant: Number(0, 10) = 2.5
    """Seconds, at strength 1: the most `keyframe_span` raises the time constant to. A long one
    averages more of the network's noise; the keyframes that correct a matte carried over motion
    are taken at once anyway where the propagator marks them (`correction`). Without that, 0.9 s
    was the most that kept MAD better than no smoothing with keyframes 0.77 s apart
    (BENCHMARKS.md, "Temporal smoothing")."""
    motion_threshold: Number(0, 1) = 0.01
    """Mean grey-level change (0..1) below which a region counts as still (sensor noise)."""
    motion_range: Number(1e-6, 1) = 0.02
    """Grey-level change above the threshold over which the weight ramps to 1 (full follow)."""
    motion_scale: Whole(1, 16) = 2
    """The image difference is taken on a grid this many times coarser (averaging out sensor noise)."""
    motion_reach: Whole(0, 64) = 6
    """Pixels around a moving image region whose matte also follows (edges jitter and lag)."""
    scene_cut: Number(0, 1) = 0.2
    """Mean grey-level change of the whole frame that counts as a cut (reset)."""
    max_gap: Number(0, 3600) = 0.5
    """Seconds between frames (their presentation times) above which the history is dropped
    (reset). A camera gap, not a network one: with propagation every camera frame arrives with a
    matte, so keyframes a second apart do not reset it."""

    @property
    def time_constant(self) -> float:
        return self.strength * self.max_time_constant

    def still_time_constant(self, keyframe_interval: float | None = None) -> float:
        """Seconds: the time constant of still regions, given the interval between keyframes
        when mattes are propagated (None: every matte is a network's own)."""
        if keyframe_interval is None:
            return self.time_constant
        span = min(self.keyframe_span * keyframe_interval, self.max_keyframe_time_constant)
        return self.strength * max(self.max_time_constant, span)


def grey_cells(image: torch.Tensor, grid: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (ceil(H/grid), ceil(W/grid)) mean luma in [0, 1]."""
    # OpenCV converts and shrinks 8-bit frames several times faster than float torch on a CPU.
    return grey_cells_opencv(image, grid) if image.device.type == "cpu" else grey_cells_torch(image, grid)


def grey_cells_opencv(image: torch.Tensor, grid: int) -> torch.Tensor:
    grey = cv2.cvtColor(np.ascontiguousarray(image.numpy()), cv2.COLOR_RGB2GRAY).astype(np.float32)
    h, w = grey.shape
    small = cv2.resize(grey, (-(-w // grid), -(-h // grid)), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).div_(255.0)


def grey_cells_torch(image: torch.Tensor, grid: int) -> torch.Tensor:
    x = image.to(torch.float32).permute(2, 0, 1).unsqueeze(0)
    luma = (x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114) / 255.0
    return F.avg_pool2d(luma, grid, stride=grid, ceil_mode=True)[0, 0]


def follow_weight(grey_now: torch.Tensor, grey_before: torch.Tensor, params: SmoothingParams) -> torch.Tensor:
    """Per-cell weight in [0, 1] of the new matte from image motion (1 = take the new matte)."""
    diff = (grey_now - grey_before).abs()
    weight = ((diff - params.motion_threshold) / params.motion_range).clamp_(0.0, 1.0)
    # The matte of a moving edge changes next to where the image changed, not only on it.
    reach = -(-params.motion_reach // params.motion_scale)
    if not reach:
        return weight
    return grow_max_opencv(weight, reach) if weight.device.type == "cpu" else grow_max_torch(weight, reach)


def grow_max_opencv(weight: torch.Tensor, reach: int) -> torch.Tensor:
    """Square max filter of half-width `reach`; OpenCV's is several times faster than torch's
    pooling on a CPU, and exact (a maximum has no rounding)."""
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    return torch.from_numpy(cv2.dilate(np.ascontiguousarray(weight.numpy()), kernel))


def grow_max_torch(weight: torch.Tensor, reach: int) -> torch.Tensor:
    k = 2 * reach + 1  # two 1-D passes: much cheaper than one 2-D window
    weight = F.max_pool2d(weight[None, None], (1, k), stride=1, padding=(0, reach))
    return F.max_pool2d(weight, (k, 1), stride=1, padding=(reach, 0))[0, 0]


def still_weight(dt: float, params: SmoothingParams, keyframe_interval: float | None = None) -> float:
    """Weight of the new matte in still regions after `dt` seconds (exact for any frame rate)."""
    tau = params.still_time_constant(keyframe_interval)
    if tau <= 0.0:
        return 1.0
    return 1.0 - math.exp(-dt / tau)


def blend(
    previous: torch.Tensor,
    current: torch.Tensor,
    cell_weight: torch.Tensor,
    still: float,
    floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """previous + w * (current - previous), w = max(still, motion weight upsampled to full size,
    `floor`: a full-size per-pixel weight, or None)."""
    if current.device.type == "cpu":
        return blend_opencv(previous, current, cell_weight, still, floor)
    h, w = current.shape
    weight = F.interpolate(cell_weight[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    weight = weight.clamp_(min=still)
    if floor is not None:
        weight = torch.maximum(weight, floor)
    return previous + weight * (current - previous)


def blend_opencv(
    previous: torch.Tensor,
    current: torch.Tensor,
    cell_weight: torch.Tensor,
    still: float,
    floor: torch.Tensor | None = None,
) -> torch.Tensor:
    # The same sampling as the interpolate above (pixel centres); OpenCV's resize and in-place
    # numpy passes take 1.4 ms at 1280x720 where the torch ops take 2.2 ms.
    h, w = current.shape
    weight = cv2.resize(cell_weight.numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
    np.maximum(weight, still, out=weight)
    if floor is not None:
        np.maximum(weight, floor.numpy(), out=weight)
    before = previous.numpy()
    out = np.subtract(current.numpy(), before)
    out *= weight
    out += before
    return torch.from_numpy(out)


def is_scene_cut(grey_now: torch.Tensor, grey_before: torch.Tensor, params: SmoothingParams) -> bool:
    return float((grey_now - grey_before).abs().mean()) > params.scene_cut


class TemporalSmoother:
    """Stateful per stream: call once per frame in presentation order; `.params` may be replaced
    from another thread (each frame reads it once)."""

    def __init__(self, params: SmoothingParams | None = None, device: torch.device | str | None = None):
        self.params = params or SmoothingParams()
        self.device = torch.device(device) if device is not None else None
        self.resets = 0
        self.reset()

    def reset(self) -> None:
        self._alpha: torch.Tensor | None = None
        self._grey: torch.Tensor | None = None
        self._time: float | None = None
        self._grid: int | None = None

    def __call__(
        self,
        alpha: torch.Tensor,
        image: torch.Tensor,
        t: float,
        keyframe_interval: float | None = None,
        correction: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The smoothed matte of the frame at time `t`. `keyframe_interval`: seconds between the
        network's results when `alpha` is a propagated matte (None: it is a network's own).
        `correction`: where `alpha` takes a keyframe's correction, (H, W) in 0..1 on alpha's
        device (`Propagator.correction`): taken at once there, by that weight."""
        params = self.params
        if not params.enabled or params.strength <= 0.0:
            self.reset()
            return alpha
        image = image.to(alpha.device, non_blocking=True)
        grey = grey_cells(image, params.motion_scale)
        out = alpha
        if self._must_reset(alpha, grey, t, params):
            self.resets += 1
        else:
            weight = follow_weight(grey, self._grey, params)
            still = still_weight(t - self._time, params, keyframe_interval)
            out = blend(self._alpha, alpha.to(torch.float32), weight, still, correction)
        self._alpha, self._grey, self._time, self._grid = out, grey, t, params.motion_scale
        return out

    def _must_reset(self, alpha: torch.Tensor, grey: torch.Tensor, t: float, params: SmoothingParams) -> bool:
        prev = self._alpha
        if prev is None or self._grid != params.motion_scale:
            return True
        if prev.shape != alpha.shape or prev.device != alpha.device:
            return True
        dt = t - self._time
        if dt < 0.0 or dt > params.max_gap:
            return True
        return is_scene_cut(grey, self._grey, params)
