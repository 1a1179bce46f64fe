"""Synthetic benchmark of temporal smoothing: flicker and accuracy, raw vs smoothed.

A textured subject (body + head, moving and changing shape) over a textured background, with a
known soft ground-truth matte. The "network" matte is the truth corrupted the way a per-frame
network flickers: the boundary jitters (random erosion/dilation and sub-pixel shift per frame),
faint low-frequency blobs come and go, and occasional false-positive specks appear.

Metrics (mean absolute values, alpha in 0..1):
  flicker         |a_t - a_(t-1)| on pixels whose ground truth did not change
  MAD             |a - truth| over all pixels
  MAD moving edge |a - truth| on soft-edge pixels whose ground truth changed

    python scripts/eval_temporal.py [--fps 30] [--seconds 8] [--size 320x240] [--strength 0.5]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.smoothing import SmoothingParams, TemporalSmoother  # noqa: E402


def smooth_noise(h: int, w: int, cells: int, gen: torch.Generator) -> torch.Tensor:
    """Low-frequency noise in about [-1, 1]: random values on a coarse grid, upsampled."""
    coarse = torch.rand(1, 1, cells, cells, generator=gen) * 2 - 1
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0, 0]


def texture(h: int, w: int, base: tuple[float, float, float], gen: torch.Generator) -> torch.Tensor:
    """(H, W, 3) float in 0..1: a base colour with coarse and fine variation."""
    colour = torch.tensor(base).view(1, 1, 3)
    coarse = smooth_noise(h, w, 6, gen)[..., None] * 0.15
    fine = smooth_noise(h, w, max(h, w) // 4, gen)[..., None] * 0.08
    return (colour + coarse + fine).clamp(0, 1)


def subject_distance(t: float, h: int, w: int, moving: bool) -> torch.Tensor:
    """Signed distance in pixels (negative inside) of a body ellipse with a head circle."""
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    phase = t if moving else 0.0
    cx = w * (0.5 + 0.18 * math.sin(phase * 1.3))
    cy = h * (0.72 + 0.03 * math.sin(phase * 2.1))
    ax = w * (0.17 + 0.03 * math.sin(phase * 1.7))
    ay = h * (0.30 + 0.02 * math.cos(phase * 1.1))
    body = (torch.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2) - 1) * min(ax, ay)
    hx = cx + w * 0.04 * math.sin(phase * 2.3)
    hy = cy - ay - h * 0.12
    head = torch.sqrt((xx - hx) ** 2 + (yy - hy) ** 2) - h * 0.13
    return torch.minimum(body, head)


def matte_from_distance(dist: torch.Tensor, softness: float = 1.5) -> torch.Tensor:
    return (0.5 - dist / (2 * softness)).clamp(0, 1)


def motion_schedule(seconds: float) -> list[tuple[float, float, bool]]:
    """Alternate still and moving segments of about a second (still first)."""
    out, start, moving = [], 0.0, False
    while start < seconds:
        length = 1.2 if not moving else 1.0
        out.append((start, min(seconds, start + length), moving))
        start += length
        moving = not moving
    return out


class Scene:
    def __init__(self, h: int, w: int, seed: int = 0):
        self.h, self.w = h, w
        self.gen = torch.Generator().manual_seed(seed)
        self.background = texture(h, w, (0.35, 0.45, 0.6), self.gen)
        self.foreground = texture(h, w, (0.8, 0.55, 0.4), self.gen)

    def truth(self, clock: float) -> torch.Tensor:
        return matte_from_distance(subject_distance(clock, self.h, self.w, moving=True))

    def image(self, truth: torch.Tensor) -> torch.Tensor:
        a = truth[..., None]
        picture = a * self.foreground + (1 - a) * self.background
        picture = picture + torch.randn(picture.shape, generator=self.gen) * (1.5 / 255)
        return (picture.clamp(0, 1) * 255).round().to(torch.uint8)

    def network(self, clock: float) -> torch.Tensor:
        """The truth as a flickering per-frame network would see it."""
        g, h, w = self.gen, self.h, self.w
        grow = float(torch.randn(1, generator=g)) * 0.8
        shift_x, shift_y = (torch.rand(2, generator=g) * 1.6 - 0.8).tolist()
        yy, xx = torch.meshgrid(
            torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
        )
        grid = torch.stack(((xx - shift_x) / (w - 1) * 2 - 1, (yy - shift_y) / (h - 1) * 2 - 1), dim=-1)
        dist = subject_distance(clock, h, w, moving=True)
        dist = F.grid_sample(
            dist[None, None], grid[None], mode="bilinear", padding_mode="border", align_corners=True
        )
        matte = matte_from_distance(dist[0, 0] - grow)
        blobs = smooth_noise(h, w, 5, g).clamp(min=0) * 0.25
        matte = matte + blobs * (1 - matte) - smooth_noise(h, w, 5, g).clamp(min=0) * 0.15 * matte
        if float(torch.rand(1, generator=g)) < 0.3:
            for _ in range(3):
                y, x = (
                    int(torch.randint(0, h - 4, (1,), generator=g)),
                    int(torch.randint(0, w - 4, (1,), generator=g)),
                )
                matte[y : y + 3, x : x + 3] = 1.0
        return matte.clamp(0, 1)


def run(fps: float, seconds: float, size: tuple[int, int], params: SmoothingParams, seed: int = 0) -> dict:
    w, h = size
    scene = Scene(h, w, seed)
    smoother = TemporalSmoother(params, "cpu")
    segments = motion_schedule(seconds)
    clock = 0.0  # scene time: advances only while the subject moves
    sums = {k: 0.0 for k in ("flicker_raw", "flicker_out", "mad_raw", "mad_out", "edge_raw", "edge_out")}
    counts = {"flicker": 0, "mad": 0, "edge": 0}
    prev = None
    elapsed = 0.0
    n = int(round(seconds * fps))
    for i in range(n):
        t = i / fps
        moving = next(m for s, e, m in segments if s <= t < e)
        if moving and i > 0:
            clock += 1 / fps
        truth = scene.truth(clock)
        image = scene.image(truth)
        raw = scene.network(clock)
        start = time.perf_counter()
        out = smoother(raw, image, t)
        elapsed += time.perf_counter() - start
        sums["mad_raw"] += float((raw - truth).abs().sum())
        sums["mad_out"] += float((out - truth).abs().sum())
        counts["mad"] += truth.numel()
        if prev is not None:
            p_truth, p_raw, p_out = prev
            still = truth == p_truth
            sums["flicker_raw"] += float((raw - p_raw).abs()[still].sum())
            sums["flicker_out"] += float((out - p_out).abs()[still].sum())
            counts["flicker"] += int(still.sum())
            soft = F.max_pool2d(((truth > 0) & (truth < 1)).float()[None, None], 5, 1, 2)[0, 0] > 0
            edge = soft & ~still
            sums["edge_raw"] += float((raw - truth).abs()[edge].sum())
            sums["edge_out"] += float((out - truth).abs()[edge].sum())
            counts["edge"] += int(edge.sum())
        prev = (truth, raw, out)
    result = {k: v / max(1, counts[k.split("_")[0]]) for k, v in sums.items()}
    result["ms_per_frame"] = elapsed / n * 1000
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, nargs="+", default=[30.0, 60.0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--strength", type=float, default=SmoothingParams().strength)
    args = parser.parse_args()
    # One thread: the figures should not depend on what else this shared machine is running.
    torch.set_num_threads(1)
    size = tuple(int(v) for v in args.size.split("x"))
    params = SmoothingParams(strength=args.strength)
    print(f"size {args.size}, {args.seconds:g} s, strength {args.strength:g}")
    print(f"{'fps':>5} {'metric':<16} {'raw':>9} {'smoothed':>9} {'change':>8}")
    ok = True
    for fps in args.fps:
        r = run(fps, args.seconds, size, params)
        for key, label in (("flicker", "flicker"), ("mad", "MAD"), ("edge", "MAD moving edge")):
            raw, out = r[f"{key}_raw"], r[f"{key}_out"]
            print(f"{fps:>5g} {label:<16} {raw:>9.5f} {out:>9.5f} {(out - raw) / raw:>+8.1%}")
        print(f"{fps:>5g} {'ms/frame':<16} {'':>9} {r['ms_per_frame']:>9.2f}")
        ok &= r["flicker_out"] <= 0.4 * r["flicker_raw"]
        ok &= r["mad_out"] <= r["mad_raw"] and r["edge_out"] <= r["edge_raw"]
    print("target (flicker -60%, MAD and moving-edge MAD not worse):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
