"""Counters and timings of one pipeline run, and the end-of-run summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from streamer.frame import Frame


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class PipelineStats:
    stage_names: list[str]
    sink_count: int
    frames_in: int = 0
    discarded: int = 0
    """Frames read but let go before inference because the run was stopped."""
    frames_out: list[int] = field(default_factory=list)
    stage_seconds: dict[str, list[float]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    queues: list = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    def __post_init__(self) -> None:
        self.frames_out = [0] * self.sink_count
        self.stage_seconds = {name: [] for name in self.stage_names}

    def start(self) -> None:
        self.started = time.monotonic()

    def finish(self) -> None:
        self.ended = time.monotonic()

    def record_stage(self, name: str, seconds: float, frames: int) -> None:
        # Per-frame cost, so batched and single-frame runs compare directly.
        self.stage_seconds[name].append(seconds / max(1, frames))

    def record_output(self, sink_index: int, frame: Frame) -> None:
        self.frames_out[sink_index] += 1
        if sink_index == 0:
            self.latencies.append(time.monotonic() - frame.captured_at)

    @property
    def dropped(self) -> int:
        return sum(q.dropped for q in self.queues)

    @property
    def max_queue_depth(self) -> int:
        return max((q.max_depth for q in self.queues), default=0)

    @property
    def elapsed(self) -> float:
        return max(1e-9, (self.ended or time.monotonic()) - self.started)

    @property
    def fps(self) -> float:
        return (self.frames_out[0] if self.frames_out else 0) / self.elapsed

    def summary(self) -> str:
        lines = [
            f"frames: {self.frames_in} in, {self.frames_out[0] if self.frames_out else 0} out, "
            f"{self.dropped} dropped; {self.fps:.2f} fps over {self.elapsed:.1f} s",
        ]
        per_stage = ", ".join(
            f"{name} {1000 * sum(v) / len(v):.1f} ms" for name, v in self.stage_seconds.items() if v
        )
        if per_stage:
            lines.append(f"per-frame stage time (mean): {per_stage}")
        if self.latencies:
            lines.append(
                f"end-to-end latency: p50 {1000 * _percentile(self.latencies, 50):.0f} ms, "
                f"p95 {1000 * _percentile(self.latencies, 95):.0f} ms"
            )
        return "\n".join(lines)
