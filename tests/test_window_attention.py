"""Window attention on the CPU: the 4-D SDPA call against explicit softmax attention and the 5-D call."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from streamer.model import swin


def reference(attn: swin.WindowAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    b, nw, n, d = x.shape
    hd = d // attn.heads
    q, k, v = attn.qkv(x).view(b, nw, n, 3, attn.heads, hd).permute(3, 0, 1, 4, 2, 5).unbind(0)
    scores = (q * hd**-0.5) @ k.transpose(-1, -2) + attn.bias()
    if mask is not None:
        scores = scores + mask
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(2, 3).reshape(b, nw, n, d))


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize(("dim", "heads", "window", "side"), [(96, 3, 7, 14), (64, 2, 4, 8)])
def test_fused_cpu_attention(monkeypatch, shifted, dim, heads, window, side):
    torch.manual_seed(0)
    attn = swin.WindowAttention(dim, heads, window).eval()
    torch.nn.init.normal_(attn.relative_position_bias_table, std=0.5)
    nw = (side // window) ** 2
    x = torch.randn(2, nw, window * window, dim)
    mask = swin.make_shift_mask(side, side, window, window // 2, x.device, x.dtype) if shifted else None
    with torch.inference_mode():
        # Only the fused kernel is allowed: a fall back to the math path raises here.
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            fused = attn(x, mask)
        monkeypatch.setattr(swin, "FUSED_CPU_ATTENTION", False)
        five_d = attn(x, mask)
        expected = reference(attn, x, mask)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(five_d, expected, rtol=0, atol=1e-5)


def test_onednn_linear_matches_linear(monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80)
    x = torch.randn(2, 3, 5, 48)
    with torch.inference_mode():
        expected = layer(x)
        monkeypatch.setattr(swin, "ONEDNN_CPU_LINEAR", True)
        out = swin.linear(layer, x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def padded_block_reference(block: swin.SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """The official order: pad the normed map, then project every token, padded ones included."""
    _, h, w, _ = x.shape
    win, s = block.window, block.shift
    y = torch.nn.functional.pad(block.norm1(x), (0, 0, 0, (-w) % win, 0, (-h) % win))
    hp, wp = y.shape[1:3]
    mask = None
    if s:
        y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        mask = swin.make_shift_mask(hp, wp, win, s, y.device, y.dtype)
    y = swin.from_windows(reference(block.attn, swin.to_windows(y, win), mask), win, hp, wp)
    if s:
        y = torch.roll(y, shifts=(s, s), dims=(1, 2))
    x = x + y[:, :h, :w]
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("linear_as_conv", [False, True])
@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 14), (16, 11), (3, 5)])
def test_projecting_only_the_maps_own_tokens_matches_projecting_the_padded_map(
    monkeypatch, linear_as_conv, shift, h, w
):
    monkeypatch.setattr(swin, "ONEDNN_CPU_LINEAR", linear_as_conv)
    torch.manual_seed(0)
    block = swin.SwinBlock(48, 3, 7, shift).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, h, w, 48)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), padded_block_reference(block, x), rtol=0, atol=2e-5)
