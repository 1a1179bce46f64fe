"""The torch CPU path before and after its CPU kernels, interleaved in one process; markdown tables.

"old" is torchvision's `deform_conv2d`, a 5-D SDPA call in the window attention and torch's GEMM
for the backbone's linear layers (what the model ran before and still runs on CUDA); "new" is the
gathered deformable convolution (`streamer/model/deform.py`, where `use_gather` picks it) and 4-D
SDPA; "+ oneDNN linear" adds the backbone's linear layers as oneDNN 1x1 convolutions (all three
are the CPU default now). Three parts:

1. every deformable-convolution shape of the model (64 -> 256 channels, k = 1, 3, 7, maps 8..128):
   torchvision vs gathered, fp32 (and the gathered one in bf16 with `--dtypes ... bfloat16`);
2. window attention of the first Swin stage (lite and portrait), shifted and not: 5-D vs 4-D SDPA;
3. the whole network (recipe weights) at the given sizes: old fp32, new fp32 (with
   `--onednn-linear` also new fp32 + oneDNN linear), new bf16 (all CPU kernels on), with the
   largest sigmoid difference from old fp32.

Each round runs every contender once in turn; medians over rounds. Run it alone:

    flock /tmp/bench.lock python scripts/bench_torch_cpu.py
    flock /tmp/bench.lock python scripts/bench_torch_cpu.py --parts model --models lite:512
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.model import blocks, build_model, swin  # noqa: E402
from streamer.model.deform import deform_conv2d_gather  # noqa: E402
from streamer.model.recipe import make_state_dict  # noqa: E402


@contextmanager
def old_kernels():
    saved = blocks.GATHER_ON_CPU, swin.FUSED_CPU_ATTENTION, swin.ONEDNN_CPU_LINEAR
    blocks.GATHER_ON_CPU = swin.FUSED_CPU_ATTENTION = swin.ONEDNN_CPU_LINEAR = False
    try:
        yield
    finally:
        blocks.GATHER_ON_CPU, swin.FUSED_CPU_ATTENTION, swin.ONEDNN_CPU_LINEAR = saved


@contextmanager
def linear_via(onednn: bool):
    saved = swin.ONEDNN_CPU_LINEAR
    swin.ONEDNN_CPU_LINEAR = onednn
    try:
        yield
    finally:
        swin.ONEDNN_CPU_LINEAR = saved


def interleaved(contenders: dict, rounds: int, budget: float) -> dict[str, list[float]]:
    """contender name -> seconds per call; each contender runs once per round, after one warm-up."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    with torch.inference_mode():
        for fn in contenders.values():
            fn()
        start = time.perf_counter()
        for _ in range(rounds):
            for name, fn in contenders.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
            if time.perf_counter() - start > budget:
                break
    return times


def med(ts: list[float]) -> float:
    return statistics.median(ts)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def bench_deform(args) -> None:
    from torchvision.ops import deform_conv2d

    print("\n### Deformable convolution, 64 -> 256 channels (ms per call, median)\n")
    bf16 = "bfloat16" in args.dtypes
    head = "| k | map | torchvision fp32 | gathered fp32 | speed-up | max abs diff |"
    head += " gathered bf16 | bf16 speed-up |" if bf16 else ""
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    g = torch.Generator().manual_seed(0)
    for k in (1, 3, 7):
        for s in args.maps:
            x = torch.randn(1, 64, s, s, generator=g)
            offset = 2 * torch.randn(1, 2 * k * k, s, s, generator=g)
            mask = 2 * torch.rand(1, k * k, s, s, generator=g)
            weight = torch.randn(256, 64, k, k, generator=g) / (8 * k)
            fp32 = (x, offset, weight, mask)
            lo = tuple(t.bfloat16() for t in fp32)
            contenders = {
                "tv": lambda a=fp32, p=k // 2: deform_conv2d(*a[:3], padding=p, mask=a[3]),
                "gather": lambda a=fp32, p=k // 2: deform_conv2d_gather(*a, p),
            }
            if bf16:
                contenders["bf16"] = lambda a=lo, p=k // 2: deform_conv2d_gather(*a, p)
            rounds = args.rounds * (4 if s * s * k * k < 64 * 64 * 9 else 1)
            t = interleaved(contenders, rounds, args.budget)
            with torch.inference_mode():
                diff = (contenders["tv"]() - contenders["gather"]()).abs().max().item()
            line = (
                f"| {k} | {s}² | {med(t['tv']) * 1e3:.2f} | {med(t['gather']) * 1e3:.2f} "
                f"| {med(t['tv']) / med(t['gather']):.2f}x | {diff:.1e} |"
            )
            if bf16:
                line += f" {med(t['bf16']) * 1e3:.2f} | {med(t['tv']) / med(t['bf16']):.2f}x |"
            print(line, flush=True)


