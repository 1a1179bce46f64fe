"""Synthetic moving pictures with a known matte, for benchmarks and tests (no camera, no weights).

A textured subject (a body ellipse with a head circle, moving and changing shape) over a textured
background, with a soft ground-truth matte, and the truth corrupted the way a per-frame network
flickers. `scripts/eval_temporal.py` (smoothing) and `scripts/eval_live.py` (propagation) share it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def subject_pose(t: float, h: int, w: int, moving: bool = True) -> tuple[float, ...]:
    """(cx, cy, ax, ay, hx, hy): body centre and half-axes, head centre, in pixels, at time t."""
    phase = t if moving else 0.0
    cx = w * (0.5 + 0.18 * math.sin(phase * 1.3))
    cy = h * (0.72 + 0.03 * math.sin(phase * 2.1))
    ax = w * (0.17 + 0.03 * math.sin(phase * 1.7))
    ay = h * (0.30 + 0.02 * math.cos(phase * 1.1))
    hx = cx + w * 0.04 * math.sin(phase * 2.3)
    hy = cy - ay - h * 0.12
    return cx, cy, ax, ay, hx, hy


def subject_distance(t: float, h: int, w: int, moving: bool) -> torch.Tensor:
    """Signed distance in pixels (negative inside) of a body ellipse with a head circle."""
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    cx, cy, ax, ay, hx, hy = subject_pose(t, h, w, moving)
    body = (torch.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2) - 1) * min(ax, ay)
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
    """`follow=False`: the subject's texture stays put while its outline moves (enough for
    smoothing, which looks at image differences). `follow=True`: the texture moves and stretches
    with the body, as a person's clothes do (what optical flow needs to be tested on)."""

    def __init__(self, h: int, w: int, seed: int = 0, follow: bool = False):
        self.h, self.w = h, w
        self.follow = follow
        self.gen = torch.Generator().manual_seed(seed)
        self.background = texture(h, w, (0.35, 0.45, 0.6), self.gen)
        self.foreground = texture(h, w, (0.8, 0.55, 0.4), self.gen)

    def truth(self, clock: float) -> torch.Tensor:
        return matte_from_distance(subject_distance(clock, self.h, self.w, moving=True))

    def image(self, truth: torch.Tensor, clock: float | None = None) -> torch.Tensor:
        """uint8 (H, W, 3): the subject over the background by `truth`, with sensor noise. With
        `follow`, give the scene clock of `truth` so that the texture is where the body is."""
        foreground = self.foreground
        if self.follow and clock is not None:
            foreground = self._moved_foreground(clock)
        a = truth[..., None]
        picture = a * foreground + (1 - a) * self.background
        picture = picture + torch.randn(picture.shape, generator=self.gen) * (1.5 / 255)
        return (picture.clamp(0, 1) * 255).round().to(torch.uint8)

    def _moved_foreground(self, clock: float) -> torch.Tensor:
        h, w = self.h, self.w
        cx, cy, ax, ay, *_ = subject_pose(clock, h, w)
        cx0, cy0, ax0, ay0, *_ = subject_pose(0.0, h, w)
        xs = (torch.arange(w, dtype=torch.float32) - cx) * (ax0 / ax) + cx0
        ys = (torch.arange(h, dtype=torch.float32) - cy) * (ay0 / ay) + cy0
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((xx / (w - 1) * 2 - 1, yy / (h - 1) * 2 - 1), dim=-1)
        picture = self.foreground.permute(2, 0, 1)[None]
        out = F.grid_sample(
            picture, grid[None], mode="bilinear", padding_mode="reflection", align_corners=True
        )
        return out[0].permute(1, 2, 0)

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


class SimulatedNetwork:
    """When a network's results arrive, on a simulated clock (no sleeping): a pass started on
    frame s delivers at frame s + ceil(latency x fps); the network then starts again on the
    newest frame, at most every `keyframe_every`-th frame. `results` is the list of
    (frame it started on, frame its result arrived at)."""

    def __init__(self, latency: float, fps: float, keyframe_every: int = 1):
        self.fps = fps
        self.lag = max(1, math.ceil(latency * fps - 1e-9))
        self.keyframe_every = keyframe_every
        self.results: list[tuple[int, int]] = []
        self._pending: int | None = None
        self._last_start: int | None = None

    def arrived(self, frame: int) -> int | None:
        """Call before frame `frame` is shown: the frame whose result has arrived by then, if any."""
        if self._pending is None or self._pending + self.lag > frame:
            return None
        start, self._pending = self._pending, None
        self.results.append((start, frame))
        return start

    def keyframe_interval(self) -> float | None:
        """Seconds between the frames of the last two results (what a live core measures), or
        None before two have arrived."""
        if len(self.results) < 2:
            return None
        return (self.results[-1][0] - self.results[-2][0]) / self.fps

    def start(self, frame: int) -> bool:
        """Call once frame `frame` is in: whether the network starts on it (it is free)."""
        if self._pending is not None:
            return False
        if self._last_start is not None and frame - self._last_start < self.keyframe_every:
            return False
        self._pending = self._last_start = frame
        return True
