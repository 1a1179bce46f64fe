"""Statistics kept per frame stay in constant memory however long a run lasts, and stay right."""

from __future__ import annotations

import math
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from streamer.frame import Frame
from streamer.live.stats import Interval, LatencyWindow, RateMeter
from streamer.pipeline.stats import Distribution, PipelineStats


def exact(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@given(st.lists(st.floats(min_value=1e-6, max_value=1e4), min_size=1, max_size=300))
def test_percentiles_are_within_one_percent_of_the_exact_ones(values):
    d = Distribution()
    for v in values:
        d.add(v)
    assert d.count == len(values) and d.min == min(values) and d.max == max(values)
    assert math.isclose(d.mean, sum(values) / len(values), rel_tol=1e-9)
    for q in (0, 5, 50, 95, 99, 100):
        assert d.percentile(q) == pytest.approx(exact(values, q), rel=0.01)


def test_zeros_and_an_empty_distribution():
    d = Distribution()
    assert math.isnan(d.percentile(50)) and math.isnan(d.mean) and not d
    for _ in range(3):
        d.add(0.0)
    assert d.percentile(50) == 0.0 and d.bins == 1


def test_a_distribution_stays_small_after_300_000_values():
    d = Distribution()
    values = np.random.default_rng(0).lognormal(-3, 2, 300_000)  # ~ns to minutes
    for v in values.tolist():
        d.add(v)
    assert d.count == 300_000 and d.bins < 2500
    assert d.percentile(50) == pytest.approx(float(np.median(values)), rel=0.01)


def frame(captured_at: float) -> Frame:
    return Frame(torch.zeros(1, 1, 3, dtype=torch.uint8), 0, Fraction(1, 30), 0, captured_at)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_frames(stats: PipelineStats, clock: Clock, count: int, rng: np.random.Generator) -> None:
    f = frame(0.0)
    infer, sink = rng.uniform(0.01, 0.5, count).tolist(), rng.uniform(1e-4, 1e-2, count).tolist()
    for i, latency in enumerate(rng.uniform(0.02, 0.3, count).tolist()):
        clock.now += 1 / 30
        stats.record_stage("infer", infer[i], 1 + i % 4)
        stats.record_stage("sink", sink[i], 1)
        f.captured_at = clock.now - latency
        stats.record_output(0, f)
        stats.record_output(1, f)


def test_pipeline_stats_do_not_grow_with_the_run():
    rng, clock = np.random.default_rng(1), Clock()
    stats = PipelineStats(["infer", "sink"], sink_count=2, clock=clock)
    stats.start()
    run_frames(stats, clock, 20_000, rng)  # every bin the values can reach exists by now
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run_frames(stats, clock, 50_000, rng)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats.finish()
    assert grown < 64 * 1024, f"{grown} bytes more after 50,000 frames"
    assert stats.frames_out == [70_000, 70_000] and len(stats.latencies) == 70_000
    assert stats.elapsed == pytest.approx(70_000 / 30)
    assert max(d.bins for d in (stats.latencies, *stats.stage_seconds.values())) < 700
    assert 20 < 1000 * stats.latencies.percentile(5) < 40
    assert "end-to-end latency: p50" in stats.summary()


def test_live_meters_keep_a_bounded_window():
    meter = RateMeter(window_s=2.0, most=256)
    for i in range(100_000):  # far faster than any camera: the cap holds
        meter.tick(now=i * 1e-6)
    assert len(meter._times) == 256
    assert meter.rate(now=0.1) == pytest.approx(1e6, rel=1e-6)
    steady = RateMeter(window_s=2.0)
    for i in range(10_000):  # 30 fps for over 5 minutes: the window holds two seconds
        steady.tick(now=i / 30)
    assert len(steady._times) <= 61 and steady.rate(now=9999 / 30) == pytest.approx(30)
    window = LatencyWindow(size=120)
    for i in range(10_000):
        window.add(i / 1000)
    assert len(window._values) == 120 and window.percentile(0) == pytest.approx(9.88)


def test_an_interval_averages_the_gaps_and_leaves_out_stalls_and_seeks():
    interval = Interval(longest=1.0, weight=0.5)
    interval.note(10.0)
    assert interval.value is None and interval.last == 10.0  # one time: no gap yet
    interval.note(10.2)
    assert interval.value == pytest.approx(0.2)
    interval.note(10.6)
    assert interval.value == pytest.approx(0.3)  # halfway to the new gap of 0.4
    for t in (12.0, 12.0, 11.0):  # a stall, the same time again, a seek back
        interval.note(t)
        assert interval.value == pytest.approx(0.3) and interval.last == t
    interval.note(11.1)
    assert interval.value == pytest.approx(0.2)
