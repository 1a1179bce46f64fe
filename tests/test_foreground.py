"""Blur-fusion foreground estimation against a float64 reference of the formula (spec §9)."""

import cv2
import numpy as np
import pytest
import torch

from streamer.compose.boxfilter import box_mean
from streamer.compose.foreground import estimate_foreground, estimate_foreground_cpu
from streamer.compose.foreground_tiles import estimate_foreground_u8


def reference_box(x: np.ndarray, k: int) -> np.ndarray:
    """float64 k x k mean, window -k//2 .. k-k//2-1, mirrored border without repeating the edge."""
    before, after = k // 2, k - 1 - k // 2
    pad = [(before, after), (before, after)] + [(0, 0)] * (x.ndim - 2)
    p = np.pad(x.astype(np.float64), pad, mode="reflect")
    h, w = x.shape[:2]
    rows = sum(p[dy : dy + h] for dy in range(k))  # separable: k row shifts, then k column shifts
    return sum(rows[:, dx : dx + w] for dx in range(k)) / (k * k)


def reference_foreground(image: np.ndarray, alpha: np.ndarray, radii=(90, 6)) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None]
    i = image.astype(np.float64)
    fg = bg = i
    for k in radii:
        ab = reference_box(a, k)
        f_hat = reference_box(fg * a, k) / (ab + 1e-5)
        b_hat = reference_box(bg * (1 - a), k) / ((1 - ab) + 1e-5)
        fg, bg = np.clip(f_hat + a * (i - a * f_hat - (1 - a) * b_hat), 0, 1), b_hat
    return fg


def portrait(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    alpha = np.clip((1 - ((xx - w / 2) / (w / 3)) ** 2 - ((yy - h / 2) / (h / 2.5)) ** 2) * 4, 0, 1)
    alpha = np.round(alpha * 255) / 255
    image = rng.integers(0, 256, (h, w, 3)) / 255
    return image.astype(np.float32), alpha.astype(np.float32)


@pytest.mark.parametrize("k", [1, 2, 5, 6, 9, 90])
@pytest.mark.parametrize("shape", [(7, 9), (31, 40)])
def test_box_mean_matches_reference(k, shape):
    x = np.random.default_rng(k).random(shape).astype(np.float32)
    ours = box_mean(torch.from_numpy(x), k).numpy()
    assert np.abs(ours - reference_box(x, k)).max() < 1e-6


def test_box_mean_matches_cv2_blur():
    x = np.random.default_rng(1).random((50, 70, 3)).astype(np.float32)
    for k in (6, 7, 30):
        ours = box_mean(torch.from_numpy(x), k, dims=(0, 1)).numpy()
        assert np.abs(ours - cv2.blur(x, (k, k), borderType=cv2.BORDER_REFLECT_101)).max() < 1e-6


@pytest.mark.parametrize("shape", [(48, 64), (120, 100)])
def test_torch_path_matches_float64_reference(shape):
    image, alpha = portrait(*shape)
    ours = estimate_foreground(torch.from_numpy(image), torch.from_numpy(alpha)).numpy()
    assert np.abs(ours - reference_foreground(image, alpha)).max() < 1e-4


@pytest.mark.parametrize("shape", [(48, 64), (120, 100)])
def test_cpu_path_matches_float64_reference(shape):
    image, alpha = portrait(*shape, seed=2)
    ours = estimate_foreground_cpu(image, alpha)
    assert ours.dtype == np.float32 and ours.shape == image.shape
    assert np.abs(ours - reference_foreground(image, alpha)).max() < 1e-4


def test_opaque_matte_keeps_the_image_and_removes_the_halo():
    h, w = 40, 60
    image, _ = portrait(h, w)
    ones = np.ones((h, w), np.float32)
    assert np.abs(estimate_foreground_cpu(image, ones) - image).max() < 1e-5
    # A red subject over blue with a soft edge: the observed edge colours are purple mixtures.
    ramp = np.clip((np.arange(w) - 20) / 20, 0, 1).astype(np.float32)[None].repeat(h, 0)
    red, blue = np.array([1, 0, 0], np.float32), np.array([0, 0, 1], np.float32)
    mixed = ramp[..., None] * red + (1 - ramp[..., None]) * blue
    fg = estimate_foreground(torch.from_numpy(mixed), torch.from_numpy(ramp)).numpy()
    soft = (ramp > 0.2) & (ramp < 0.8)
    assert np.abs(fg[soft] - red).max() < 0.1 < np.abs(mixed[soft] - red).max()


def silhouette(h: int, w: int, edge: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image and matte: a head-and-shoulders shape with a soft edge of `edge` pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    body = (np.sqrt(((xx - w / 2) / (w * 0.3)) ** 2 + ((yy - h * 0.9) / (h * 0.5)) ** 2) - 1) * w * 0.3
    head = np.sqrt((xx - w / 2) ** 2 + (yy - h * 0.3) ** 2) - h * 0.2
    a8 = (np.clip(0.5 - np.minimum(body, head) / edge, 0, 1) * 255).astype(np.uint8)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), a8


def official_u8(image: np.ndarray, a8: np.ndarray) -> np.ndarray:
    return (reference_foreground(image / 255, a8 / 255) * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "h, w, edge", [(130, 150, 3), (150, 200, 12), (117, 240, 0.5)], ids=["thin", "wide", "hard"]
)
def test_tiled_path_matches_reference_within_one_level(h, w, edge):
    image, a8 = silhouette(h, w, edge)
    a8[:4, : w // 3] = 100  # soft pixels on the border: mirrored halo
    a8[h // 2, -2:] = 7
    ours = estimate_foreground_u8(image, a8)
    assert ours.dtype == np.uint8 and ours.shape == image.shape
    assert np.abs(ours.astype(int) - official_u8(image, a8)).max() <= 1


def test_tiled_path_far_from_the_frame_edges():
    """The summed-area tables then cover only a crop of the frame."""
    rng = np.random.default_rng(3)
    h, w = 300, 420
    yy, xx = np.mgrid[:h, :w]
    dist = np.sqrt((xx - 200) ** 2 + (yy - 140) ** 2) - 25
    a8 = (np.clip(0.5 - dist / 5, 0, 1) * 255).astype(np.uint8)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert np.abs(estimate_foreground_u8(image, a8).astype(int) - official_u8(image, a8)).max() <= 1


def test_a_lone_soft_pixel_is_not_missed():
    image, a8 = silhouette(160, 200, 0.1)
    a8[a8 > 0] = 255
    a8[150, 10] = 200  # one soft pixel in a tile of its own
    a8[5, 190] = 1
    assert np.abs(estimate_foreground_u8(image, a8).astype(int) - official_u8(image, a8)).max() <= 1


@pytest.mark.parametrize("shape", [(40, 60), (120, 130)], ids=["small", "all-soft"])
def test_dense_fallback_matches_reference(shape):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    a8 = rng.integers(1, 255, shape, dtype=np.uint8)
    assert np.abs(estimate_foreground_u8(image, a8).astype(int) - official_u8(image, a8)).max() <= 1


def test_tiled_path_closed_forms():
    image, a8 = silhouette(128, 160, 1)
    a8[a8 > 0] = 255  # a hard matte: no soft pixel
    ours = estimate_foreground_u8(image, a8)
    opaque = a8 == 255
    assert np.abs(ours[opaque].astype(int) - image[opaque]).max() <= 1  # float rounding near edges
    far = cv2.dilate(a8, np.ones((9, 9), np.uint8)) == 0
    assert (ours[far] == 0).all()
