"""Counters and timings of one pipeline run, and the end-of-run summary.

Everything here is kept in constant memory, whatever the run's length (an all-day virtual camera
records tens of millions of frame timings): per-frame timings go into `Distribution`s, running
summaries of fixed size, never into lists.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from streamer.frame import Frame


class Distribution:
    """Count, mean, min, max and percentiles of a stream of non-negative values, in constant memory.

    Values are counted in logarithmic bins 1% wide, so a percentile is within 1% of the exact one
    (nearest rank) and the bins stay below ~4,000 between 1 ns and a day."""

    STEP = math.log(1.01)
    FLOOR = 1e-9
    """Values below this (zeros included) share one bin."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self._bins: Counter[int] = Counter()

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.min, self.max = min(self.min, value), max(self.max, value)
        self._bins[math.floor(math.log(max(value, self.FLOOR)) / self.STEP)] += 1

    def __len__(self) -> int:
        return self.count

    @property
    def bins(self) -> int:
        return len(self._bins)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def percentile(self, q: float) -> float:
        """The nearest-rank percentile q (0..100), within 1%; nan when empty."""
        if not self.count:
            return float("nan")
        rank = min(self.count - 1, max(0, round(q / 100 * (self.count - 1))))
        seen = 0
        for key in sorted(self._bins):
            seen += self._bins[key]
            if seen > rank:
                middle = math.exp((key + 0.5) * self.STEP)
                return min(self.max, max(self.min, middle))
        return self.max


@dataclass
class PipelineStats:
    stage_names: list[str]
    sink_count: int
    frames_in: int = 0
    discarded: int = 0
    """Frames read but let go before inference because the run was stopped."""
    frames_out: list[int] = field(default_factory=list)
    stage_seconds: dict[str, Distribution] = field(default_factory=dict)
    """Per-frame seconds of each stage."""
    latencies: Distribution = field(default_factory=Distribution)
    """Seconds from capture to the first sink."""
    queues: list = field(default_factory=list)
    droppers: list = field(default_factory=list)
    """Stages that let frames go themselves (the live core's backlog), each with `.dropped`."""
    outputs: list = field(default_factory=list)
    """(name, queue, is a recording, what would let it keep up) of each sink in order; the queue is
    where its frames wait for it (a live job's recordings, files, wait longest)."""
    started: float = 0.0
    ended: float = 0.0
    clock: Callable[[], float] = time.monotonic
    """The clock of `Frame.captured_at` (tests inject their own)."""

    def __post_init__(self) -> None:
        self.frames_out = [0] * self.sink_count
        self.stage_seconds = {name: Distribution() for name in self.stage_names}

    def start(self) -> None:
        self.started = self.clock()

    def finish(self) -> None:
        self.ended = self.clock()

    def record_stage(self, name: str, seconds: float, frames: int) -> None:
        # Per-frame cost, so batched and single-frame runs compare directly.
        self.stage_seconds[name].add(seconds / max(1, frames))

    def record_output(self, sink_index: int, frame: Frame) -> None:
        self.frames_out[sink_index] += 1
        if sink_index == 0:
            self.latencies.add(self.clock() - frame.captured_at)

    @property
    def dropped(self) -> int:
        """Frames lost on the way to the first sink, whose frames `out` counts (so a finished
        job's in = out + dropped + discarded); what a later sink lost waiting for itself is that
        sink's own line of the summary."""
        own = {id(queue) for _, queue, *_ in self.outputs[1:]}
        return sum(q.dropped for q in (*self.queues, *self.droppers) if id(q) not in own)

    @property
    def max_queue_depth(self) -> int:
        return max((q.max_depth for q in self.queues), default=0)

    @property
    def elapsed(self) -> float:
        return max(1e-9, (self.ended or self.clock()) - self.started)

    @property
    def fps(self) -> float:
        return (self.frames_out[0] if self.frames_out else 0) / self.elapsed

    def summary(self) -> str:
        lines = [
            f"frames: {self.frames_in} in, {self.frames_out[0] if self.frames_out else 0} out, "
            f"{self.dropped} dropped; {self.fps:.2f} fps over {self.elapsed:.1f} s",
        ]
        per_stage = ", ".join(f"{name} {1000 * v.mean:.1f} ms" for name, v in self.stage_seconds.items() if v)
        if per_stage:
            lines.append(f"per-frame stage time (mean): {per_stage}")
        if self.latencies:
            lines.append(
                f"end-to-end latency: p50 {1000 * self.latencies.percentile(50):.0f} ms, "
                f"p95 {1000 * self.latencies.percentile(95):.0f} ms"
            )
        for index, (name, queue, recording, keep_up) in enumerate(self.outputs):
            # The first sink's losses are in the line above; a recording is also named on its own.
            if queue.dropped and (index or recording):
                fix = f" ({keep_up})" if keep_up else ""
                lost = "not recorded" if recording else "not shown"
                lines.append(f"{name}: {queue.dropped} frames {lost}: it could not keep up{fix}")
        return "\n".join(lines)
