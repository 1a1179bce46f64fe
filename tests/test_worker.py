"""The live worker starts a slow network on fresh frames: a stale frame waits for its successor,
within a small share of the batch time, and never when inference keeps up with the camera.
After a batch it leaves the CPU to the media threads until the results are sent, within a
share of the batch time too."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import pytest
import torch

from streamer.live import worker as worker_module
from streamer.live.worker import InferenceWorker
from tests.harness import make_frames

pytestmark = pytest.mark.timeout(60)


class SleepyEngine:
    """Takes `seconds` (+0..20%) per batch, like a network on a CPU, and returns alpha = 0.

    The spread keeps batches from locking to the camera's phase."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.random = random.Random(7)
        self.starts: list[float] = []

    def predict(self, image):
        self.starts.append(time.monotonic())
        time.sleep(self.seconds * (1 + 0.2 * self.random.random()))
        return torch.zeros(image.shape[:-1])


async def run_camera(engine, interval: float, duration: float) -> tuple[list[float], InferenceWorker]:
    """Put a frame every `interval` s for `duration` s; returns each inferred frame's age when taken."""
    ages: list[float] = []

    def prepare(frame):
        ages.append(time.monotonic() - frame.captured_at)
        return frame

    worker = InferenceWorker(engine)
    worker.start()
    slot = worker.open_slot(prepare=prepare)

    async def results() -> None:
        while True:
            await slot.get()

    reader = asyncio.ensure_future(results())
    start = time.monotonic()
    for n, frame in enumerate(make_frames(int(duration / interval))):
        await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        frame.captured_at = time.monotonic()
        slot.put(frame)
    await asyncio.sleep(engine.seconds + 2 * interval)
    reader.cancel()
    await worker.aclose()
    return ages[1:], worker  # the first batch has no earlier batch time to budget from


async def test_a_slow_network_starts_on_frames_that_just_arrived():
    ages, worker = await run_camera(SleepyEngine(0.3), interval=0.02, duration=3.0)
    assert len(ages) >= 6
    # Without waiting, ages spread evenly over 0..20 ms (median ~10 ms).
    assert statistics.median(ages) < 0.005, ages
    stats = worker.stats
    assert stats.fresh_waits >= 2  # about half the batches find a stale frame
    assert stats.fresh_wait_s <= worker_module.FRESH_WAIT_SHARE * stats.total_infer_s + 0.01


async def test_without_the_wait_frames_are_older(monkeypatch):
    # The contrast that shows the first test measures something.
    monkeypatch.setattr(worker_module, "FRESH_WAIT_SHARE", 0.0)
    ages, worker = await run_camera(SleepyEngine(0.3), interval=0.02, duration=3.0)
    assert worker.stats.fresh_waits == 0
    assert statistics.median(ages) > 0.005, ages


async def test_a_network_that_keeps_up_never_waits():
    ages, worker = await run_camera(SleepyEngine(0.005), interval=0.04, duration=1.0)
    assert worker.stats.fresh_waits == 0
    assert max(ages) < 0.03


async def test_a_stalled_camera_does_not_hold_back_its_last_frame():
    engine = SleepyEngine(0.3)
    worker = InferenceWorker(engine)
    worker.start()
    slot = worker.open_slot()
    for frame in make_frames(11):  # a steady 40 ms camera, then it stops
        slot.put(frame)
        await asyncio.sleep(0.04)
    stopped = time.monotonic()
    while (await asyncio.wait_for(slot.get(), 5)).index != 10:
        pass
    # At worst: the batch in flight, a wait of 1.25 intervals, then its own batch.
    assert time.monotonic() - stopped < 2 * 1.2 * engine.seconds + 0.05 + 0.1
    await worker.aclose()


async def put_every(slot, interval: float, count: int) -> None:
    for frame in make_frames(count):
        slot.put(frame)
        await asyncio.sleep(interval)


async def test_the_next_batch_waits_until_the_results_are_sent(monkeypatch):
    monkeypatch.setattr(worker_module, "FRESH_WAIT_SHARE", 0.0)  # only the wait under test
    engine = SleepyEngine(0.4)  # a share of 5%: up to 20 ms for the results to go out
    worker = InferenceWorker(engine)
    worker.start()
    slot = worker.open_slot()
    camera = asyncio.ensure_future(put_every(slot, 0.005, 400))
    sent_at = []
    for _ in range(4):
        await asyncio.wait_for(slot.get(), 5)
        await asyncio.sleep(0.012)  # compositing, encoding and sending
        sent_at.append(time.monotonic())
        slot.sent()
    camera.cancel()
    await worker.aclose()
    # Each batch after the first starts only once the previous result has been sent.
    for sent, start in zip(sent_at, engine.starts[1:], strict=False):
        assert start >= sent, (start - sent) * 1000
    assert worker.stats.quiet_wait_s >= 0.01 * 3


async def test_results_never_sent_hold_the_worker_back_only_for_its_share():
    engine = SleepyEngine(0.2)
    worker = InferenceWorker(engine)
    worker.start()
    slot = worker.open_slot()
    camera = asyncio.ensure_future(put_every(slot, 0.01, 200))
    for _ in range(5):
        await asyncio.wait_for(slot.get(), 5)
    camera.cancel()
    await worker.aclose()
    stats = worker.stats
    share = worker_module.QUIET_SHARE * stats.total_infer_s
    assert 0.8 * share - 0.01 <= stats.quiet_wait_s <= share + 0.02
