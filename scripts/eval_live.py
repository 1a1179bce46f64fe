"""Live matting with ground truth: every camera frame's matte, with and without propagation.

A synthetic camera (streamer.synthetic: a textured subject moving and changing shape over a
textured background, its texture moving with it, known soft matte) runs at the camera's rate.
The network is a stand-in: on the frame it starts from it returns the truth with a per-frame
network's errors (jittering boundary, faint blobs, specks; at the network's input size), and the
result arrives `ceil(latency x fps)` frames later, on a simulated clock (no sleeping); the
network then starts again on the newest frame (at most every `keyframe_every`-th frame). For
every delivered frame, against that frame's truth:

  (a) newest   the newest network matte as it is (a live job without propagation)
  (b) propagated  streamer.propagation.Propagator: the matte carried to every frame by flow

Metrics: MAD over all pixels, MAD on moving edges (soft-edge pixels whose truth changed since the
previous frame), the worst frame's MAD (a torn matte shows there) and the propagation's own cost
per frame (ms, one thread). Target per timing: (b) at least 40% lower moving-edge MAD than (a),
overall MAD not worse, worst frame not worse. A PNG per timing plots each frame's moving-edge MAD.

    python scripts/eval_live.py                     # CPU torch, CPU OpenVINO, GPU-like timings
    python scripts/eval_live.py --measure           # time the real lite 256^2 torch forward first
    python scripts/eval_live.py --plots docs        # where the PNGs go
    python scripts/eval_live.py --set flow_finest_scale=1   # any propagation setting
    python scripts/eval_live.py --exposure 1.3      # the camera's brightness swinging (auto exposure)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from script_args import frame_size, positive  # noqa: E402

from streamer.config import build_params  # noqa: E402
from streamer.errors import ConfigError  # noqa: E402
from streamer.propagation import PropagationParams, Propagator  # noqa: E402
from streamer.synthetic import Scene, SimulatedNetwork, motion_schedule  # noqa: E402


@dataclass
class Timing:
    name: str
    latency: float  # seconds a network pass takes
    fps: float  # camera
    keyframe_every: int = 1
    net_size: int = 256  # the network's output (square, as the lite network at 256^2)


@dataclass
class Track:
    """One matte source's per-frame errors."""

    mad: list[float] = field(default_factory=list)
    edge: list[float | None] = field(default_factory=list)  # None: no moving edge in that frame
    edge_sum: float = 0.0
    edge_count: int = 0

    def add(self, matte: np.ndarray, truth: np.ndarray, edge: np.ndarray) -> None:
        err = np.abs(matte - truth)
        self.mad.append(float(err.mean()))
        n = int(edge.sum())
        if n:
            s = float(err[edge].sum())
            self.edge.append(s / n)
            self.edge_sum += s
            self.edge_count += n
        else:
            self.edge.append(None)

    @property
    def edge_mad(self) -> float:
        return self.edge_sum / max(1, self.edge_count)


class Run:
    """One timing: the stand-in network's schedule and the two matte sources fed alike."""

    def __init__(self, timing: Timing, params: PropagationParams):
        self.timing = timing
        self.network = SimulatedNetwork(timing.latency, timing.fps, timing.keyframe_every)
        self.newest = Propagator(PropagationParams(enabled=False))
        self.propagated = Propagator(params)
        self.a, self.b = Track(), Track()
        self.step_ms: list[float] = []

    def frame(self, i: int, image: np.ndarray, truth: np.ndarray, edge: np.ndarray, result) -> None:
        start = self.network.arrived(i)
        if start is not None:
            # The result arrived since the last frame: both sources take it.
            alpha = result(start, self.timing.net_size)
            self.newest.keyframe(start, alpha)
            self.propagated.keyframe(start, alpha)
        a = self.newest.step(i, image)
        began = time.perf_counter()
        b = self.propagated.step(i, image, self.network.keyframe_interval())
        self.step_ms.append((time.perf_counter() - began) * 1000)
        self.network.start(i)
        if a is not None and b is not None:
            self.a.add(a, truth, edge)
            self.b.add(b, truth, edge)


def moving_edge(truth: np.ndarray, before: np.ndarray | None) -> np.ndarray:
    """Soft-edge pixels (grown by 2) whose truth changed since the previous frame."""
    if before is None:
        return np.zeros(truth.shape, bool)
    soft = ((truth > 0) & (truth < 1)).astype(np.uint8)
    soft = cv2.dilate(soft, np.ones((5, 5), np.uint8)) > 0
    return soft & (truth != before)


