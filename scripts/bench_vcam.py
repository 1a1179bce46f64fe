"""Virtual camera sink costs: per-frame conversion in `write`, and pacing through the fake device.

    python scripts/bench_vcam.py [--repeat 20] [--pacing-seconds 3]

The pacing part mounts tests/fake_v4l2.py (needs /dev/fuse and libfuse2) and feeds a 30 fps
camera from 5 fps writes, reporting the delivered rate and the jitter of the gaps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from streamer.frame import Frame
from streamer.sinks.vcam import VcamParams, VcamSink, encode, fit_to, to_rgb

ROOT = Path(__file__).resolve().parent.parent


def conversion_rows(repeat: int) -> list[tuple[str, str, str, float]]:
    rng = np.random.default_rng(0)
    inputs = {
        "rgb 1280x720": rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8),
        "rgba 1280x720": rng.integers(0, 256, (720, 1280, 4), dtype=np.uint8),
        "matte 1280x720": rng.integers(0, 256, (720, 1280, 1), dtype=np.uint8),
        "rgb 1920x1080": rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8),
    }
    rows = []
    for label, image in inputs.items():
        for fmt in ("rgb", "i420", "yuyv", "gray"):
            start = time.perf_counter()
            for _ in range(repeat):
                encode(fit_to(to_rgb(image, (0, 0, 0)), 1280, 720, "cover", (0, 0, 0)), fmt)
            ms = (time.perf_counter() - start) / repeat * 1000
            rows.append((label, "1280x720", fmt, ms))
    return rows


def pacing(seconds: float) -> tuple[float, float, float, float] | None:
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_v4l2 import FakeV4l2Device, fuse_missing_reason

    if fuse_missing_reason():
        return None
    image = np.zeros((720, 1280, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp, FakeV4l2Device(Path(tmp)) as device:
        sink = VcamSink(VcamParams(width=1280, height=720, fps=30, device=device.device))
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            image[:] = i % 256
            sink.write(Frame(torch.from_numpy(image), i, Fraction(1, 5), i, time.monotonic(), output=None))
            i += 1
            time.sleep(0.2)
        sink.close()
        stamps = np.array([t for _, t in device.frames(1280 * 720 * 3 // 2)])
    gaps = np.diff(stamps) * 1000
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return rate, float(np.median(gaps)), float(np.percentile(gaps, 95)), float(gaps.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--pacing-seconds", type=float, default=3.0)
    args = parser.parse_args()
    print("| input | camera | fmt | write() conversion ms/frame |")
    print("| --- | --- | --- | --- |")
    for label, camera, fmt, ms in conversion_rows(args.repeat):
        print(f"| {label} | {camera} | {fmt} | {ms:.1f} |")
    result = pacing(args.pacing_seconds)
    if result is None:
        print("\npacing: skipped (no FUSE)")
        return
    rate, median, p95, worst = result
    print("\n| camera | writes | delivered fps | median gap ms | p95 gap ms | max gap ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| 1280x720 rgb @ 30 fps (fake v4l2 over FUSE) | 5 fps | {rate:.2f} | {median:.1f} | {p95:.1f} | {worst:.1f} |"
    )


if __name__ == "__main__":
    main()
