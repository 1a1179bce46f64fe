"""The gathered deformable convolution against torchvision's operator (the official model's)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from streamer.model.deform import deform_conv2d_gather


def make_inputs(b, c, h, w, cout, k, spread, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    offset = spread * torch.randn(b, 2 * k * k, h, w, generator=g, dtype=dtype)
    mask = 2 * torch.rand(b, k * k, h, w, generator=g, dtype=dtype)
    weight = torch.randn(cout, c, k, k, generator=g, dtype=dtype) / (c * k * k) ** 0.5
    return x, offset, weight, mask


# The model's shapes (64 -> 256 channels, k = 1, 3, 7 at strides 32..4 of small inputs), odd and
# tiny maps, a batch, and offsets from sub-pixel to far outside the image.
SHAPES = [
    (1, 64, 8, 8, 256, 1, 2.0),
    (1, 64, 8, 8, 256, 3, 2.0),
    (1, 64, 16, 16, 256, 7, 3.0),
    (1, 64, 32, 32, 256, 7, 1.0),
    (2, 5, 7, 11, 6, 3, 4.0),
    (2, 5, 11, 7, 6, 7, 0.3),
    (1, 3, 1, 1, 4, 1, 0.7),
    (1, 3, 1, 1, 4, 3, 0.7),
    (1, 3, 2, 3, 4, 7, 2.0),
    (3, 4, 6, 5, 2, 3, 30.0),
]


@pytest.mark.parametrize(("b", "c", "h", "w", "cout", "k", "spread"), SHAPES)
def test_matches_torchvision(b, c, h, w, cout, k, spread):
    x, offset, weight, mask = make_inputs(b, c, h, w, cout, k, spread)
    ref = deform_conv2d(x, offset, weight, padding=k // 2, mask=mask)
    out = deform_conv2d_gather(x, offset, weight, mask, k // 2)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_matches_torchvision_float64(k):
    x, offset, weight, mask = make_inputs(2, 6, 9, 10, 5, k, 3.0, dtype=torch.float64, seed=k)
    ref = deform_conv2d(x, offset, weight, padding=k // 2, mask=mask)
    out = deform_conv2d_gather(x, offset, weight, mask, k // 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_integer_offsets_and_edges():
    # Whole-pixel offsets make bilinear weights exactly 0/1: the gather must pick the right pixel,
    # and points at -1 or H (just outside) must read zero, as in torchvision.
    x, _, weight, _ = make_inputs(1, 4, 5, 6, 3, 3, 0.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    offset = torch.randint(-7, 8, (1, 18, 5, 6), generator=g).double()
    mask = torch.ones(1, 9, 5, 6, dtype=torch.float64)
    ref = deform_conv2d(x, offset, weight, padding=1, mask=mask)
    torch.testing.assert_close(deform_conv2d_gather(x, offset, weight, mask, 1), ref, rtol=0, atol=1e-12)


def test_zero_offsets_are_a_plain_convolution():
    x, _, weight, _ = make_inputs(1, 4, 6, 6, 3, 3, 0.0)
    offset = torch.zeros(1, 18, 6, 6)
    mask = torch.ones(1, 9, 6, 6)
    expected = torch.nn.functional.conv2d(x, weight, padding=1)
    torch.testing.assert_close(deform_conv2d_gather(x, offset, weight, mask, 1), expected, rtol=0, atol=1e-5)


def test_bfloat16_close_to_float32():
    x, offset, weight, mask = make_inputs(1, 64, 16, 16, 256, 3, 2.0)
    ref = deform_conv2d(x, offset, weight, padding=1, mask=mask)
    args = [t.bfloat16() for t in (x, offset, weight, mask)]
    out = deform_conv2d_gather(*args, 1)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max()


def test_rejects_mismatched_shapes():
    x, offset, weight, mask = make_inputs(1, 4, 6, 6, 3, 3, 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        deform_conv2d_gather(x, offset[:, :9], weight, mask, 1)
    with pytest.raises(ValueError, match="do not fit"):
        deform_conv2d_gather(x, offset, weight, mask, 0)


def test_gather_only_on_the_cpu(monkeypatch):
    from streamer.model import blocks

    x = torch.zeros(1, 64, 16, 16)
    offset = torch.zeros(1, 18, 16, 16)
    assert blocks.use_gather(x, offset)
    assert blocks.use_gather(x.bfloat16(), offset.bfloat16())
    assert not blocks.use_gather(x.to("meta"), offset.to("meta"))
    # Below the measured size torchvision's operator is kept (k = 1 on an 8x8 map: 64 samples).
    assert not blocks.use_gather(x[..., :8, :8], offset[:, :2, :8, :8])
    monkeypatch.setattr(blocks, "GATHER_ON_CPU", False)
    assert not blocks.use_gather(x, offset)
