"""Synthetic benchmark of temporal smoothing: flicker and accuracy, raw vs smoothed.

A textured subject (body + head, moving and changing shape) over a textured background, with a
known soft ground-truth matte. The "network" matte is the truth corrupted the way a per-frame
network flickers: the boundary jitters (random erosion/dilation and sub-pixel shift per frame),
faint low-frequency blobs come and go, and occasional false-positive specks appear.

Metrics (mean absolute values, alpha in 0..1):
  flicker         |a_t - a_(t-1)| on pixels whose ground truth did not change
  MAD             |a - truth| over all pixels
  MAD moving edge |a - truth| on soft-edge pixels whose ground truth changed

With `--propagated LATENCY...` the smoother is also fed what a live job now gives every camera
frame: the network's results (arriving LATENCY s late) carried to each frame by
streamer.propagation. There "raw" is the propagated matte without any temporal smoothing (each
keyframe taken as it is: `propagation.fuse` 1, `fuse_median` off) and "smoothed" is what a live
job delivers with both of its temporal smoothers: keyframes fused where the picture is still (the
median of the newest three network results, then averaged with the matte shown on the keyframe's
frame: `propagation.fuse`, `fuse_median`, defaults; where it moved, averaged only where the two
agree: `fuse_agree`), then the per-frame smoother, told the interval
between keyframes (`smoothing.keyframe_span`) and where a keyframe corrected the carried matte (taken
at once), as the live core tells it. Its rows count resets too
(a keyframe gap must not be one).

Propagated rows also split the flicker by frame (each part's share of the overall mean, so the
parts add up): frames of a still subject, frames where a keyframe arrives while it moves, and the
other frames while it moves, where the matte is the last keyframe's carried by flow ("carried").
A smoother that must follow motion at once (moving-edge MAD may not get worse) passes the carried
part through where the picture moves, so "bound" is the flicker change it would reach if the two
other parts fell to nothing and the carried part stayed as it is.

    python scripts/eval_temporal.py [--fps 30] [--seconds 8] [--size 320x240] [--strength 0.5] [--seed 0]
    python scripts/eval_temporal.py --propagated 1.0 0.7 0.5 0.3 0.2 0.04

Network times of a live job (BENCHMARKS.md, "Live"): lite 256² on this 2-core CPU takes 0.13-0.18 s
through OpenVINO, the default CPU backend, on the direct path (up to 0.34 s beside WebRTC encoding),
and 0.44-0.71 s through torch; a GPU, a few tens of ms.
Each row says whether it meets the target; the exit status is 0 only when every row does.
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

from script_args import fraction, frame_size, non_negative, positive  # noqa: E402

from streamer.propagation import PropagationParams, Propagator  # noqa: E402
from streamer.smoothing import SmoothingParams, TemporalSmoother  # noqa: E402
from streamer.synthetic import Scene, SimulatedNetwork, motion_schedule  # noqa: E402

FLICKER_PARTS = ("flicker_still", "flicker_keyframe", "flicker_carried")
"""Flicker on frames of a still subject, on keyframe arrivals while it moves, and on the other
frames while it moves (the last keyframe's matte carried by flow)."""


def run(
    fps: float,
    seconds: float,
    size: tuple[int, int],
    params: SmoothingParams,
    seed: int = 0,
    keyframe_latency: float | None = None,
) -> dict:
    """Smooth every frame's matte. The raw matte is a per-frame network's, or, with
    `keyframe_latency`, the propagated matte of a live job whose network takes that long (its
    results are carried to every frame by streamer.propagation; the texture moves with the
    subject, as flow needs)."""
    w, h = size
    scene = Scene(h, w, seed, follow=keyframe_latency is not None)
    smoother = TemporalSmoother(params, "cpu")
    segments = motion_schedule(seconds)
    propagator = plain = network = None
    if keyframe_latency is not None:
        propagator = Propagator(PropagationParams())
        plain = Propagator(PropagationParams(fuse=1.0, fuse_median=False))
        network = SimulatedNetwork(keyframe_latency, fps)
    clocks: list[float] = []
    clock = 0.0  # scene time: advances only while the subject moves
    keys = ("flicker", "mad", "edge", *FLICKER_PARTS)
    sums = {f"{k}_{m}": 0.0 for k in keys for m in ("raw", "out")}
    counts = {"flicker": 0, "mad": 0, "edge": 0}
    prev = None
    elapsed = 0.0
    n = int(round(seconds * fps))
    smoothed = 0
    for i in range(n):
        t = i / fps
        moving = next(m for s, e, m in segments if s <= t < e)
        if moving and i > 0:
            clock += 1 / fps
        clocks.append(clock)
        truth = scene.truth(clock)
        image = scene.image(truth, clock)
        arrived = False  # a keyframe result arrives on this frame
        interval = correction = None  # what the live core tells the smoother with propagated mattes
        if propagator is None:
            raw = scene.network(clock)
        else:
            start = network.arrived(i)
            arrived = start is not None
            if arrived:
                result = scene.network(clocks[start]).numpy()
                propagator.keyframe(start, result)
                plain.keyframe(start, result)
            interval = network.keyframe_interval()  # as the live core measures it
            matte = propagator.step(i, image.numpy(), interval)
            matte_plain = plain.step(i, image.numpy(), interval)
            network.start(i)
            if matte is None:
                continue  # before the first result: nothing to smooth
            raw = torch.from_numpy(matte_plain)
            correction = propagator.correction()
            correction = None if correction is None else torch.from_numpy(correction)
        start = time.perf_counter()
        out = smoother(raw if propagator is None else torch.from_numpy(matte), image, t, interval, correction)
        elapsed += time.perf_counter() - start
        smoothed += 1
        sums["mad_raw"] += float((raw - truth).abs().sum())
        sums["mad_out"] += float((out - truth).abs().sum())
        counts["mad"] += truth.numel()
        if prev is not None:
            p_truth, p_raw, p_out = prev
            still = truth == p_truth
            part = "flicker_" + ("still" if not moving else "keyframe" if arrived else "carried")
            for name, now, before in (("raw", raw, p_raw), ("out", out, p_out)):
                flicker = float((now - before).abs()[still].sum())
                sums[f"flicker_{name}"] += flicker
                sums[f"{part}_{name}"] += flicker
            counts["flicker"] += int(still.sum())
            soft = F.max_pool2d(((truth > 0) & (truth < 1)).float()[None, None], 5, 1, 2)[0, 0] > 0
            edge = soft & ~still
            sums["edge_raw"] += float((raw - truth).abs()[edge].sum())
            sums["edge_out"] += float((out - truth).abs()[edge].sum())
            counts["edge"] += int(edge.sum())
        prev = (truth, raw, out)
    result = {k: v / max(1, counts[k.split("_")[0]]) for k, v in sums.items()}
    result["ms_per_frame"] = elapsed / max(1, smoothed) * 1000
    result["resets"] = smoother.resets
    result["keyframes"] = len(network.results) if network is not None else None
    return result


def change(raw: float, out: float) -> float:
    """(out - raw) / raw; NaN where raw is 0 (a run too short to have moved, say)."""
    return (out - raw) / raw if raw else math.nan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=positive, nargs="+", default=[30.0, 60.0])
    parser.add_argument("--seconds", type=positive, default=8.0)
    parser.add_argument("--size", type=frame_size, default="320x240", help="WIDTHxHEIGHT")
    parser.add_argument("--strength", type=fraction, default=SmoothingParams().strength)
    parser.add_argument("--seed", type=int, default=0, help="the scene's and the network's noise")
    parser.add_argument(
        "--propagated",
        type=non_negative,
        nargs="*",
        default=[],
        metavar="LATENCY",
        help="also smooth propagated mattes of a live job whose network takes LATENCY s (e.g. 1.0 0.7)",
    )
    args = parser.parse_args()
    # One thread: the figures should not depend on what else this shared machine is running.
    torch.set_num_threads(1)
    size = args.size
    params = SmoothingParams(strength=args.strength)
    print(f"size {size[0]}x{size[1]}, {args.seconds:g} s, strength {args.strength:g}, seed {args.seed}")
    print(f"{'fps':>5} {'raw matte':<22} {'metric':<16} {'raw':>9} {'smoothed':>9} {'change':>8}")
    missed: list[str] = []
    for fps in args.fps:
        for latency in [None, *args.propagated]:
            r = run(fps, args.seconds, size, params, seed=args.seed, keyframe_latency=latency)
            source = "per-frame network" if latency is None else f"propagated, net {latency:g} s"
            for key, label in (("flicker", "flicker"), ("mad", "MAD"), ("edge", "MAD moving edge")):
                raw, out = r[f"{key}_raw"], r[f"{key}_out"]
                print(f"{fps:>5g} {source:<22} {label:<16} {raw:>9.5f} {out:>9.5f} {change(raw, out):>+8.1%}")
            if latency is not None:
                for key in FLICKER_PARTS:
                    raw, out = r[f"{key}_raw"], r[f"{key}_out"]
                    label = key.replace("_", ", ")
                    print(
                        f"{fps:>5g} {source:<22} {label:<16} {raw:>9.5f} {out:>9.5f} {change(raw, out):>+8.1%}"
                    )
                bound = change(r["flicker_raw"], r["flicker_carried_out"])
                print(f"{fps:>5g} {source:<22} {'flicker bound':<16} {'':>9} {'':>9} {bound:>+8.1%}")
            extra = f"   resets {r['resets']}"
            if latency is not None:
                extra += f", keyframes {r['keyframes']} ({r['keyframes'] / args.seconds:.2f}/s)"
            print(f"{fps:>5g} {source:<22} {'ms/frame':<16} {'':>9} {r['ms_per_frame']:>9.2f}{extra}")
            met = r["flicker_out"] <= 0.4 * r["flicker_raw"] and r["resets"] == 1
            met &= r["mad_out"] <= r["mad_raw"] and r["edge_out"] <= r["edge_raw"]
            print(f"{fps:>5g} {source:<22} {'target':<16} {'met' if met else 'NOT met':>19}")
            if not met:
                missed.append(f"{fps:g} fps {source}")
    print(
        "target (flicker -60%, MAD and moving-edge MAD not worse, no reset after the first frame):",
        "met in every row" if not missed else "NOT met in " + "; ".join(missed),
    )
    return 0 if not missed else 1


if __name__ == "__main__":
    raise SystemExit(main())