def camera_exposure(t: float, swing: float, period: float = 8.0) -> float:
    """The camera's exposure at `t` s: 1 at the start, `swing` half a period later, back at 1 after
    a period (linear: auto exposure hunting, or the light changing)."""
    phase = (t / period) % 1.0
    return 1.0 + (swing - 1.0) * (1.0 - abs(2.0 * phase - 1.0))


def evaluate(
    timings: list[Timing],
    seconds: float,
    size: tuple[int, int],
    params: PropagationParams,
    seed: int = 0,
    exposure: float = 1.0,
) -> list[Run]:
    """All timings sharing one camera frame rate see the same frames, generated once. `exposure`
    (1 = steady) swings the camera picture's brightness (not the truth, nor the network's view)."""
    w, h = size
    runs = []
    for fps in sorted({t.fps for t in timings}):
        scene = Scene(h, w, seed, follow=True)
        group = [Run(t, params) for t in timings if t.fps == fps]
        segments = motion_schedule(seconds)
        clocks: list[float] = []

        def network(start: int, net_size: int, scene=scene, clocks=clocks) -> np.ndarray:
            alpha = scene.network(clocks[start]).numpy()
            return cv2.resize(alpha, (net_size, net_size), interpolation=cv2.INTER_AREA)

        clock, before = 0.0, None
        for i in range(int(round(seconds * fps))):
            t = i / fps
            if i > 0 and next(m for s, e, m in segments if s <= t < e):
                clock += 1 / fps
            clocks.append(clock)
            truth_t = scene.truth(clock)
            image = scene.image(truth_t, clock).numpy()
            if exposure != 1.0:
                image = np.clip(image * np.float32(camera_exposure(t, exposure)), 0, 255).astype(np.uint8)
            truth = truth_t.numpy()
            edge = moving_edge(truth, before)
            for run in group:
                run.frame(i, image, truth, edge, network)
            before = truth
        runs += group
    return runs


def measure_lite(size: int = 256, repeats: int = 5) -> float:
    """Median seconds of one lite forward at size^2 (recipe weights, torch, this machine's threads)."""
    from streamer.model import build_model
    from streamer.model.recipe import make_state_dict

    with torch.device("meta"):
        model = build_model("lite")
    model.load_state_dict(make_state_dict("lite"), strict=True, assign=True)
    model = model.eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            began = time.perf_counter()
            model(x)
            if i >= 2:
                times.append(time.perf_counter() - began)
    return statistics.median(times)


