"""Foreground colour estimation by blur-fusion (the `refine_foreground` of BiRefNet, spec §9).

Without it, a composite keeps a halo of the old background in soft edges (hair): the observed
colour there is a mix a*F + (1-a)*B, and F must be estimated. Two passes of

    F_hat = box(F*a) / (box(a) + 1e-5),  B_hat = box(B*(1-a)) / (1 - box(a) + 1e-5)
    F'    = clip(F_hat + a * (I - a*F_hat - (1-a)*B_hat), 0, 1)

with box windows of 90 then 6 pixels (F = B = I in the first pass; the second starts from the
first's F' and B_hat). Box windows and borders are those of the official CPU code (cv2.blur).

`estimate_foreground` runs on any torch device (the GPU path); on the CPU `estimate_foreground_cpu`
does the same maths with OpenCV's box filters on a packed channel layout, which is far faster there.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from streamer.compose.boxfilter import box_mean

EPS = 1e-5
RADII = (90, 6)


def fusion_step(image, alpha, fg_alpha_mean, bg_mean, alpha_mean):
    """One blur-fusion update from the box means of F*a, B*(1-a) and a: returns (F', B_hat).

    Works on numpy arrays and torch tensors alike.
    """
    f_hat = fg_alpha_mean / (alpha_mean + EPS)
    b_hat = bg_mean / ((1 - alpha_mean) + EPS)
    # In place where possible: these run on whole frames and memory traffic is the cost.
    out = image - alpha * f_hat
    out -= (1 - alpha) * b_hat
    out *= alpha
    out += f_hat
    return out.clip(0, 1), b_hat


def estimate_foreground(
    image: torch.Tensor, alpha: torch.Tensor, radii: tuple[int, ...] = RADII
) -> torch.Tensor:
    """image float (H, W, 3) in [0, 1], alpha float (H, W) -> foreground float (H, W, 3)."""
    a = alpha.to(image.dtype).unsqueeze(-1)
    fg = bg = image
    for k in radii:
        # One box pass over the 7 stacked channels [F*a, B*(1-a), a].
        means = box_mean(torch.cat((fg * a, bg * (1 - a), a), dim=-1), k, dims=(0, 1))
        fg, bg = fusion_step(image, a, means[..., 0:3], means[..., 3:6], means[..., 6:7])
    return fg


def _blur(x: np.ndarray, k: int) -> np.ndarray:
    return cv2.blur(x, (k, k), borderType=cv2.BORDER_REFLECT_101)


def estimate_foreground_cpu(
    image: np.ndarray, alpha: np.ndarray, radii: tuple[int, ...] = RADII
) -> np.ndarray:
    """image float32 (H, W, 3) in [0, 1], alpha float32 (H, W) -> foreground float32 (H, W, 3).

    The dense path (for mattes that are soft almost everywhere): the official maths with fewer
    temporaries.
    """
    a = alpha[..., None]
    rest = 1 - a
    fg = bg = image
    for k in radii:
        mean_a = _blur(alpha, k)[..., None]
        fg, bg = fusion_step(image, a, _blur(fg * a, k), _blur(bg * rest, k), mean_a)
    return fg
