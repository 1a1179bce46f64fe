"""`streamer batch` on this machine: 1 worker against 2, and a split long clip against an unsplit one.

Runs the real command (`python -m streamer batch`, a local Ray instance) on clips it makes,
lite network at 256x256 with recipe weights (speed does not depend on the weights' values),
one torch thread per worker. Runs alternate (1, 2, 1, 2, ...) so load drifts hit both alike.
Each figure is the report's work time: from every worker holding its model to the last
output renamed into place; Ray's start and the model loading are reported apart.

Targets: 8 short clips on 2 workers >= 1.7x one worker. Inside `unshare -n -p -f` when run as
root, so Ray binds loopback only and every process it starts ends with the run. Usage:
    flock /tmp/bench.lock python scripts/bench_batch.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safetensors.torch import save_file  # noqa: E402

from streamer.model.recipe import make_state_dict  # noqa: E402
from tests.media import make_clip  # noqa: E402

LONG_OPTIONS = {"preset": "ultrafast", "g": "6", "keyint_min": "6", "sc_threshold": "0"}


def batch(inputs: list[Path], out: Path, weights: Path, workers: int, extra: list[str]) -> dict:
    report = out.with_suffix(".json")
    command = [sys.executable, "-m", "streamer", "batch", *map(str, inputs), "-o", str(out)]
    command += ["--variant", "lite", "--size", "256x256", "--weights", str(weights), "--device", "cpu"]
    command += ["--workers", str(workers), "--cpus-per-worker", "1", "--no-progress", "--report", str(report)]
    command += extra
    # Ray's token authentication with the token in the environment, not written to ~/.ray.
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if os.geteuid() == 0:
        env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: socket paths stop at 107 bytes
        inner = "ip link set lo up && " + shlex.join(command)
        command = ["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", inner]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    finally:
        if "RAY_TMPDIR" in env:
            shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"batch failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(report.read_text())
    result["command_seconds"] = wall
    return result


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=6, help="frames per short clip")
    parser.add_argument("--long-frames", type=int, default=36)
    parser.add_argument("--segment-frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--long-repeats", type=int, default=1)
    parser.add_argument("--skip-long", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        tmp = Path(tmp)
        weights = tmp / "lite.safetensors"
        save_file(make_state_dict("lite"), str(weights))
        shorts = [
            make_clip(tmp / f"clip{i}.mp4", frames=args.frames, size=(320, 240), fps=25)
            for i in range(args.clips)
        ]
        long = make_clip(
            tmp / "long.mp4", frames=args.long_frames, size=(320, 240), fps=10, options=LONG_OPTIONS
        )
        print(f"machine: {os.cpu_count()} CPUs; {load()}")
        print(
            f"short clips: {args.clips} x {args.frames} frames 320x240, lite at 256x256, 1 torch thread a worker"
        )
        runs = {1: [], 2: []}
        for r in range(args.repeats):
            for workers in (1, 2):
                out = tmp / f"short-{workers}-{r}"
                res = batch(shorts, out, weights, workers, [])
                fps = res["frames"] / res["work_seconds"]
                runs[workers].append(fps)
                busy = sum(c["seconds"] for c in res["clips"])
                # Worker time not spent inside a clip: dispatch, result and progress round trips, the tail.
                idle = (workers * res["work_seconds"] - busy) / len(res["clips"])
                print(
                    f"  {workers} worker(s): {res['frames']} frames in {res['work_seconds']:.1f} s = {fps:.3f} fps;"
                    f" per worker {res['frames'] / busy:.3f} fps inside clips; idle per clip {idle:.2f} s;"
                    f" probe {res['probe_seconds']:.1f} s, startup {res['startup_seconds']:.1f} s,"
                    f" whole command {res['command_seconds']:.1f} s; {load()}"
                )
        best = {w: max(v) for w, v in runs.items()}
        print(
            f"speed-up 2 vs 1 workers (best of {args.repeats} each): {best[2] / best[1]:.2f}x (target >= 1.7x)"
        )
        if args.skip_long:
            return
        print(
            f"long clip: {args.long_frames} frames at 10 fps, keyframe every 6, --segment-frames {args.segment_frames}"
        )
        for r in range(args.long_repeats):
            for workers, extra in (
                (1, ["--segment-frames", str(10**6)]),
                (2, ["--segment-frames", str(args.segment_frames)]),
            ):
                out = tmp / f"long-{workers}-{r}"
                res = batch([long], out, weights, workers, extra)
                clip = res["clips"][0]
                what = "unsplit, 1 worker" if workers == 1 else f"{clip['segments']} segments, 2 workers"
                print(f"  {what}: {res['work_seconds']:.1f} s ({clip['frames']} frames written; {load()})")


if __name__ == "__main__":
    main()
