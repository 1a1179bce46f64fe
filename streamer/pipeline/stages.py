"""The processing stages between source and sinks.

A stage is a small object with one method, `__call__(frames) -> frames`, that fills in more
fields of the frames it is given. It blocks (GPU or CPU work) and the runner calls it from
the stage's own thread, so the event loop never waits on it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from streamer.frame import Frame


class Stage(Protocol):
    name: str

    def __call__(self, frames: list[Frame]) -> list[Frame]: ...


class InferStage:
    """Sets `frame.alpha` with the matting engine, one engine call per batch."""

    name = "infer"
    compute_bound = True
    """Long CPU/GPU work per call: live pipelines run it at a lower thread priority."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __call__(self, frames: list[Frame]) -> list[Frame]:
        images = [f.image for f in frames]
        if len({tuple(img.shape) for img in images}) == 1:
            # One stacked tensor lets the engine resize the whole batch in one call.
            alphas = list(self.engine.predict(torch.stack(images)))
        else:
            alphas = self.engine.predict(images)
        for frame, alpha in zip(frames, alphas, strict=True):
            frame.alpha = alpha
        return frames


class SmoothStage:
    """Steadies `frame.alpha` over time (state is per stream, so one stage per source)."""

    name = "smooth"

    def __init__(self, smoother) -> None:
        self.smoother = smoother

    def __call__(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            frame.alpha = self.smoother(frame.alpha, frame.image, frame.time)
        return frames


class CompositeStage:
    """Turns (image, alpha) into `frame.output`, the picture the sinks receive."""

    name = "composite"

    def __init__(self, compositor) -> None:
        self.compositor = compositor

    def __call__(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            frame.output = self.compositor(frame.image, frame.alpha, frame.time)
        return frames
