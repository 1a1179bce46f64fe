"""Background blur that does not smear the subject into the background.

A plain blur of the frame spreads the person's colours into a halo around them. Blurring the
background only, normalised by how much background each window holds,

    blur(I * (1 - a)) / blur(1 - a),

fills the subject's area from the surrounding background instead.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from streamer.compose.boxfilter import box_mean

PASSES = 3  # three box passes approximate a Gaussian
DETAIL = 6  # a blur of radius r keeps no detail finer than about r/6 pixels: work that coarse


def working_scale(radius: int, h: int, w: int) -> int:
    """The coarse grid's step: about radius / DETAIL, rounded down to a power of two because
    OpenCV shrinks by halves several times faster than by any other factor."""
    scale = max(1, min(radius // DETAIL, h // 8, w // 8))
    return 1 << (scale.bit_length() - 1)


def blur_background(image: torch.Tensor, alpha: torch.Tensor, radius: int) -> torch.Tensor:
    """image float (H, W, 3), alpha float (H, W) -> blurred background float (H, W, 3).

    The frame and the matte are shrunk first and the background weighted on the coarse grid: a
    blur of this radius keeps no detail finer than the grid anyway."""
    if radius <= 0:
        return image
    h, w = alpha.shape
    stacked = torch.cat((image.permute(2, 0, 1), (1 - alpha)[None]), dim=0)[None]
    scale = working_scale(radius, h, w)
    if scale > 1:
        stacked = F.avg_pool2d(stacked, scale, ceil_mode=True)
    small = stacked[:, :3]
    stacked = torch.cat((small * stacked[:, 3:], stacked[:, 3:]), dim=1)
    k = 2 * max(1, round(radius / scale)) + 1
    for _ in range(PASSES):
        stacked = box_mean(stacked, k, accumulate=torch.float32)
    # Where a whole window is subject there is no background to borrow: keep the (coarse) frame.
    total = stacked[:, 3:]
    stacked = torch.where(total > 1e-3, stacked[:, :3] / total.clamp(min=1e-3), small)
    if scale > 1:
        stacked = F.interpolate(stacked, size=(h, w), mode="bilinear", align_corners=False)
    return stacked[0].permute(1, 2, 0)


def shrink_by_halves(image: np.ndarray, scale: int) -> np.ndarray:
    """Box average over `scale` x `scale` cells (a power of two), to ceil(size / scale)."""
    while scale > 1:
        h, w = image.shape[:2]
        image = cv2.resize(image, (-(-w // 2), -(-h // 2)), interpolation=cv2.INTER_AREA)
        scale //= 2
    return image


def blur_background_cpu(image: np.ndarray, a8: np.ndarray, radius: int) -> np.ndarray:
    """The same with OpenCV on 8-bit data: image uint8 (H, W, 3), a8 uint8 (H, W) -> uint8 (H, W, 3).

    Only the frame and the matte are read at full size (one shrink each); weighting, blurring,
    normalising and the fallback happen on the coarse grid, and the result is scaled up as 8 bits.
    """
    if radius <= 0:
        return image
    h, w = a8.shape
    scale = working_scale(radius, h, w)
    small = shrink_by_halves(image, scale)
    weight = cv2.bitwise_not(shrink_by_halves(a8, scale)).astype(np.float32)
    weight *= np.float32(1 / 255)
    colour = small.astype(np.float32)
    colour *= weight[..., None]
    k = 2 * max(1, round(radius / scale)) + 1
    for _ in range(PASSES):
        colour = cv2.blur(colour, (k, k), borderType=cv2.BORDER_REFLECT_101)
        weight = cv2.blur(weight, (k, k), borderType=cv2.BORDER_REFLECT_101)
    subject = weight <= 1e-3
    colour /= np.maximum(weight, 1e-3)[..., None]
    out = cv2.convertScaleAbs(colour)  # rounds and saturates to 8 bits
    out[subject] = small[subject]
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR) if scale > 1 else out
