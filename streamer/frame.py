"""The record that flows through the pipeline: source -> infer -> smooth -> composite -> sinks.

Every stage returns the frame it was given with more fields filled in; `pts` and
`time_base` are never changed after the source sets them, so sinks can keep the timing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import torch


@dataclass(slots=True)
class Frame:
    image: torch.Tensor
    """uint8 RGB, (H, W, 3), as decoded (CPU unless a stage moved it)."""
    pts: int | None
    """Presentation timestamp in `time_base` units (None when the source has no timing)."""
    time_base: Fraction
    index: int
    """0-based position in the source; gaps mean the live queue dropped frames."""
    captured_at: float
    """time.monotonic() when the source produced the frame (for end-to-end latency)."""
    alpha: torch.Tensor | None = None
    """float32 (H, W) in [0, 1] on the inference device, set by the infer stage."""
    output: torch.Tensor | None = None
    """uint8 (H, W, C) on the CPU, C = 1 (matte), 3 (RGB) or 4 (RGBA), set by the compositor."""
    meta: dict = field(default_factory=dict)

    @property
    def time(self) -> float:
        """Presentation time in seconds (the index at 30 fps when the source has no pts)."""
        if self.pts is None:
            return self.index / 30.0
        return float(self.pts * self.time_base)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
