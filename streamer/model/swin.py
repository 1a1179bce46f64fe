"""Swin Transformer v1 backbone with the parameter names of BiRefNet's `bb` (spec.md section 7).

Tokens travel as (B, H, W, D) maps so that windowing is a view/permute, never a python loop.
Two deviations from timm/torchvision Swin are deliberate, because the BiRefNet weights were
trained with them: the shift is applied even when the padded map is a single window, and the
zero tokens added by window padding are not masked out of attention.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    window: int

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2 bias table for every pair of tokens of a window."""
    rows = torch.arange(window).repeat_interleave(window)
    cols = torch.arange(window).repeat(window)
    d_row = rows[:, None] - rows[None, :] + (window - 1)
    d_col = cols[:, None] - cols[None, :] + (window - 1)
    return (d_row * (2 * window - 1) + d_col).to(torch.int64)


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, Hp, Wp, D) -> (B, nW, w*w, D), windows and their tokens both row-major."""
    b, hp, wp, d = x.shape
    x = x.view(b, hp // window, window, wp // window, window, d)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, d)


def from_windows(x: torch.Tensor, window: int, hp: int, wp: int) -> torch.Tensor:
    """Inverse of `to_windows`."""
    b, d = x.shape[0], x.shape[-1]
    x = x.view(b, hp // window, wp // window, window, window, d)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, d)


def make_shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device, dtype: torch.dtype):
    """Additive (nW, 1, N, N) mask that keeps tokens from attending across the seams of the roll."""

    def bands(n: int) -> torch.Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window).long() + (idx >= n - shift).long()

    labels = 3 * bands(hp)[:, None] + bands(wp)[None, :]
    labels = to_windows(labels[None, :, :, None], window)[0, :, :, 0]  # (nW, N)
    different = labels[:, :, None] != labels[:, None, :]
    mask = torch.zeros(different.shape, device=device, dtype=dtype)
    return mask.masked_fill_(different, float("-inf"))[:, None]


# Cached per padded map size: the mask depends on no parameter, and every shifted block of a stage
# (and every frame of a video) reuses it. The per-block relative-position bias is added at call
# time instead of being cached with it: the combined (nW, heads, N, N) tensors of all blocks would
# cost over a gigabyte for Swin-L at 1024x1024.
_cached_shift_mask = functools.lru_cache(maxsize=32)(make_shift_mask)


def shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device, dtype: torch.dtype):
    # Under torch.compile the mask is traced into the graph (a constant) instead of looked up.
    build = make_shift_mask if torch.compiler.is_compiling() else _cached_shift_mask
    return build(hp, wp, window, shift, device, dtype)


ONEDNN_CPU_LINEAR = True
"""Run the backbone's float32 linear layers on the CPU as oneDNN 1x1 convolutions over channels-last
tokens instead of torch's GEMM (MKL), whose float32 kernels are slow on some CPUs (this project's
AMD EPYC: 1.11-1.36x on the whole network, BENCHMARKS.md "Torch CPU path"). Same result within float
rounding; bfloat16 already goes through oneDNN."""


def linear(layer: nn.Linear, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    b = layer.bias if bias else None
    if not (ONEDNN_CPU_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32):
        return F.linear(x, layer.weight, b)
    d = x.shape[-1]
    tokens = x.reshape(1, -1, 1, d).permute(0, 3, 1, 2)  # (1, D, tokens, 1) in channels-last memory
    y = F.conv2d(tokens, layer.weight[:, :, None, None], b)
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], -1)


FUSED_CPU_ATTENTION = True
"""Hand SDPA 4-D q/k/v on the CPU, which its fused kernel takes (5-D ones fall back to its math
path). Only benchmarks turn it off, to time the 5-D call in the same process."""


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads = heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def bias(self) -> torch.Tensor:
        n = self.window * self.window
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return table.view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, nW, N, D) windows; mask: additive (nW, 1, N, N) or None."""
        return linear(self.proj, self.attend(linear(self.qkv, x), mask))

    def padded_qkv(self, x: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        """q, k, v of the (B, H, W, D) map `x` zero-padded to (hp, wp), as (B, hp, wp, 3D).

        A padded token is an exact zero, so its q, k and v are the layer's bias: projecting only
        the map's own tokens and padding with the bias gives the same tensor for fewer tokens
        (a 16x16 map pads to 21x21 with window 7, an 8x8 one to 14x14: 1.7x and 3x the work)."""
        _, h, w, _ = x.shape
        qkv = F.pad(linear(self.qkv, x, bias=False), (0, 0, 0, wp - w, 0, hp - h))
        return qkv + self.qkv.bias.to(qkv.dtype)

    def attend(self, qkv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """qkv: (B, nW, N, 3D) windows -> attention's (B, nW, N, D), before the output projection."""
        b, nw, n, d = qkv.shape
        d //= 3
        heads = self.heads
        qkv = qkv.view(b, nw, n, 3, heads, d // heads).permute(3, 0, 1, 4, 2, 5)
        attn_mask = self.bias().to(qkv.dtype)  # (heads, N, N)
        if mask is not None:
            attn_mask = attn_mask + mask  # (nW, heads, N, N)
        if FUSED_CPU_ATTENTION and qkv.device.type == "cpu":
            # Without a shift mask windows fold into the batch; with one, into the heads, so that
            # the per-window mask broadcasts over the batch instead of being copied per image.
            rows = (b * nw, heads) if mask is None else (b, nw * heads)
            q, k, v = qkv.reshape(3, *rows, n, d // heads).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.reshape(1, -1, n, n))
            out = out.view(b, nw, heads, n, d // heads)
        else:
            # Other devices keep the 5-D call until a GPU measures the 4-D one.
            q, k, v = qkv.unbind(0)  # each (B, nW, heads, N, hd)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return out.transpose(2, 3).reshape(b, nw, n, d)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.fc2, self.act(linear(self.fc1, x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, D)."""
        _, h, w, _ = x.shape
        win, s = self.window, self.shift
        hp, wp = h + (-h) % win, w + (-w) % win
        # Padding after the norm: padded tokens are exact zeros that still act as keys/values.
        y = self.attn.padded_qkv(self.norm1(x), hp, wp)
        mask = None
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
            mask = shift_mask(hp, wp, win, s, y.device, y.dtype)
        y = from_windows(self.attn.attend(to_windows(y, win), mask), win, hp, wp)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        # The output projection is per token: only the map's own tokens need it.
        x = x + linear(self.attn.proj, y[:, :h, :w])
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return linear(self.reduction, self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, shift=0 if j % 2 == 0 else window // 2) for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (features of this stage, input of the next stage)."""
        for block in self.blocks:
            x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(nn.Module):
    """Returns the four stage outputs (B, D_i, H/2^(i+2), W/2^(i+2)), each after its own LayerNorm."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        self.patch_embed = PatchEmbed(cfg.embed_dim)
        last = len(cfg.depths) - 1
        self.layers = nn.ModuleList(
            SwinStage(dim, depth, heads, cfg.window, downsample=i < last)
            for i, (dim, depth, heads) in enumerate(zip(cfg.dims, cfg.depths, cfg.heads, strict=True))
        )
        for i, dim in enumerate(cfg.dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers):
            feats, x = stage(x)
            outs.append(getattr(self, f"norm{i}")(feats).permute(0, 3, 1, 2).contiguous())
        return outs


SWIN_L = SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), heads=(6, 12, 24, 48), window=12)
SWIN_T = SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7)
