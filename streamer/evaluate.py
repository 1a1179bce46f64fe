"""The model card's ten metrics over prediction/ground-truth pairs, computed by pysodmetrics.

Settings follow the official evaluation (BiRefNet `evaluation/metrics.py`): predictions and ground
truths are 8-bit grey images, a prediction is resized to its truth's size with OpenCV's bilinear
`cv2.resize`, the truth is foreground where > 128, F-measure beta^2 = 0.3, weighted F beta = 1,
S-measure alpha = 0.5, E and F curves over 256 thresholds averaged over images, then max / mean.

HCE: pysodmetrics thresholds its min-max-normalised prediction at 0.5, while the official code
thresholds the raw 8-bit prediction at > 128 (the two differ whenever a prediction does not span
0..255). We therefore binarise both images at > 128 ourselves and pass them with
`normalize=False`; the skeleton of the truth is computed by pysodmetrics with the same
`skimage.morphology.skeletonize` the official code uses when no precomputed skeleton file exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import py_sod_metrics as sod

METRICS = (
    ("S", "S-measure"),
    ("maxF", "max F"),
    ("meanE", "mean E"),
    ("MAE", "MAE"),
    ("maxE", "max E"),
    ("meanF", "mean F"),
    ("wF", "weighted F"),
    ("adpE", "adaptive E"),
    ("adpF", "adaptive F"),
    ("HCE", "HCE"),
)
"""(key, label) in the model card's column order (the official `Matting` table order)."""

FOREGROUND = 128
"""Ground truth and HCE binarisation level of the official evaluation (foreground is > 128)."""


def fit_to_truth(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The prediction at the truth's size, as the official evaluation resizes it (cv2 bilinear)."""
    if pred.shape != gt.shape:
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]))
    return pred


def _fmeasure() -> sod.FmeasureV2:
    # FmeasureV2 replaces the deprecated Fmeasure class; same figures (checked by the fixture).
    return sod.FmeasureV2(
        metric_handlers={"fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)}
    )


@dataclass
class Evaluation:
    """Accumulates 8-bit (prediction, truth) pairs; `summary()` gives the ten card metrics."""

    names: list[str] = field(default_factory=list)
    _s: sod.Smeasure = field(default_factory=sod.Smeasure)
    _e: sod.Emeasure = field(default_factory=sod.Emeasure)
    _f: sod.FmeasureV2 = field(default_factory=_fmeasure)
    _wf: sod.WeightedFmeasure = field(default_factory=sod.WeightedFmeasure)
    _mae: sod.MAE = field(default_factory=sod.MAE)
    _hce: sod.HumanCorrectionEffortMeasure = field(default_factory=sod.HumanCorrectionEffortMeasure)

    def add(self, name: str, pred: np.ndarray, gt: np.ndarray) -> None:
        """pred, gt: uint8 (H, W) grey images; pred is resized to gt's size if needed."""
        if pred.dtype != np.uint8 or gt.dtype != np.uint8 or pred.ndim != 2 or gt.ndim != 2:
            raise ValueError(f"{name}: expected 8-bit grey images, got {pred.dtype} {gt.dtype}")
        pred = fit_to_truth(pred, gt)
        for measure in (self._s, self._e, self._f, self._wf, self._mae):
            measure.step(pred=pred, gt=gt)
        self._hce.step(pred=(pred > FOREGROUND).astype(np.float64), gt=gt > FOREGROUND, normalize=False)
        self.names.append(name)

    def __len__(self) -> int:
        return len(self.names)

    def summary(self) -> dict[str, float]:
        if not self.names:
            raise ValueError("no image pairs were evaluated")
        em = self._e.get_results()["em"]
        fm = self._f.get_results()["fm"]  # dynamic: the 256-threshold curve
        return {
            "S": float(self._s.get_results()["sm"]),
            "maxF": float(fm["dynamic"].max()),
            "meanE": float(em["curve"].mean()),
            "MAE": float(self._mae.get_results()["mae"]),
            "maxE": float(em["curve"].max()),
            "meanF": float(fm["dynamic"].mean()),
            "wF": float(self._wf.get_results()["wfm"]),
            "adpE": float(em["adp"]),
            "adpF": float(fm["adaptive"]),
            "HCE": float(self._hce.get_results()["hce"]),
        }

    def per_image(self) -> list[dict]:
        """One row per pair in the order added: the per-image figures pysodmetrics keeps."""
        rows = zip(
            self.names, self._s.sms, self._mae.maes, self._wf.weighted_fms, self._hce.hces, strict=True
        )
        return [
            {"name": n, "S": float(s), "MAE": float(mae), "wF": float(wf), "HCE": float(hce)}
            for n, s, mae, wf, hce in rows
        ]

    def worst(self, count: int) -> list[dict]:
        """The `count` pairs with the largest MAE (ties: lower S-measure first)."""
        return sorted(self.per_image(), key=lambda r: (-r["MAE"], r["S"]))[:count]


def format_summary(summary: dict[str, float]) -> str:
    """Two aligned lines: the card's column labels and the figures (HCE rounded like the card)."""
    cells = [
        (label, f"{summary[key]:.0f}" if key == "HCE" else f"{summary[key]:.3f}") for key, label in METRICS
    ]
    widths = [max(len(a), len(b)) for a, b in cells]
    head = "  ".join(a.rjust(w) for (a, _), w in zip(cells, widths, strict=True))
    row = "  ".join(b.rjust(w) for (_, b), w in zip(cells, widths, strict=True))
    return f"{head}\n{row}"
