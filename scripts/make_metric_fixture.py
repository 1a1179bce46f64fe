"""Check our metrics path against the official BiRefNet evaluation and store the figures.

    python scripts/make_metric_fixture.py /work/scratch/eval/BiRefNet

The argument is a checkout of github.com/ZhengPeng7/BiRefNet outside this repository (its
`evaluation/metrics.py` is imported from there, never copied). Twenty seeded pairs of
predictions and ground truths (soft and binary, one prediction at another size than its truth,
one constant prediction) are written as PNGs to a temporary folder; both evaluations read the
same files, and the figures (not the code) go to tests/data/metrics-official.json.
Exit status 1 if any metric differs by more than 1e-4.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

SEED = 20240802
COUNT = 20
TOLERANCE = 1e-4
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "metrics-official.json"


def _field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth random field in about -2..2: blobs with curved edges, like a subject's outline."""
    coarse = rng.normal(size=(cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def make_pairs(seed: int = SEED, count: int = COUNT) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, prediction, truth) uint8 grey images; even indices soft, odd ones binary."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(count):
        h, w = (int(v) for v in rng.integers(40, 97, size=2))
        truth_field = _field(rng, h, w, int(rng.integers(3, 7)))
        soft_truth = i % 4 == 0  # matting truths are soft alpha; the evaluation cuts them at 128
        sharp = 3.0 if soft_truth else 50.0
        gt = 127.5 * (1 + np.tanh(sharp * truth_field / 2))  # a logistic curve
        noise = _field(rng, h, w, int(rng.integers(4, 12))) * rng.uniform(0.2, 1.2)
        pred = 0.5 * (1 + np.tanh(rng.uniform(1.0, 8.0) * (truth_field + noise) / 2))
        if i % 2:
            pred = (pred > 0.5).astype(np.float64)
        pred = pred * 255
        if i == 7:
            pred = cv2.resize(pred, (w + 13, h - 9))  # the evaluation resizes it to the truth
        if i == 11:
            pred = np.full_like(pred, 37.0)  # constant: no threshold separates anything
        pairs.append((f"m{i:02d}", np.round(pred).astype(np.uint8), np.round(gt).astype(np.uint8)))
    return pairs


def write_pairs(pairs, folder: Path) -> tuple[list[str], list[str]]:
    (folder / "gt").mkdir(parents=True)
    (folder / "pred").mkdir()
    gts, preds = [], []
    for name, pred, gt in pairs:
        gts.append(str(folder / "gt" / f"{name}.png"))
        preds.append(str(folder / "pred" / f"{name}.png"))
        cv2.imwrite(gts[-1], gt)
        cv2.imwrite(preds[-1], pred)
    return gts, preds


def official_figures(checkout: Path, gts: list[str], preds: list[str]) -> dict[str, float]:
    sys.path.insert(0, str(checkout))
    from evaluation.metrics import evaluator  # type: ignore[import-not-found]

    em, sm, fm, mae, _mse, wfm, hce, _mba, _biou = evaluator(
        gts, preds, metrics=["S", "MAE", "E", "F", "WF", "HCE"], num_workers=1
    )
    return {
        "S": float(sm),
        "maxF": float(fm["curve"].max()),
        "meanE": float(em["curve"].mean()),
        "MAE": float(mae),
        "maxE": float(em["curve"].max()),
        "meanF": float(fm["curve"].mean()),
        "wF": float(wfm),
        "adpE": float(em["adp"]),
        "adpF": float(fm["adp"]),
        "HCE": float(hce),
    }


def our_figures(gts: list[str], preds: list[str]) -> dict[str, float]:
    from streamer.commands.eval import read_matte
    from streamer.evaluate import Evaluation

    evaluation = Evaluation()
    for gt, pred in zip(gts, preds, strict=True):
        evaluation.add(Path(gt).stem, read_matte(Path(pred)), read_matte(Path(gt)))
    return evaluation.summary()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a clone of ZhengPeng7/BiRefNet (outside this repo)")
    args = parser.parse_args()
    if not (args.checkout / "evaluation" / "metrics.py").is_file():
        parser.error(f"{args.checkout}/evaluation/metrics.py not found (clone ZhengPeng7/BiRefNet there)")
    with tempfile.TemporaryDirectory() as tmp:
        gts, preds = write_pairs(make_pairs(), Path(tmp))
        official = official_figures(args.checkout, gts, preds)
        ours = our_figures(gts, preds)
    diff = {k: abs(official[k] - ours[k]) for k in official}
    for key in official:
        print(f"{key:6s} official {official[key]:.6f}  ours {ours[key]:.6f}  |diff| {diff[key]:.2e}")
    FIXTURE.write_text(
        json.dumps(
            {"seed": SEED, "count": COUNT, "tolerance": TOLERANCE, "official": official, "ours": ours},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {FIXTURE}")
    return 0 if max(diff.values()) <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
