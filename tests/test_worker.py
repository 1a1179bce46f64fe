"""The live worker starts a slow network on fresh frames: a stale frame waits for its successor,
within a small share of the batch time, and never when inference keeps up with the camera.
After a batch it leaves the CPU to the media threads until the results are sent, within a
share of the batch time too.

Time is the test's own: the worker reads a fake clock that only the test moves, and the engine
returns only when the test lets it, so every decision happens at a known instant and nothing
depends on how fast (or how loaded) the machine is. The test waits on conditions, never on time.
"""

from __future__ import annotations

import asyncio
import threading
from fractions import Fraction

import pytest
import torch

from streamer.frame import Frame
from streamer.live import worker as worker_module
from streamer.live.worker import InferenceWorker
from tests.harness import make_frames, until

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WatchedCondition(threading.Condition):
    """The worker's lock; counts the waits with a deadline (held back for frames or for sending)."""

    def __init__(self) -> None:
        super().__init__()
        self.timed_waits = 0

    def wait(self, timeout=None):
        if timeout is not None:
            self.timed_waits += 1
        return super().wait(timeout)


class SteppedEngine:
    """predict() records which frame it got and when, then returns when the test says so."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, int]] = []
        self._go = threading.Semaphore(0)

    def predict(self, image):
        self.calls.append((self.clock(), int(image.reshape(-1)[0])))
        self._go.acquire()
        return torch.zeros(image.shape[:-1])

    def finish(self) -> None:
        self._go.release()


class Rig:
    def __init__(self) -> None:
        self.clock = Clock()
        self.engine = SteppedEngine(self.clock)
        self.worker = InferenceWorker(self.engine, nice=0, clock=self.clock)
        self.cond = self.worker._cond = WatchedCondition()
        self.frames = make_frames(40)

    async def __aenter__(self) -> Rig:
        self.worker.start()
        self.slot = self.worker.open_slot()
        return self

    async def __aexit__(self, *exc) -> None:
        for _ in range(4):  # let a blocked predict return so the thread can stop
            self.engine.finish()
        await self.worker.aclose()

    def put(self, index: int, at: float) -> None:
        self.clock.now = 1000.0 + at
        self.slot.put(self.frames[index])

    def advance_to(self, at: float) -> None:
        with self.cond:  # wakes a worker waiting for a deadline, which reads the clock again
            self.clock.now = 1000.0 + at
            self.cond.notify_all()

    async def engine_called(self, times: int) -> None:
        await until(lambda: len(self.engine.calls) >= times, f"the engine called {times} times")

    async def held_back(self) -> None:
        """Returns once the worker waits for a deadline, having just checked for work."""
        with self.cond:
            seen = self.cond.timed_waits
        await until(lambda: self.cond.timed_waits > seen, "the worker waits for a deadline")

    async def slow_batch(self, until_at: float, camera: list[tuple[int, float]]) -> None:
        """Frame 0 at 0 goes straight in; `camera` frames arrive during the batch, which ends at
        `until_at`; its result is taken and sent at once."""
        self.put(0, 0.0)
        await self.engine_called(1)
        for index, at in camera:
            self.put(index, at)
        self.clock.now = 1000.0 + until_at
        self.engine.finish()
        assert (await asyncio.wait_for(self.slot.get(), 20)).index == 0
        self.slot.sent()


def at(t: float):
    return pytest.approx(1000.0 + t)


CAMERA_20MS = [(k, 0.02 * k) for k in range(1, 16)]  # the last, frame 15, arrives at 0.30


async def test_a_slow_network_starts_on_the_frame_that_just_arrived():
    async with Rig() as rig:
        # The batch ends at 0.31: frame 15 is 10 ms old, more than a quarter interval (5 ms), and
        # frame 16 is due at 0.32, within the budget (5% of 0.31 s = 15.5 ms): worth waiting for.
        await rig.slow_batch(0.31, CAMERA_20MS)
        await rig.held_back()
        assert len(rig.engine.calls) == 1
        rig.put(16, 0.32)
        await rig.engine_called(2)
        assert rig.engine.calls[1] == (at(0.32), 16)
        stats = rig.worker.stats
        assert stats.fresh_waits == 1 and stats.fresh_wait_s == pytest.approx(0.01)
        assert stats.last_infer_s == pytest.approx(0.31)
        assert rig.slot.dropped == 15  # frames 1..15, each replaced by its successor


async def test_without_the_wait_the_stale_frame_goes_in(monkeypatch):
    # The contrast that shows the test above measures something.
    monkeypatch.setattr(worker_module, "FRESH_WAIT_SHARE", 0.0)
    async with Rig() as rig:
        await rig.slow_batch(0.31, CAMERA_20MS)
        await rig.engine_called(2)
        assert rig.engine.calls[1] == (at(0.31), 15)  # 10 ms old when it went in
        assert rig.worker.stats.fresh_waits == 0


async def test_a_successor_too_far_off_is_not_waited_for():
    async with Rig() as rig:
        # 40 ms camera: frame 7 arrived at 0.28 and is 15 ms old when the batch ends at 0.295,
        # but frame 8 is due at 0.32, 25 ms away, over the budget (5% of 0.295 s = 14.75 ms).
        await rig.slow_batch(0.295, [(k, 0.04 * k) for k in range(1, 8)])
        await rig.engine_called(2)
        assert rig.engine.calls[1] == (at(0.295), 7)
        assert rig.worker.stats.fresh_waits == 0


async def test_a_network_that_keeps_up_never_waits():
    async with Rig() as rig:
        for k in range(10):  # a 40 ms camera, 5 ms batches: every frame is taken as it arrives
            rig.put(k, 0.04 * k)
            await rig.engine_called(k + 1)
            assert rig.engine.calls[k] == (at(0.04 * k), k)
            rig.clock.now += 0.005
            rig.engine.finish()
            assert (await asyncio.wait_for(rig.slot.get(), 20)).index == k
            rig.slot.sent()
        assert rig.worker.stats.fresh_waits == 0 and rig.slot.dropped == 0


async def test_a_stalled_camera_does_not_hold_back_its_last_frame():
    async with Rig() as rig:
        await rig.slow_batch(0.31, CAMERA_20MS)  # then the camera stops
        await rig.held_back()
        # Frame 16 was due at 0.32; the worker gives up a quarter interval later (0.325).
        rig.advance_to(0.324)
        await rig.held_back()
        assert len(rig.engine.calls) == 1
        rig.advance_to(0.3252)
        await rig.engine_called(2)
        assert rig.engine.calls[1] == (at(0.3252), 15)
        stats = rig.worker.stats
        assert stats.fresh_waits == 1 and stats.fresh_wait_s == pytest.approx(0.0152)
        assert stats.fresh_wait_s <= worker_module.FRESH_WAIT_SHARE * stats.last_infer_s


async def test_the_next_batch_waits_until_the_results_are_sent(monkeypatch):
    monkeypatch.setattr(worker_module, "FRESH_WAIT_SHARE", 0.0)  # only the wait under test
    async with Rig() as rig:
        rig.put(0, 0.0)
        await rig.engine_called(1)
        rig.put(1, 0.1)
        rig.clock.now = 1000.4  # a 0.4 s batch: up to 20 ms for its results to go out
        rig.engine.finish()
        assert (await asyncio.wait_for(rig.slot.get(), 20)).index == 0
        await rig.held_back()
        rig.advance_to(0.412)  # compositing, encoding and sending took 12 ms
        await rig.held_back()
        assert len(rig.engine.calls) == 1  # frame 1 waits although the worker is free
        rig.slot.sent()
        await rig.engine_called(2)
        assert rig.engine.calls[1] == (at(0.412), 1)
        assert rig.worker.stats.quiet_wait_s == pytest.approx(0.012)


async def test_results_never_sent_hold_the_worker_back_only_for_its_share(monkeypatch):
    monkeypatch.setattr(worker_module, "FRESH_WAIT_SHARE", 0.0)  # only the wait under test
    async with Rig() as rig:
        rig.put(0, 0.0)
        await rig.engine_called(1)
        rig.put(1, 0.1)
        rig.clock.now = 1000.2
        rig.engine.finish()
        await asyncio.wait_for(rig.slot.get(), 20)  # and never says it was sent
        await rig.held_back()
        rig.advance_to(0.209)
        await rig.held_back()
        assert len(rig.engine.calls) == 1
        rig.advance_to(0.2101)  # past QUIET_SHARE (5%) of 0.2 s
        await rig.engine_called(2)
        share = worker_module.QUIET_SHARE * rig.worker.stats.total_infer_s
        assert share == pytest.approx(0.01) and rig.worker.stats.quiet_wait_s == pytest.approx(0.0101)


# -- still images (the HTTP image API) share the worker, after live frames ---------------------
def still(value: int) -> Frame:
    return Frame(torch.full((6, 10, 3), value, dtype=torch.uint8), None, Fraction(1), 0, 0.0)


async def live_batch_done(rig: Rig, index: int) -> None:
    rig.engine.finish()
    assert (await asyncio.wait_for(rig.slot.get(), 20)).index == index
    rig.slot.sent()


async def test_an_image_waits_behind_live_frames_then_gets_the_network_alone(monkeypatch):
    monkeypatch.setattr(worker_module, "FRESH_WAIT_SHARE", 0.0)
    monkeypatch.setattr(worker_module, "QUIET_SHARE", 0.0)
    async with Rig() as rig:
        images = rig.worker.open_slot("image", image=True)
        assert rig.worker.peers == 1  # an image request is not a live peer
        rig.put(0, 0.0)
        await rig.engine_called(1)
        images.put(still(200))
        # The camera always has a frame waiting when the network comes free (a busy CPU):
        for k in range(1, 5):
            rig.put(k, 0.1 * k)
            await live_batch_done(rig, k - 1)
            await rig.engine_called(k + 1)
        # Live frames 1-3 passed the image over (LIVE_TURNS), then it went in on its own; live
        # frame 4, waiting meanwhile, goes next: it waited one image's pass, not longer.
        rig.engine.finish()
        result = await asyncio.wait_for(images.get(), 20)
        assert result.alpha.shape == (6, 10) and result.image[0, 0, 0] == 200
        await rig.engine_called(6)
        assert [value for _, value in rig.engine.calls] == [0, 1, 2, 3, 200, 4]
        await live_batch_done(rig, 4)
        assert rig.worker.stats.images == 1 and rig.worker.stats.frames == 5  # live frames only
        images.close()


async def test_an_image_goes_in_at_once_when_no_live_frame_waits(monkeypatch):
    monkeypatch.setattr(worker_module, "QUIET_SHARE", 0.0)
    async with Rig() as rig:
        first, second = (rig.worker.open_slot(f"image-{i}", image=True) for i in range(2))
        first.put(still(201))
        second.put(still(202))
        await rig.engine_called(1)
        rig.put(0, 0.0)  # arrives while the first image is in the engine: it goes next
        rig.engine.finish()
        await rig.engine_called(2)
        rig.engine.finish()
        await rig.engine_called(3)
        rig.engine.finish()
        # One image per pass, in the order they came; the live frame went before the second.
        assert [value for _, value in rig.engine.calls] == [201, 0, 202]
        assert (await asyncio.wait_for(second.get(), 20)).image[0, 0, 0] == 202
        assert (await asyncio.wait_for(first.get(), 20)).image[0, 0, 0] == 201
        assert (await asyncio.wait_for(rig.slot.get(), 20)).index == 0
