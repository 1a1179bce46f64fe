"""Our network on the CPU (OpenVINO default and exact paths, torch) against the official BiRefNet code.

The official code is not part of this project: fetch it yourself and give its folder, e.g.

    git clone https://github.com/ZhengPeng7/BiRefNet /tmp/BiRefNet   # needs einops, kornia, timm
    flock /tmp/bench.lock python scripts/bench_vs_official.py --official /tmp/BiRefNet

Both networks hold the same recipe weights (recipe.md) and run in one process, interleaved
call by call, on the same thread count. Ours runs in the official (einops) patch order here so
that the outputs are comparable; the order does not change the work. Targets (issue 11): the
default CPU path >= 3.5x the official fp32 forward at lite 256, lite 512 and portrait 512, sigmoid
within 1e-2 of fp32; the exact path (OpenVINO f32) >= 2x, within 1e-4. `--fixtures` also checks
both OpenVINO paths against every golden fixture in tests/data (legacy patch order).

Columns: median and minimum seconds per forward, frames/s, speed-up over the official code's
median, the largest sigmoid difference from the official output on the same input (without the
official code: from our torch output, else from the exact path), the
conversion time (OpenVINO, both paths share one conversion), and memory: the process's peak RSS
sampled during the runner's calls minus its RSS just before (what the forward itself needs; all
models stay loaded side by side; for OpenVINO plus what its compiled network holds, which it
allocates when compiling), and the process's peak while converting.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamer.backends.openvino import OpenVINOForward, cpu_has_bf16  # noqa: E402
from streamer.model import build_model  # noqa: E402
from streamer.model.recipe import make_state_dict  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
BACKBONES = {"lite": ("swin_v1_t", [768, 384, 192, 96]), "portrait": ("swin_v1_l", [1536, 768, 384, 192])}
TARGETS = {"default": (3.5, 1e-2), "exact": (2.0, 1e-4)}
TARGET_CASES = {("lite", 256), ("lite", 512), ("portrait", 512)}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRSS:
    """Samples the process's RSS every 5 ms while active: the peak of what is inside the block."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def official_model(folder: Path, variant: str, state: dict) -> torch.nn.Module:
    """The official BiRefNet of `variant`, built from its own config with the backbone swapped."""
    sys.path.insert(0, str(folder))
    import config as official_config

    bb, lateral = BACKBONES[variant]
    original = getattr(official_config.Config, "_streamer_original_init", official_config.Config.__init__)
    official_config.Config._streamer_original_init = original

    def init(self) -> None:
        original(self)
        self.bb = bb
        self.lateral_channels_in_collection = [2 * c for c in lateral]  # mul_scl_ipt == 'cat'
        self.cxt = self.lateral_channels_in_collection[1:][::-1][-self.cxt_num :] if self.cxt_num else []

    official_config.Config.__init__ = init
    from models.birefnet import BiRefNet

    model = BiRefNet(bb_pretrained=False).eval()
    model.load_state_dict(state, strict=True)
    return model


def our_model(variant: str, state: dict, order: str) -> torch.nn.Module:
    model = build_model(variant, patch_order=order)
    model.load_state_dict(state, strict=True)
    return model.eval()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def bench_case(args, variant: str, size: int, official_dir: Path | None) -> list[dict]:
    state = make_state_dict(variant)
    ours = our_model(variant, state, "einops")
    runners: dict[str, callable] = {}
    official = None
    with_official = official_dir is not None and size <= args.official_max
    if with_official:
        official = official_model(official_dir, variant, state)
        runners["official fp32"] = lambda x, m=official: m(x)[-1]
    if size <= args.torch_max:
        runners["ours torch fp32"] = ours
    info: dict[str, dict] = {}
    cache = tempfile.mkdtemp(prefix="bench-ov-", dir=args.cache_dir)
    for name, dtype in (("ours openvino default", "auto"), ("ours openvino exact", "float32")):
        forward = OpenVINOForward(ours, variant, dtype, args.threads, Path(cache), notify=lambda _: None)
        started = time.monotonic()
        gc.collect()
        before = rss_mb()
        with PeakRSS() as peak:
            forward.prepare(1, (size, size))
        info[name] = {
            "held_mb": rss_mb() - before,
            "prepare_s": time.monotonic() - started,
            "convert_peak_mb": peak.peak,
            "precision": forward.precision,
        }
        runners[name] = forward
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    outputs: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {name: [] for name in runners}
    extra: dict[str, float] = dict.fromkeys(runners, 0.0)
    with torch.inference_mode():
        for name, run in runners.items():  # warm-up, and the outputs compared below
            outputs[name] = run(x).float().numpy()
        for _ in range(args.repeat):
            for name, run in runners.items():
                gc.collect()
                before = rss_mb()
                with PeakRSS() as peak:
                    started = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - started)
                extra[name] = max(extra[name], peak.peak - before)
    # Without the official code or torch, differences are taken from the exact path instead.
    reference = next(
        outputs[n] for n in ("official fp32", "ours torch fp32", "ours openvino exact") if n in outputs
    )
    base = statistics.median(times["official fp32"]) if "official fp32" in times else None
    rows = []
    for name in runners:
        median = statistics.median(times[name])
        rows.append(
            {
                "case": f"{variant} {size}²",
                "runner": name + (f" ({info[name]['precision']})" if name in info else ""),
                "median": median,
                "min": min(times[name]),
                "fps": 1 / median,
                "ratio": base / median if base else None,
                "diff": float(np.abs(sigmoid(outputs[name]) - sigmoid(reference)).max()),
                "prepare_s": info.get(name, {}).get("prepare_s"),
                "forward_mb": extra[name] + info.get(name, {}).get("held_mb", 0.0),
                "convert_peak_mb": info.get(name, {}).get("convert_peak_mb"),
                "target": target(name, variant, size, base, median, outputs[name], reference),
            }
        )
    del runners, official, ours
    shutil.rmtree(cache, ignore_errors=True)
    gc.collect()
    return rows


