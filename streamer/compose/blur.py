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
    return max(1, min(radius // DETAIL, h // 8, w // 8))


def blur_background(image: torch.Tensor, alpha: torch.Tensor, radius: int) -> torch.Tensor:
    """image float (H, W, 3), alpha float (H, W) -> blurred background float (H, W, 3)."""
    if radius <= 0:
        return image
    h, w = alpha.shape
    weight = (1 - alpha).unsqueeze(0)
    stacked = torch.cat((image.permute(2, 0, 1) * weight, weight), dim=0)[None]
    scale = working_scale(radius, h, w)
    if scale > 1:
        stacked = F.avg_pool2d(stacked, scale, ceil_mode=True)
    k = 2 * max(1, round(radius / scale)) + 1
    for _ in range(PASSES):
        stacked = box_mean(stacked, k, accumulate=torch.float32)
    if scale > 1:
        stacked = F.interpolate(stacked, size=(h, w), mode="bilinear", align_corners=False)
    stacked = stacked[0].permute(1, 2, 0)
    # Where a whole window is subject there is no background to borrow: keep the frame.
    total = stacked[..., 3:4]
    return torch.where(total > 1e-3, stacked[..., :3] / total.clamp(min=1e-3), image)


def blur_background_cpu(image: np.ndarray, a8: np.ndarray, radius: int) -> np.ndarray:
    """The same with OpenCV on 8-bit data: image uint8 (H, W, 3), a8 uint8 (H, W) -> uint8 (H, W, 3).

    Only the premultiplied frame is made at full size; blurring, normalising and the fallback
    happen on the coarse grid, and the result is scaled up as 8 bits.
    """
    if radius <= 0:
        return image
    h, w = a8.shape
    weight = 255 - a8
    premultiplied = cv2.multiply(image, cv2.merge((weight, weight, weight)), scale=1 / 255)
    scale = working_scale(radius, h, w)
    size = (-(-w // scale), -(-h // scale))
    stacked = np.dstack([cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (premultiplied, weight)])
    stacked = stacked.astype(np.float32)
    k = 2 * max(1, round(radius / scale)) + 1
    for _ in range(PASSES):
        stacked = cv2.blur(stacked, (k, k), borderType=cv2.BORDER_REFLECT_101)
    total = stacked[..., 3:4] * np.float32(1 / 255)
    fallback = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small = np.where(total > 1e-3, stacked[..., :3] / np.maximum(total, 1e-3) + 0.5, fallback)
    small = np.clip(small, 0, 255).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) if scale > 1 else small
