"""Foreground estimation at 1080p: ours vs the official CPU implementation, side by side.

The reference below re-implements BiRefNet's `refine_foreground(..., device='cpu')` path
(image_proc.py): float32 image and mask in [0, 1], `cv2.blur` (BORDER_REFLECT_101) for two
blur-fusion passes with windows 90 then 6, output `(F * 255).astype(uint8)`. Runs alternate
(reference, ours, reference, ...) so machine load hits both alike.

    python scripts/bench_foreground.py [--runs 9] [--size 1920x1080]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from script_args import count, frame_size  # noqa: E402

from streamer.compose.foreground_tiles import _active_tiles, estimate_foreground_u8  # noqa: E402


def official_pass(image, fg, bg, alpha, r):
    blurred_alpha = cv2.blur(alpha, (r, r))[:, :, None]
    blurred_fg = cv2.blur(fg * alpha, (r, r)) / (blurred_alpha + 1e-5)
    blurred_bg = cv2.blur(bg * (1 - alpha), (r, r)) / ((1 - blurred_alpha) + 1e-5)
    out = blurred_fg + alpha * (image - alpha * blurred_fg - (1 - alpha) * blurred_bg)
    return np.clip(out, 0, 1), blurred_bg


def official(image_u8: np.ndarray, mask_u8: np.ndarray) -> np.ndarray:
    image = np.array(image_u8, dtype=np.float32) / 255.0
    alpha = (np.array(mask_u8, dtype=np.float32) / 255.0)[:, :, None]
    fg, bg = official_pass(image, image, image, alpha, 90)
    fg = official_pass(image, fg, bg, alpha, 6)[0]
    return (fg * 255.0).astype(np.uint8)


def portrait(w: int, h: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame and an 8-bit matte: head and shoulders with soft edges and hair."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    base = cv2.resize(
        rng.random((h // 40, w // 40, 3), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    image = np.clip(base * 200 + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    if kind == "all-soft":
        return image, rng.integers(1, 255, (h, w), dtype=np.uint8)
    body = (np.sqrt(((xx - w / 2) / (w * 0.3)) ** 2 + ((yy - h * 1.05) / (h * 0.5)) ** 2) - 1) * w * 0.3
    head = np.sqrt((xx - w / 2) ** 2 + (yy - h * 0.35) ** 2) - h * 0.22
    dist = np.minimum(body, head)
    # Hair: the top of the head gets a wide, noisy soft band.
    hair = cv2.resize(rng.random((h // 8, w // 8), dtype=np.float32), (w, h)) * 25 * (yy < h * 0.4)
    edge = 3.0 + hair
    alpha = np.clip(0.5 - (dist + hair * 0.5) / edge, 0, 1)
    return image, (alpha * 255).astype(np.uint8)


def timed(fn, *args) -> tuple[float, float, np.ndarray]:
    """Wall and process CPU milliseconds (CPU time is less disturbed by other jobs on the machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=count, default=9)
    parser.add_argument("--size", type=frame_size, default="1920x1080", help="WIDTHxHEIGHT")
    args = parser.parse_args()
    w, h = args.size
    print(f"{w}x{h}, {args.runs} alternating runs, cv2 threads {cv2.getNumThreads()}")
    print(f"{'matte':<9} {'tiles':>6} {'time':<10} {'official ms':>12} {'ours ms':>9} {'speed-up':>9}")
    for kind in ("portrait", "all-soft"):
        image, a8 = portrait(w, h, kind)
        timed(estimate_foreground_u8, image, a8)  # warm-up (thread pool, caches)
        ref_ms, ours_ms = [], []
        for _ in range(args.runs):
            *t, ref = timed(official, image, a8)
            ref_ms.append(t)
            *t, ours = timed(estimate_foreground_u8, image, a8)
            ours_ms.append(t)
        diff = np.abs(ref.astype(np.int16) - ours)
        covered = len(_active_tiles(a8)[0]) * 22 * 22 / (w * h)
        for col, label in ((0, "wall med"), (0, "wall min"), (1, "CPU med")):
            pick = min if label.endswith("min") else statistics.median
            ref_t, ours_t = pick(r[col] for r in ref_ms), pick(o[col] for o in ours_ms)
            print(
                f"{kind:<9} {covered:>6.1%} {label:<10} {ref_t:>12.1f} {ours_t:>9.1f} {ref_t / ours_t:>8.1f}x"
            )
        print(
            f"{kind:<9} max |ours - official| = {int(diff.max())}/255 on {int((diff > 0).sum())} of {diff.size} values"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