def target(name, variant, size, base, median, output, reference) -> str:
    kind = "default" if "default" in name else "exact" if "exact" in name else None
    if kind is None or (variant, size) not in TARGET_CASES or base is None:
        return ""
    speed, bound = TARGETS[kind]
    diff = float(np.abs(sigmoid(output) - sigmoid(reference)).max())
    ok = base / median >= speed and diff <= bound
    return f"{'met' if ok else 'MISSED'} (>= {speed}x, <= {bound:g})"


def fixture_rows(args) -> list[str]:
    """Both OpenVINO paths against every golden fixture (the official outputs, legacy order)."""
    lines = []
    models: dict[str, torch.nn.Module] = {}
    cache = Path(tempfile.mkdtemp(prefix="bench-ov-fixtures-", dir=args.cache_dir))
    for path in sorted(DATA.glob("fixture-*.npz")):
        variant = path.stem.split("-")[1]
        with np.load(path) as f:
            x, pred = torch.from_numpy(f["input"]), f["pred_legacy_patch_order"]
        if variant not in models:
            models[variant] = our_model(variant, make_state_dict(variant), "legacy")
        for kind, dtype, bound in (("default", "auto", 1e-2), ("exact", "float32", 1e-4)):
            forward = OpenVINOForward(
                models[variant], variant, dtype, args.threads, cache, notify=lambda _: None
            )
            diff = float(np.abs(sigmoid(forward(x).numpy()) - pred).max())
            verdict = "met" if diff <= bound else "MISSED"
            lines.append(
                f"| {path.stem} | {kind} ({forward.precision}) | {diff:.2e} | {verdict} (<= {bound:g}) |"
            )
    shutil.rmtree(cache, ignore_errors=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="folder of the official BiRefNet code (git clone)")
    parser.add_argument("--cases", default="lite:256,lite:512,portrait:256,portrait:512")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--official-max", type=int, default=1024, help="largest size to run the official code at"
    )
    parser.add_argument("--torch-max", type=int, default=1024, help="largest size to run our torch path at")
    parser.add_argument("--fixtures", action="store_true", help="also check every golden fixture")
    parser.add_argument("--cache-dir", help="where the conversions go (a fresh temporary folder per case)")
    args = parser.parse_args()
    if args.official is not None and not (args.official / "models" / "birefnet.py").is_file():
        parser.error(
            f"--official {args.official}: no models/birefnet.py there (clone the official repo into it)"
        )
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(
        f"# bench_vs_official: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, ",
        end="",
    )
    import openvino as ov

    print(
        f"openvino {ov.__version__}, CPU bf16: {cpu_has_bf16()}, {args.threads} threads, repeat {args.repeat}"
    )
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print(
        "| case | runner | median s | min s | frames/s | vs official | max sigmoid diff | convert+compile s (exact: compile only) | forward extra MB (OpenVINO: + compiled) | peak RSS while converting MB | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in filter(None, args.cases.split(",")):
        variant, size = case.split(":")
        for row in bench_case(args, variant, int(size), args.official):

            def num(v, fmt):
                return "" if v is None else format(v, fmt)

            print(
                f"| {row['case']} | {row['runner']} | {row['median']:.3f} | {row['min']:.3f} | {row['fps']:.2f} | "
                f"{num(row['ratio'], '.2f')} | {row['diff']:.1e} | {num(row['prepare_s'], '.1f')} | "
                f"{row['forward_mb']:.0f} | {num(row['convert_peak_mb'], '.0f')} | {row['target']} |",
                flush=True,
            )
    if args.fixtures:
        print("\n| fixture | OpenVINO path | max sigmoid diff | bound |\n|---|---|---|---|")
        for line in fixture_rows(args):
            print(line, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nprocess peak RSS {peak:.0f} MB; load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
