"""Model-only BiRefNet throughput and peak memory; prints a markdown table.

Each configuration runs in a fresh child process, so that its peak RSS (CPU) or
max_memory_allocated (CUDA) belongs to that configuration alone. Weights are the deterministic
recipe weights (same speed as the official ones; nothing is downloaded). Inputs are already
normalised tensors on the device: pre/post-processing is not timed.

    python scripts/bench_model.py                      # CPU fp32, lite+portrait at 256/512/1024
    python scripts/bench_model.py --device cuda        # CUDA fp16/bf16: eager, CUDA graph, compiled
    python scripts/bench_model.py --device cuda --modes graph --dtypes float16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Official FLOPs of one forward (spec.md section 10), in GFLOP, at 512^2 and 1024^2.
GFLOP = {"portrait": {512: 670.1, 1024: 2534.9}, "lite": {512: 164.2, 1024: 642.0}}


def gflop(variant: str, size: int) -> float:
    table = GFLOP["portrait" if variant == "general" else variant]
    if size in table:
        return table[size]
    return table[512] * (size * size) / (512 * 512)  # scaled by pixel count


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(cfg: dict) -> dict:
    """Runs in the child: build, warm up, time `repeats` forwards (stopping early past `budget` s)."""
    import torch

    from streamer.engine import DTYPES
    from streamer.model import build_model
    from streamer.model.graphed import GraphedForward
    from streamer.model.recipe import make_state_dict

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    dtype = DTYPES[cfg["dtype"]]
    with torch.device("meta"):
        model = build_model(cfg["variant"])
    model.load_state_dict(make_state_dict(cfg["variant"]), strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval()
    x = torch.randn(1, 3, cfg["size"], cfg["size"], generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=dtype)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if cfg["mode"] == "compile":
        model = torch.compile(model)
    elif cfg["mode"] == "graph":
        model = GraphedForward(model)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(cfg["warmup"]):
            model(x)
        sync()
        first = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(cfg["repeats"]):
            t = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t)
            if sum(times) > cfg["budget"]:
                break
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mib()
    return {"times": times, "warmup_s": first, "peak_mib": peak, "threads": torch.get_num_threads()}


def configs(args) -> list[dict]:
    base = {"warmup": args.warmup, "repeats": args.repeats, "budget": args.budget, "threads": args.threads}
    cpu = args.device == "cpu"
    dtypes = args.dtypes or (["float32"] if cpu else ["float16", "bfloat16"])
    modes = args.modes or (["eager"] if cpu else ["eager", "graph", "compile"])
    return [
        base | {"variant": v, "size": s, "device": args.device, "dtype": dt, "mode": mode}
        for v in args.variants
        for s in args.sizes
        for dt in dtypes
        for mode in modes
    ]


def run_child(cfg: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(cfg)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = os.environ | {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(cfg: dict, res: dict) -> str:
    label = f"| {cfg['variant']} | {cfg['size']}² | {cfg['device']} | {cfg['dtype']} | {cfg['mode']} |"
    if "error" in res:
        return f"{label} error: {res['error']} | | | | | |"
    median = statistics.median(res["times"])
    spread = f"{min(res['times']):.3f}–{max(res['times']):.3f}"
    achieved = gflop(cfg["variant"], cfg["size"]) / median
    return (
        f"{label} {median:.3f} | {spread} ({len(res['times'])}) | {1 / median:.2f} | {achieved:.0f} "
        f"| {res['peak_mib']:.0f} | {res['warmup_s']:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N")
    parser.add_argument("--variants", nargs="+", default=["lite", "portrait"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024])
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float32", "float16", "bfloat16"],
        help="default: float32 on CPU, float16 and bfloat16 on CUDA",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["eager", "graph", "compile"],
        help="graph = CUDA graph replay; default: eager on CPU, all three on CUDA",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards at most")
    parser.add_argument("--budget", type=float, default=30.0, help="stop timing a config after this many s")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per configuration, seconds")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; cpus: {os.cpu_count()}")
    print(
        "| variant | input | device | dtype | mode | s/forward (median) | min–max (n) | frames/s "
        "| GFLOP/s | peak MiB | warm-up s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cfg in configs(args):
        print(row(cfg, run_child(cfg, args.timeout)), flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("peak MiB: peak RSS of the whole process on CPU; torch.cuda.max_memory_allocated on CUDA.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