def bench_attention(args) -> None:
    print("\n### Window attention, first Swin stage at 256² (ms per call, median)\n")
    print("| model | windows x tokens | shifted | 5-D SDPA | 4-D SDPA | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    # (name, dim, heads, window, padded side of the 64x64 token map)
    for name, dim, heads, window, side in (("lite", 96, 3, 7, 70), ("portrait", 192, 6, 12, 72)):
        attn = swin.WindowAttention(dim, heads, window).eval()
        nw = (side // window) ** 2
        x = torch.randn(1, nw, window * window, dim)
        for shifted in (False, True):
            mask = (
                swin.make_shift_mask(side, side, window, window // 2, x.device, x.dtype) if shifted else None
            )

            def old(attn=attn, x=x, mask=mask):
                with old_kernels():
                    return attn(x, mask)

            contenders = {"old": old, "new": lambda attn=attn, x=x, mask=mask: attn(x, mask)}
            t = interleaved(contenders, args.rounds * 4, args.budget)
            with torch.inference_mode():
                diff = (old() - contenders["new"]()).abs().max().item()
            print(
                f"| {name} | {nw} x {window * window} | {'yes' if shifted else 'no'} "
                f"| {med(t['old']) * 1e3:.2f} | {med(t['new']) * 1e3:.2f} "
                f"| {med(t['old']) / med(t['new']):.2f}x | {diff:.1e} |",
                flush=True,
            )


def bench_model(args) -> None:
    print("\n### Whole network, recipe weights (s per forward: median, min)\n")
    cols = ["old fp32", "new fp32"] + (["new fp32 + oneDNN linear"] if args.onednn_linear else [])
    cols += ["new bf16"] if "bfloat16" in args.dtypes else []
    head = "| model | input | " + " | ".join(cols) + " | " + " | ".join(f"{c} speed-up" for c in cols[1:])
    head += " | max sigmoid diff (" + " / ".join(cols[1:]) + ") |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    models = {}
    for spec in args.models:
        variant, size = spec.split(":")
        if variant not in models:
            with torch.device("meta"):
                model = build_model(variant)
            model.load_state_dict(make_state_dict(variant), strict=True, assign=True)
            models[variant] = model.eval()
        model = models[variant]
        low = copy.deepcopy(model).to(torch.bfloat16) if "bfloat16" in args.dtypes else None
        h, w = (int(v) for v in size.split("x")) if "x" in size else (int(size), int(size))
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))

        def old(model=model, x=x):
            with old_kernels():
                return model(x)

        def onednn(model=model, x=x):
            with linear_via(True):
                return model(x)

        def new(model=model, x=x):
            with linear_via(False):
                return model(x)

        contenders = {"old fp32": old, "new fp32": new}
        if args.onednn_linear:
            contenders["new fp32 + oneDNN linear"] = onednn
        if low is not None:
            contenders["new bf16"] = lambda low=low, x=x: low(x.bfloat16()).float()
        t = interleaved(contenders, args.model_rounds, args.model_budget)
        with torch.inference_mode():
            ref = torch.sigmoid(old())
            diffs = [(torch.sigmoid(contenders[c]()) - ref).abs().max().item() for c in cols[1:]]
        base = med(t["old fp32"])
        line = f"| {variant} | {h}x{w} (n={len(t['old fp32'])}) | "
        line += " | ".join(f"{med(t[c]):.3f}, {min(t[c]):.3f}" for c in cols)
        line += " | " + " | ".join(f"{base / med(t[c]):.2f}x" for c in cols[1:])
        line += " | " + " / ".join(f"{d:.1e}" for d in diffs) + " |"
        print(line, flush=True)
        del low


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["deform", "attention", "model"], default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"]
    )
    parser.add_argument("--maps", nargs="+", type=int, default=[8, 16, 32, 64, 128])
    parser.add_argument("--models", nargs="+", default=["lite:256", "lite:512", "portrait:256"])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per operator shape")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per operator shape at most")
    parser.add_argument(
        "--onednn-linear",
        action="store_true",
        help="also time the backbone's linear layers as 1x1 convolutions",
    )
    parser.add_argument("--model-rounds", type=int, default=4)
    parser.add_argument("--model-budget", type=float, default=120.0, help="seconds per model size at most")
    args = parser.parse_args()
    parts = args.parts or ["deform", "attention", "model"]
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), {torch.backends.cpu.get_cpu_capability()}; "
        f"load average before: {load()}"
    )
    for part in parts:
        {"deform": bench_deform, "attention": bench_attention, "model": bench_model}[part](args)
    print(f"\nload average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
