"""Modulated deformable convolution (DCNv2) as one bilinear gather plus one ordinary convolution.

torchvision's CPU `deform_conv2d` builds its columns in scalar code and multiplies them with a
BLAS call that is slow on some CPUs (MKL's fp32 GEMM on AMD); it has no bfloat16 kernel either.
Here each output pixel's k*k bilinear samples (times the modulation) are gathered by
`F.embedding_bag` (a weighted sum of the 4 neighbours, one fused kernel over channels-last rows)
into an image of size (ho*kh, wo*kw) whose (kh, kw) blocks hold the taps of one output pixel, and
a plain conv2d with kernel = stride = (kh, kw) contracts them with the layer's own weight through
oneDNN. Sample positions are computed in float32 (float64 for float64 inputs), so the result
matches torchvision within float rounding (tests/test_deform.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def deform_conv2d_gather(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, padding: int
) -> torch.Tensor:
    """Same result as `torchvision.ops.deform_conv2d(x, offset, weight, padding=padding, mask=mask)`.

    Stride 1, dilation 1, one offset group and one weight group, which is what BiRefNet uses.
    x (B, C, H, W); offset (B, 2*kh*kw, Ho, Wo) as (dy, dx) per tap; mask (B, kh*kw, Ho, Wo).
    """
    b, c, h, w = x.shape
    cout, cin, kh, kw = weight.shape
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    if cin != c or offset.shape != (b, 2 * kh * kw, ho, wo) or mask.shape != (b, kh * kw, ho, wo):
        raise ValueError(
            f"deform_conv2d_gather: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"offset {tuple(offset.shape)}, mask {tuple(mask.shape)} do not fit stride 1, padding {padding}"
        )
    exact = torch.float64 if x.dtype == torch.float64 else torch.float32
    dev = x.device
    # Rows are ordered (n, oy, i, ox, j): the gathered rows then form the channels-last image
    # (B, C, ho*kh, wo*kw) that the strided convolution below reads.
    off = offset.to(exact).view(b, kh, kw, 2, ho, wo).permute(0, 4, 1, 5, 2, 3)  # b, ho, kh, wo, kw, 2
    mod = mask.to(exact).view(b, kh, kw, ho, wo).permute(0, 3, 1, 4, 2)  # b, ho, kh, wo, kw
    base_y = (torch.arange(ho, device=dev, dtype=exact) - padding)[:, None] + torch.arange(kh, device=dev)
    base_x = (torch.arange(wo, device=dev, dtype=exact) - padding)[:, None] + torch.arange(kw, device=dev)
    # Clamping to one pixel beyond the zero border keeps every index finite and changes no value:
    # a point at or past -1 or H reads only zeros, as in torchvision.
    py = (off[..., 0] + base_y[:, :, None, None]).clamp_(-2, h + 1)
    px = (off[..., 1] + base_x).clamp_(-2, w + 1)
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    hy, hx = 1 - ly, 1 - lx
    weights = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], dim=-1).mul_(mod[..., None])
    # Indices into x padded by one zero pixel on every side, all images stacked.
    # A neighbour outside the image is clamped onto the zero border, so it adds nothing.
    wp = w + 2
    y0, x0 = y0.long(), x0.long()
    ya, yb = (y0 + 1).clamp_(0, h + 1), (y0 + 2).clamp_(0, h + 1)
    xa, xb = (x0 + 1).clamp_(0, w + 1), (x0 + 2).clamp_(0, w + 1)
    image = (torch.arange(b, device=dev) * ((h + 2) * wp)).view(b, 1, 1, 1, 1)
    ra, rb = ya * wp + image, yb * wp + image
    index = torch.stack([ra + xa, ra + xb, rb + xa, rb + xb], dim=-1)
    rows = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).reshape(b * (h + 2) * wp, c)
    cols = F.embedding_bag(
        index.view(-1, 4), rows, per_sample_weights=weights.view(-1, 4).to(x.dtype), mode="sum"
    )
    taps = cols.view(b, ho * kh, wo * kw, c).permute(0, 3, 1, 2)
    return F.conv2d(taps, weight, stride=(kh, kw)).contiguous()
