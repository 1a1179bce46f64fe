"""Box (mean) filters made of cumulative sums: O(1) per pixel whatever the radius.

The window and border match OpenCV's `cv2.blur` (the reference implementation of blur-fusion
foreground estimation): a window of k pixels covers offsets -k//2 .. k - k//2 - 1, and pixels
outside the image are mirrored without repeating the edge (BORDER_REFLECT_101).
"""

from __future__ import annotations

import torch


def reflect101_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source index of each padded position (mirrors repeatedly, so any pad works on tiny images)."""
    idx = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def box_sum_1d(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Sum over a window of k along `dim`, with cv2's anchor and reflect-101 border."""
    n = x.shape[dim]
    before = k // 2
    padded = x.index_select(dim, reflect101_index(n, before, k - 1 - before, x.device))
    csum = padded.cumsum(dim)
    upper = csum.narrow(dim, k - 1, n)
    lower = csum.narrow(dim, 0, n - 1)
    out = upper.clone()
    out.narrow(dim, 1, n - 1).sub_(lower)
    return out


def box_mean(
    x: torch.Tensor, k: int, dims: tuple[int, int] = (-2, -1), accumulate: torch.dtype = torch.float64
) -> torch.Tensor:
    """Mean over k x k windows of the two dimensions `dims` of x (rows, columns).

    Sums are accumulated in `accumulate` (float64 by default): a 1080p row sum in float32 would
    lose the last bits that divisions by small alpha means later amplify.
    """
    if k <= 1:
        return x
    acc = x.to(accumulate)
    acc = box_sum_1d(box_sum_1d(acc, k, dims[1]), k, dims[0])
    return acc.div_(k * k).to(x.dtype)
