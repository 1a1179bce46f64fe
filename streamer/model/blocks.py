"""Convolutional blocks of BiRefNet's squeeze module and decoder (spec.md section 4).

Attribute names and creation order follow the official state_dict so weights load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from streamer.model.deform import deform_conv2d_gather

# Every resize inside the network is bilinear with align_corners=True (spec.md notation).


def interp(x: torch.Tensor, size) -> torch.Tensor:
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x  # align_corners=True at the same size samples the pixels themselves
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _deform_dtype(x: torch.Tensor) -> torch.dtype:
    # Half precision runs the deformable sampling in float32, as torchvision's own autocast rule
    # does: its kernels lack bfloat16, and offsets of a few pixels lose precision in float16.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


GATHER_ON_CPU = True
"""Run deformable convolutions on the CPU as gather + convolution (`deform.py`) where that is faster.
Only benchmarks turn it off, to time torchvision's operator in the same process."""

GATHER_MIN_SAMPLES = 256
"""Below this many bilinear samples (Ho * Wo * k * k) torchvision's operator is kept: measured on
the model's shapes by scripts/bench_torch_cpu.py (BENCHMARKS.md, "Torch CPU path")."""


def use_gather(x: torch.Tensor, offset: torch.Tensor) -> bool:
    """The gathered form on the CPU for maps large enough to repay its setup (in bfloat16 it also
    saves torchvision's float32 round trip); torchvision's operator on other devices."""
    if not GATHER_ON_CPU or x.device.type != "cpu":
        return False
    return offset.shape[1] // 2 * offset.shape[2] * offset.shape[3] >= GATHER_MIN_SAMPLES


class DeformableConv2d(nn.Module):
    """Modulated deformable convolution (DCNv2): offsets and a 0..2 modulation predicted from x."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int):
        super().__init__()
        self.padding = padding
        self.offset_conv = nn.Conv2d(cin, 2 * kernel * kernel, kernel, padding=padding)
        self.modulator_conv = nn.Conv2d(cin, kernel * kernel, kernel, padding=padding)
        # Only the weight is used: the official layer passes bias=None to deform_conv2d.
        self.regular_conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)
        mask = 2.0 * torch.sigmoid(self.modulator_conv(x))
        if use_gather(x, offset):
            return deform_conv2d_gather(x, offset, self.regular_conv.weight, mask, self.padding)
        dtype = _deform_dtype(x)
        y = deform_conv2d(
            x.to(dtype),
            offset.to(dtype),
            self.regular_conv.weight.to(dtype),
            padding=self.padding,
            mask=mask.to(dtype),
        )
        return y.to(x.dtype)


class DeformBranch(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, padding: int):
        super().__init__()
        self.atrous_conv = DeformableConv2d(cin, cout, kernel, padding)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.atrous_conv(x)))


class ASPPDeformable(nn.Module):
    def __init__(self, cin: int, cout: int, width: int = 256, kernels=(1, 3, 7)):
        super().__init__()
        self.aspp1 = DeformBranch(cin, width, 1, 0)
        self.aspp_deforms = nn.ModuleList(DeformBranch(cin, width, k, k // 2) for k in kernels)
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.conv1 = nn.Conv2d(width * (2 + len(kernels)), cout, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.aspp1(x), *(branch(x) for branch in self.aspp_deforms)]
        pooled = self.global_avg_pool(x)
        branches.append(pooled.expand(-1, -1, *branches[0].shape[-2:]))
        return self.dropout(F.relu(self.bn1(self.conv1(torch.cat(branches, dim=1)))))


class BasicDecBlk(nn.Module):
    def __init__(self, cin: int, cout: int, inter: int = 64):
        super().__init__()
        self.conv_in = nn.Conv2d(cin, inter, 3, padding=1)
        self.dec_att = ASPPDeformable(inter, inter)
        self.conv_out = nn.Conv2d(inter, cout, 3, padding=1)
        self.bn_in = nn.BatchNorm2d(inter)
        self.bn_out = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_in(self.conv_in(x)))
        return self.bn_out(self.conv_out(self.dec_att(x)))


class SimpleConvs(nn.Module):
    def __init__(self, cin: int, cout: int, inter: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, inter, 3, padding=1)
        self.conv_out = nn.Conv2d(inter, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))


class BasicLatBlk(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