def plot(run: Run, path: Path) -> None:
    """Each frame's moving-edge MAD over time, (a) and (b), drawn with OpenCV (no matplotlib here)."""
    width, height, left, right, top, bottom = 900, 340, 60, 20, 48, 40
    canvas = np.full((height, width, 3), 255, np.uint8)
    values = [v for v in run.a.edge + run.b.edge if v is not None]
    ymax = max(0.05, math.ceil(max(values, default=0.05) * 20) / 20)
    n = len(run.a.edge)
    seconds = n / run.timing.fps
    pw, ph = width - left - right, height - top - bottom

    def xy(i: int, v: float) -> tuple[int, int]:
        return int(left + pw * i / max(1, n - 1)), int(top + ph * (1 - min(v, ymax) / ymax))

    font, grey = cv2.FONT_HERSHEY_SIMPLEX, (170, 170, 170)
    for k in range(6):
        v = ymax * k / 5
        y = xy(0, v)[1]
        cv2.line(canvas, (left, y), (width - right, y), (230, 230, 230), 1)
        cv2.putText(canvas, f"{v:.2f}", (5, y + 4), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    for s in range(int(seconds) + 1):
        x = int(left + pw * s / seconds) if seconds else left
        cv2.line(canvas, (x, top + ph), (x, top + ph + 4), grey, 1)
        if s % 2 == 0:
            cv2.putText(canvas, f"{s}s", (x - 8, top + ph + 18), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (width - right, top + ph), grey, 1)
    for track, colour in ((run.a, (40, 40, 220)), (run.b, (200, 110, 20))):  # BGR: red (a), blue (b)
        line: list[tuple[int, int]] = []
        for i, v in enumerate(track.edge + [None]):
            if v is None:
                if len(line) > 1:
                    cv2.polylines(canvas, [np.array(line, np.int32)], False, colour, 1, cv2.LINE_AA)
                line = []
            else:
                line.append(xy(i, v))
    t = run.timing
    title = f"moving-edge MAD per frame: {t.name} ({t.latency * 1000:.0f} ms network, {t.fps:g} fps camera)"
    cv2.putText(canvas, title, (left, 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "(a) newest matte as it is", (left, 38), font, 0.45, (40, 40, 220), 1, cv2.LINE_AA)
    cv2.putText(canvas, "(b) propagated", (left + 230, 38), font, 0.45, (200, 110, 20), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=positive, default=20.0)
    parser.add_argument("--size", type=frame_size, default="640x480", help="camera WIDTHxHEIGHT")
    parser.add_argument("--torch-latency", type=positive, default=0.7, help="s per lite 256^2 forward, torch")
    parser.add_argument("--openvino-latency", type=positive, default=0.17, help="s per forward, OpenVINO")
    parser.add_argument("--measure", action="store_true", help="time the real lite 256^2 torch forward")
    parser.add_argument("--plots", default=None, help="folder for one PNG per timing")
    parser.add_argument(
        "--exposure",
        type=positive,
        default=1.0,
        metavar="GAIN",
        help="the camera's brightness swings to GAIN x and back every 8 s (e.g. 1.3; default steady)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a propagation setting, e.g. flow_width=160",
    )
    args = parser.parse_args()
    torch_latency = args.torch_latency
    if args.measure:
        torch_latency = measure_lite()
        print(
            f"lite 256^2 torch forward, measured: {torch_latency:.3f} s ({torch.get_num_threads()} threads)"
        )
    # One thread for the rest: the propagation's cost per frame is quoted for one core.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    size = args.size
    try:
        if not all("=" in kv for kv in args.set):
            raise ConfigError(f"--set {args.set}: expected KEY=VALUE, e.g. flow_width=160")
        params = build_params(PropagationParams, dict(kv.split("=", 1) for kv in args.set), "propagation")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    timings = [
        Timing("cpu-torch", torch_latency, 30.0),
        Timing("cpu-openvino", args.openvino_latency, 30.0),
        Timing("gpu-like", 0.040, 60.0, keyframe_every=2),
    ]
    runs = evaluate(timings, args.seconds, size, params, exposure=args.exposure)
    changed = ", ".join(args.set) or "defaults"
    light = "steady" if args.exposure == 1.0 else f"swinging to {args.exposure:g}x every 8 s"
    print(
        f"camera {size[0]}x{size[1]}, {args.seconds:g} s, exposure {light}, propagation {changed} (flow width {params.flow_width})"
    )
    header = (
        f"{'timing':<13} {'net ms':>6} {'fps':>4} {'lag':>3} {'key Hz':>6} {'MAD a':>7} {'MAD b':>7} "
        f"{'edge a':>7} {'edge b':>7} {'change':>7} {'worst a':>7} {'worst b':>7} {'step ms p50/p95':>15} {'cuts':>4}"
    )
    print(header)
    ok = True
    for run in runs:
        t, a, b = run.timing, run.a, run.b
        change = (b.edge_mad - a.edge_mad) / a.edge_mad
        p50, p95 = np.percentile(run.step_ms, [50, 95])
        print(
            f"{t.name:<13} {t.latency * 1000:>6.0f} {t.fps:>4g} {run.network.lag:>3} {len(run.network.results) / args.seconds:>6.2f} "
            f"{np.mean(a.mad):>7.4f} {np.mean(b.mad):>7.4f} {a.edge_mad:>7.4f} {b.edge_mad:>7.4f} "
            f"{change:>+7.1%} {max(a.mad):>7.4f} {max(b.mad):>7.4f} {p50:>7.2f}/{p95:<7.2f} {run.propagated.cuts:>4}"
        )
        ok &= change <= -0.40 and np.mean(b.mad) <= np.mean(a.mad) and max(b.mad) <= max(a.mad)
        if args.plots:
            suffix = "".join(f"_{kv.replace('=', '')}" for kv in args.set)
            suffix += f"_exposure{args.exposure:g}" if args.exposure != 1.0 else ""
            plot(run, Path(args.plots) / f"eval_live_{t.name}{suffix}.png")
    print("target (moving-edge MAD -40%, MAD and worst frame not worse):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
