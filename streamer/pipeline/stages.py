"""The processing stages between source and sinks, and the two steps every path shares.

`predict_alphas` (frames -> mattes, one engine call) is used by the file pipeline's
`InferStage` and by the live worker; `Finisher` (smoothing, then compositing) by the file
pipeline's `FinishStage` and by the live core. A stage is a small object with one method,
`__call__(frames) -> frames`, that fills in more fields of the frames it is given. It blocks
(GPU or CPU work) and the runner calls it from the stage's own thread, so the event loop
never waits on it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from streamer.frame import Frame


class Stage(Protocol):
    name: str

    def __call__(self, frames: list[Frame]) -> list[Frame]: ...


def predict_alphas(engine, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """One engine call for all `images` (uint8 (H, W, 3)); each matte at its own frame's size."""
    if len(images) == 1:
        return [engine.predict(images[0])]
    if len({tuple(image.shape) for image in images}) == 1:
        # One stacked tensor lets the engine resize the whole batch in one call.
        return list(engine.predict(torch.stack(images)).unbind(0))
    return list(engine.predict(images))


class Finisher:
    """Smoothing then compositing of one stream (both keep per-stream state): sets
    `frame.alpha` to the smoothed matte and `frame.output` to the picture the sinks get.

    `.smoother` may be None (no smoothing); the params of both may be replaced between frames."""

    def __init__(self, smoother, compositor) -> None:
        self.smoother = smoother
        self.compositor = compositor

    def __call__(
        self,
        frame: Frame,
        alpha: torch.Tensor,
        keyframe_interval: float | None = None,
        correction: torch.Tensor | None = None,
    ) -> Frame:
        """`keyframe_interval`: seconds between network results when `alpha` was carried from
        one by propagation (the smoother then averages over a few of them); `correction`: where
        `alpha` takes a keyframe's correction of the carried matte (taken at once there)."""
        if self.smoother is not None:
            alpha = self.smoother(alpha, frame.image, frame.time, keyframe_interval, correction)
        frame.alpha = alpha
        frame.output = self.compositor(frame.image, alpha, frame.time)
        return frame


class InferStage:
    """Sets `frame.alpha` with the matting engine, one engine call per batch."""

    name = "infer"
    compute_bound = True
    """Long CPU/GPU work per call: live pipelines run it at a lower thread priority."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __call__(self, frames: list[Frame]) -> list[Frame]:
        alphas = predict_alphas(self.engine, [f.image for f in frames])
        for frame, alpha in zip(frames, alphas, strict=True):
            frame.alpha = alpha
        return frames


class FinishStage:
    """The file pipeline's smoothing and compositing: the same `Finisher` live streams use."""

    name = "finish"

    def __init__(self, finisher: Finisher) -> None:
        self.finisher = finisher

    def __call__(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            self.finisher(frame, frame.alpha)
        return frames
