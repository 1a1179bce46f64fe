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


def blur_background_cpu(image: np.ndarray, alpha: np.ndarray, radius: int) -> np.ndarray:
    """The same with OpenCV: image uint8 (H, W, 3), alpha float32 (H, W) -> uint8 (H, W, 3)."""
    if radius <= 0:
        return image
    h, w = alpha.shape
    weight = 1 - alpha
    stacked = np.concatenate((image * (weight * np.float32(1 / 255))[..., None], weight[..., None]), axis=-1)
    scale = working_scale(radius, h, w)
    small = cv2.resize(stacked, (-(-w // scale), -(-h // scale)), interpolation=cv2.INTER_AREA)
    k = 2 * max(1, round(radius / scale)) + 1
    for _ in range(PASSES):
        small = cv2.blur(small, (k, k), borderType=cv2.BORDER_REFLECT_101)
    total = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    back = total[..., :3] / np.maximum(total[..., 3:4], 1e-3)
    back = np.where(total[..., 3:4] > 1e-3, back * 255 + 0.5, image)
    return np.clip(back, 0, 255).astype(np.uint8)
