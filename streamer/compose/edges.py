"""Edge controls on the matte: threshold or gamma, grow/shrink, feather. All (H, W) float in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamer.compose.boxfilter import box_mean


def threshold(alpha: torch.Tensor, level: float) -> torch.Tensor:
    """Hard matte: 1 where alpha >= level (for looks that want no soft edges)."""
    return (alpha >= level).to(alpha.dtype)


def gamma(alpha: torch.Tensor, g: float) -> torch.Tensor:
    """g > 1 pulls soft edges in (tighter), g < 1 pushes them out."""
    return alpha if g == 1.0 else alpha.clamp(0, 1).pow(g)


def grow(alpha: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate (pixels > 0) or erode (pixels < 0) with a square window of 2|pixels|+1."""
    if pixels == 0:
        return alpha
    r = abs(pixels)
    x = alpha[None, None] if pixels > 0 else -alpha[None, None]
    x = F.max_pool2d(x, 2 * r + 1, stride=1, padding=r)[0, 0]
    return x if pixels > 0 else -x


def feather(alpha: torch.Tensor, pixels: int) -> torch.Tensor:
    """Soften the edge over about `pixels`: two box passes (close to a Gaussian, no ringing)."""
    if pixels <= 0:
        return alpha
    k = pixels + 1 - pixels % 2  # odd windows keep the edge where it was
    return box_mean(box_mean(alpha, k, accumulate=torch.float32), k, accumulate=torch.float32)


def shape_alpha(
    alpha: torch.Tensor, level: float | None = None, g: float = 1.0, pixels: int = 0, soft: int = 0
) -> torch.Tensor:
    """threshold (if set) or gamma, then grow/shrink, then feather."""
    alpha = threshold(alpha, level) if level is not None else gamma(alpha, g)
    return feather(grow(alpha, pixels), soft)
