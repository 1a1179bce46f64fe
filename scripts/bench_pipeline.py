"""End-to-end file throughput against model-only throughput and against a naive loop.

All three run the same clip with the same engine settings (recipe weights: the speed of the
network does not depend on the values of its weights):

- model only: the frames are decoded into memory first, then only `engine.predict` is timed;
- pipeline: `streamer run`'s Pipeline (decode, infer, smooth, composite, encode in their own
  threads, bounded queues);
- naive: decode, infer, smooth, composite, encode one after another in one thread.

Target: pipeline >= 0.9 x model only. Usage:
    python scripts/bench_pipeline.py --variant lite --size 256 --frames 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from safetensors.torch import save_file  # noqa: E402
from script_args import count, frame_size, network_size  # noqa: E402

from streamer.compose.compositor import CompositeParams, Compositor, to_uint8  # noqa: E402
from streamer.compose.foreground_tiles import estimate_foreground_u8  # noqa: E402
from streamer.engine import EngineParams, MattingEngine  # noqa: E402
from streamer.errors import ConfigError, StreamerError  # noqa: E402
from streamer.model import VARIANTS  # noqa: E402
from streamer.model.recipe import make_state_dict  # noqa: E402
from streamer.pipeline.runner import Pipeline  # noqa: E402
from streamer.pipeline.stages import Finisher, FinishStage, InferStage  # noqa: E402
from streamer.sinks.open import open_sink  # noqa: E402
from streamer.smoothing import SmoothingParams, TemporalSmoother  # noqa: E402
from streamer.sources.open import open_source  # noqa: E402
from tests.media import make_clip  # noqa: E402


def batches(items, size):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def model_only(engine, clip: Path, batch: int) -> float:
    source = open_source(str(clip))
    images = [f.image for f in source.frames()]
    source.close()
    engine.predict(torch.stack(images[:batch]))  # warm-up
    start = time.perf_counter()
    for group in batches(images, batch):
        engine.predict(torch.stack(group))
    return len(images) / (time.perf_counter() - start)


def pipeline(engine, clip: Path, out: Path, batch: int, composite: CompositeParams) -> tuple[float, object]:
    source = open_source(str(clip))
    sink = open_sink(str(out), info=source.info, overwrite=True)
    stages = [
        InferStage(engine),
        FinishStage(
            Finisher(TemporalSmoother(SmoothingParams(), engine.device), Compositor(composite, engine.device))
        ),
    ]
    pipe = Pipeline(source, stages, [sink], live=False, batch_size=batch)
    start = time.perf_counter()
    stats = asyncio.run(pipe.run())
    return stats.frames_out[0] / (time.perf_counter() - start), stats


def naive(engine, clip: Path, out: Path, composite: CompositeParams, steps: dict[str, list[float]]) -> float:
    """One frame after another in one thread; each step's seconds per frame go into `steps`."""
    source = open_source(str(clip))
    sink = open_sink(str(out), info=source.info, overwrite=True)
    smoother = TemporalSmoother(SmoothingParams(), engine.device)
    compositor = Compositor(composite, engine.device)
    frames = iter(source.frames())

    def now() -> float:  # a GPU step's time is only known once the device has finished it
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        return time.perf_counter()

    start = time.perf_counter()
    count = 0
    while True:
        t0 = time.perf_counter()
        frame = next(frames, None)
        if frame is None:
            break
        t1 = now()
        alpha = engine.predict(frame.image)
        t2 = now()
        frame.alpha = smoother(alpha, frame.image, frame.time)
        t3 = now()
        frame.output = compositor(frame.image, frame.alpha, frame.time)
        t4 = now()
        sink.write(frame)
        t5 = now()
        for name, seconds in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            steps[name].append(seconds)
        if composite.refine_foreground:  # timed again on its own: it is part of compositing above
            pixels = np.ascontiguousarray(frame.image.numpy())
            a8 = to_uint8(frame.alpha.clamp(0, 1)).numpy()
            t6 = time.perf_counter()
            estimate_foreground_u8(pixels, a8)
            steps["of which foreground estimation"].append(time.perf_counter() - t6)
        count += 1
    sink.close()
    source.close()
    return count / (time.perf_counter() - start)


STEPS = ("decode", "network (predict)", "smoothing", "compositing", "encode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=tuple(VARIANTS), default="lite")
    parser.add_argument("--size", type=network_size, default="256", help="network input HxW")
    parser.add_argument("--clip", type=frame_size, default="640x360", help="clip size WxH")
    parser.add_argument("--frames", type=count, default=32)
    parser.add_argument("--batch", type=count, default=2)
    parser.add_argument("--mode", default="color", help="composite mode")
    parser.add_argument("--rounds", type=count, default=2, help="alternate the three measurements this often")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--backend", default="auto", help="auto (OpenVINO on the CPU), torch or openvino")
    args = parser.parse_args()
    width, height = args.clip
    size = args.size
    try:  # the config's own checks, before any work
        composite = CompositeParams(mode=args.mode)
        network = EngineParams(variant=args.variant, size=size, device=args.device, backend=args.backend)
    except ConfigError as err:
        parser.error(str(err))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "clip.mp4", frames=args.frames, size=(width, height), fps=30, audio=True)
        weights = tmp / f"{args.variant}.safetensors"
        save_file(make_state_dict(args.variant), str(weights))
        try:
            engine = MattingEngine.from_params(network.model_copy(update={"weights": str(weights)}))
        except StreamerError as err:  # no such device, say
            parser.exit(err.exit_code, f"{parser.prog}: error: {err}\n")
        results: dict[str, list[float]] = {"model only": [], "pipeline": [], "naive loop": []}
        steps: dict[str, list[float]] = {name: [] for name in (*STEPS, "of which foreground estimation")}
        for _ in range(args.rounds):
            results["model only"].append(model_only(engine, clip, args.batch))
            fps, stats = pipeline(engine, clip, tmp / "out.mp4", args.batch, composite)
            results["pipeline"].append(fps)
            results["naive loop"].append(naive(engine, clip, tmp / "naive.mp4", composite, steps))
    best = {name: max(v) for name, v in results.items()}
    print(
        f"\n{args.variant} at {size[0]}x{size[1]}, clip {width}x{height} x {args.frames} frames, "
        f"batch {args.batch}, mode {args.mode}, backend {engine.backend} ({engine.precision}), "
        f"torch threads {torch.get_num_threads()}, best of {args.rounds}"
    )
    print("| run | frames/s | vs model only |")
    print("| --- | --- | --- |")
    for name, fps in best.items():
        print(f"| {name} | {fps:.2f} | {fps / best['model only']:.2f} |")
    print(f"\npipeline / naive loop: {best['pipeline'] / best['naive loop']:.2f}x")
    print(stats.summary())
    print("\nwhere a frame's time goes (naive loop, one step after another; medians)")
    print("| step | ms per frame | share of the frame |")
    print("| --- | --- | --- |")
    total = sum(statistics.median(steps[name]) for name in STEPS)
    for name, values in steps.items():
        if values:
            ms = 1000 * statistics.median(values)
            print(f"| {name} | {ms:.1f} | {ms / 1000 / total:.0%} |")


if __name__ == "__main__":
    main()
