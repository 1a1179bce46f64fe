"""The live core shared by `streamer run` and `streamer serve`: every frame out in order, the
network on keyframes when it is free, its results carried forward, one worker for all streams.

`LiveCore` is driven here by hand with a stand-in worker slot and an injected clock, so the
scheduling is checked step by step without threads or wall-clock timing; `LiveStream`, the
pipeline stage and the peer are then run with the real worker and a stand-in engine whose every
pass the test releases.
"""

from __future__ import annotations

import asyncio
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from streamer.compose.compositor import CompositeParams, Compositor
from streamer.frame import Frame
from streamer.live import core as core_module
from streamer.live.core import LiveCore, LiveStream, Settings
from streamer.live.worker import InferenceWorker
from streamer.pipeline.runner import Pipeline
from streamer.pipeline.stages import Finisher
from streamer.propagation import PropagationParams
from streamer.sources.pace import PacedSource, paced
from tests.harness import ListSink, ListSource, until

pytestmark = pytest.mark.timeout(60)

RATE = Fraction(1, 30)


class Clock:
    """A clock the test moves; `sleep` moves it too (what a paced source waits for)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class StandInSlot:
    """The worker slot as the core sees it; the test plays the worker (`take`, `result`)."""

    def __init__(self) -> None:
        self.waiting: Frame | None = None
        self.last_taken: Frame | None = None
        self.last_infer_s = 0.0
        self.puts: list[int] = []

    def put(self, frame: Frame) -> None:
        self.puts.append(frame.meta["live_id"])
        self.waiting = frame

    def take(self) -> Frame:
        frame, self.waiting = self.waiting, None
        self.last_taken = frame
        return frame

    def result(self, frame: Frame, alpha: torch.Tensor) -> Frame:
        frame.alpha = alpha
        return frame


class RecordingPropagator:
    """Carries the newest keyframe's matte unchanged, and records the calls it gets."""

    def __init__(self, params=None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.intervals: list[float | None] = []
        self.matte: np.ndarray | None = None
        self.fresh = False  # a keyframe came in since the last `correction()`

    def step(self, frame_id: int, image: np.ndarray, keyframe_interval=None) -> np.ndarray | None:
        self.calls.append(("step", frame_id))
        self.intervals.append(keyframe_interval)
        return None if self.matte is None else self.matte.copy()

    def keyframe(self, frame_id: int, alpha: np.ndarray) -> None:
        self.calls.append(("keyframe", frame_id))
        self.matte = alpha
        self.fresh = True

    def correction(self) -> np.ndarray | None:
        """All of the first matte after each keyframe (the network's own is a correction)."""
        if self.matte is None or not self.fresh:
            return None
        self.fresh = False
        return np.ones(self.matte.shape, np.float32)

    def reset(self) -> None:
        self.matte = None


def frame(i: int, size=(24, 32), value: int | None = None) -> Frame:
    image = torch.full((*size, 3), i % 256 if value is None else value, dtype=torch.uint8)
    return Frame(image, i, RATE, i, 0.0)


def finisher() -> Finisher:
    return Finisher(None, Compositor(CompositeParams(mode="matte")))


def recording_into(propagators: list | None):
    """A `make_propagator` whose RecordingPropagators are appended to `propagators` (if given)."""

    def make(p):
        propagator = RecordingPropagator(p)
        if propagators is not None:
            propagators.append(propagator)
        return propagator

    return make


def make_core(slot, propagators: list | None = None, clock=None, **params) -> LiveCore:
    make = recording_into(propagators)
    return LiveCore(
        slot, finisher(), Settings(PropagationParams(**params)), make_propagator=make, clock=clock or Clock()
    )


def alpha(value: float, size=(24, 32)) -> torch.Tensor:
    return torch.full(size, value)


def ids(frames: list[Frame]) -> list[int]:
    return [f.meta["live_id"] for f in frames]


# -- LiveCore, step by step -----------------------------------------------------------------------
def test_every_frame_goes_out_in_order_while_the_network_is_busy():
    slot, props = StandInSlot(), []
    core = make_core(slot, props)
    out = core.on_frame(frame(0))
    assert slot.puts == [0]
    first = slot.take()
    for i in range(1, 10):  # the network is busy with frame 0 meanwhile
        out += core.on_frame(frame(i))
    # Before the first result there is no matte: the frames go out at once, with none.
    assert ids(out) == list(range(10)) and core.stats.unmatted == 10
    assert not any(f.meta["propagated"] for f in out) and all(f.output.max() == 0 for f in out)
    out += core.on_result(slot.result(first, alpha(0.25)))
    for i in range(10, 40):
        out += core.on_frame(frame(i))
    assert ids(out) == list(range(40))  # every frame, in order
    assert all(f.meta["propagated"] for f in out[10:])
    assert np.allclose(out[-1].output.numpy(), round(0.25 * 255))
    assert core.stats.delivered == 40 and core.stats.propagated == 30
    steps = [i for kind, i in props[0].calls if kind == "step"]
    assert steps == list(range(40))
    # The network took frame 0; the result for it was handed over after frame 9 was stepped.
    assert props[0].calls.index(("keyframe", 0)) == props[0].calls.index(("step", 9)) + 1


def test_the_network_gets_the_newest_frame_when_it_comes_free():
    slot = StandInSlot()
    core = make_core(slot)
    core.on_frame(frame(0))
    taken = slot.take()
    for i in range(1, 6):
        core.on_frame(frame(i))
    assert slot.waiting.meta["live_id"] == 5  # the newest waits; older ones were replaced
    core.on_result(slot.result(taken, alpha(1.0)))
    assert slot.take().meta["live_id"] == 5
    core.on_frame(frame(6))
    assert slot.waiting.meta["live_id"] == 6


def test_keyframe_every_k_offers_at_most_every_kth_frame():
    slot = StandInSlot()
    core = make_core(slot, keyframe_every=3)
    for i in range(30):
        core.on_frame(frame(i))
        if slot.waiting is not None:  # a network quicker than the camera takes every offer
            core.on_result(slot.result(slot.take(), alpha(0.5)))
    assert slot.puts == list(range(0, 30, 3))
    core.settings.params = PropagationParams(keyframe_every=1)
    core.on_frame(frame(30))
    assert slot.puts[-1] == 30


def test_a_network_that_keeps_up_mattes_each_keyframe_itself():
    slot = StandInSlot()
    core = make_core(slot)
    slot.last_infer_s = 0.010  # a GPU: 10 ms a pass, 33 ms between frames
    out = []
    for i in range(12):
        out += core.on_frame(frame(i))
        if i != 7:
            taken = slot.take()
            out += core.on_result(slot.result(taken, alpha(i / 100)))
    # Each frame is held for its own result and goes out with the network's matte; frame 7's
    # result never came, so it went out when frame 8 arrived, with the carried matte.
    assert ids(out) == list(range(12))
    assert [f.meta["propagated"] for f in out] == [i == 7 for i in range(12)]
    assert np.allclose(out[3].output.numpy(), round(0.03 * 255))
    assert np.allclose(out[7].output.numpy(), round(0.06 * 255))


def test_without_propagation_only_the_networks_frames_go_out():
    slot, props = StandInSlot(), []
    core = make_core(slot, props, enabled=False)
    out = []
    for i in range(5):
        out += core.on_frame(frame(i))
    assert out == [] and slot.puts == list(range(5)) and props == []
    out += core.on_result(slot.result(slot.take(), alpha(0.5)))
    assert ids(out) == [4] and not out[0].meta["propagated"]
    # Turned on while running: a fresh propagator starts from the next frame, and until its first
    # result the frames keep the last matte shown (not none: the subject must not blink out).
    core.settings.params = PropagationParams(enabled=True)
    out = core.on_frame(frame(5))
    assert props[0].calls == [("step", 5)]
    assert ids(out) == [5] and np.allclose(out[0].output.numpy(), round(0.5 * 255))


def test_rates_use_the_injected_clock():
    clock, slot = Clock(), StandInSlot()
    core = make_core(slot, clock=clock)
    core.on_frame(frame(0))
    core.on_result(slot.result(slot.take(), alpha(0.5)))
    for i in range(1, 31):
        clock.now += 1 / 30
        core.on_frame(frame(i))
        if i % 10 == 0 and slot.waiting is not None:
            core.on_result(slot.result(slot.take(), alpha(0.5)))
    assert core.stats.delivered_rate.rate(clock.now) == pytest.approx(30, rel=0.01)
    assert core.stats.keyframe_rate.rate(clock.now) == pytest.approx(3, rel=0.01)


class RecordingSmoother:
    """Passes the matte through and records the keyframe interval and correction each frame was
    smoothed with."""

    def __init__(self) -> None:
        self.intervals: list[float | None] = []
        self.corrections: list[torch.Tensor | None] = []

    def __call__(self, alpha, image, t, keyframe_interval=None, correction=None):
        self.intervals.append(keyframe_interval)
        self.corrections.append(correction)
        return alpha


def test_the_smoother_and_propagator_are_told_the_keyframe_interval_of_propagated_mattes():
    """Keyframes every 10th frame at 30 fps: once two have come back, the smoother gets 1/3 s
    (in the frames' own time) with every propagated matte, and the propagator with every frame;
    with propagation off, the smoother gets None."""
    slot, smoother, propagators = StandInSlot(), RecordingSmoother(), []
    core = LiveCore(
        slot,
        Finisher(smoother, Compositor(CompositeParams(mode="matte"))),
        Settings(PropagationParams()),
        make_propagator=recording_into(propagators),
        clock=Clock(),
    )
    for i in range(40):
        core.on_frame(frame(i))
        if i % 10 == 9:
            core.on_result(slot.result(slot.take(), alpha(0.5)))  # a result on every 10th frame
    assert smoother.intervals[:10] == [None] * 10  # one result so far: no interval yet
    assert smoother.intervals[-1] == pytest.approx(10 / 30)
    assert all(v == pytest.approx(10 / 30) for v in smoother.intervals[19:])
    told = propagators[0].intervals
    assert told[:20] == [None] * 20 and all(v == pytest.approx(10 / 30) for v in told[20:])
    # The first frame after each result (frames 10, 20 and 30; the smoother sees frames from 10 on)
    # comes with the propagator's correction, on the matte's device and at its size.
    marked = [i + 10 for i, c in enumerate(smoother.corrections) if c is not None]
    assert marked == [10, 20, 30]
    assert all(c.shape == (24, 32) and float(c.min()) == 1.0 for c in smoother.corrections if c is not None)
    core.settings.params = PropagationParams(enabled=False)
    for i in range(40, 43):
        core.on_frame(frame(i))
    core.on_result(slot.result(slot.take(), alpha(0.5)))
    assert smoother.intervals[-1] is None  # the network's own matte


def test_a_late_result_is_carried_to_the_current_frame():
    # The real propagator: a bright square moving 2 px a frame; the network saw frame 0.
    def picture(i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(1)
        image = (rng.random((96, 128, 3)) * 60).astype(np.uint8)  # texture for the flow
        truth = np.zeros((96, 128), np.float32)
        x = 20 + 2 * i
        image[30:70, x : x + 40] = 200 + (rng.random((40, 40, 3)) * 50).astype(np.uint8)
        truth[30:70, x : x + 40] = 1.0
        return image, truth

    slot = StandInSlot()
    core = LiveCore(slot, finisher(), Settings(PropagationParams(flow_width=128)), clock=Clock())
    frames = [Frame(torch.from_numpy(picture(i)[0]), i, RATE, i, 0.0) for i in range(9)]
    core.on_frame(frames[0])
    taken = slot.take()
    for f in frames[1:8]:
        core.on_frame(f)
    core.on_result(slot.result(taken, torch.from_numpy(picture(0)[1])))
    out = core.on_frame(frames[8])[0].output.numpy()[..., 0] / 255
    truth, stale = picture(8)[1], picture(0)[1]
    assert np.abs(out - truth).mean() < 0.5 * np.abs(stale - truth).mean()


# -- LiveStream with the real worker ----------------------------------------------------------------
class GatedEngine:
    """alpha = red / 255; each pass waits until the test releases it."""

    def __init__(self) -> None:
        self.gate = threading.Semaphore(0)
        self.calls: list[list[int]] = []

    def predict(self, images):
        assert self.gate.acquire(timeout=20), "the test never released the engine"
        batch = images if isinstance(images, list) else list(images) if images.ndim == 4 else [images]
        self.calls.append([int(image[0, 0, 0]) for image in batch])
        out = [image[..., 0].float() / 255 for image in batch]
        return out if isinstance(images, list) else torch.stack(out) if images.ndim == 4 else out[0]


async def test_streams_share_one_worker_and_every_frame_comes_out(monkeypatch):
    # A network slower than the camera whatever its measured time here: no keyframe is held.
    monkeypatch.setattr(core_module, "HOLD_SHARE", 0.0)
    engine = GatedEngine()
    worker = InferenceWorker(engine)
    worker.start()
    streams = [LiveStream(worker, finisher(), Settings(), name=f"s{n}") for n in range(2)]
    outs: list[list[Frame]] = [[], []]
    runs = [asyncio.ensure_future(s.run(out.append)) for s, out in zip(streams, outs, strict=True)]
    blocker = worker.open_slot("blocker")  # holds the engine while both streams offer frames

    async def hold_engine() -> None:
        blocker.put(frame(0, value=1))
        await until(lambda: blocker.busy, "the blocker in the engine")

    await hold_engine()
    for s, base in zip(streams, (10, 100), strict=True):
        s.offer(frame(0, value=base))
    await until(lambda: all(s.slot._waiting is not None for s in streams), "both first frames offered")
    engine.gate.release(2)  # the blocker's pass, then one pass for both streams
    await until(lambda: all(s.core.stats.keyframes for s in streams), "both first results")
    assert engine.calls == [[1], [10, 100]]
    assert sum(t.name == "streamer-infer" for t in threading.enumerate()) == 1
    await hold_engine()
    for i in range(1, 21):  # the network is held busy: frames keep going out on propagated mattes
        for s, base in zip(streams, (10, 100), strict=True):
            s.offer(frame(i, value=base + i))
        await until(lambda i=i: all(len(out) == i + 1 for out in outs), f"frame {i} out of both")
    for out in outs:  # frame 0 waited for its own result (there was no matte before it)
        assert ids(out) == list(range(21))
        assert [f.meta["propagated"] for f in out] == [False] + [True] * 20
    engine.gate.release(2)
    await until(lambda: all(s.core.stats.keyframes == 2 for s in streams), "the second results")
    # The next pass took each stream's newest frame of the moment the network came free.
    assert engine.calls[2:] == [[1], [30, 120]]
    blocker.close()
    for s in streams:
        s.close()
    engine.gate.release(10)
    await asyncio.gather(*runs)
    await worker.aclose()


class CountingCore(LiveCore):
    frames_seen = 0

    def on_frame(self, item):
        CountingCore.frames_seen += 1
        return super().on_frame(item)


async def test_run_and_serve_go_through_the_same_core(monkeypatch):
    from aiortc import RTCPeerConnection

    from streamer.live.peer import PeerSession

    monkeypatch.setattr(core_module, "LiveCore", CountingCore)
    engine = GatedEngine()
    engine.gate.release(1000)
    # `streamer run`'s live stage: a camera of 30 frames through the pipeline to a sink.
    from streamer.live.core import LiveStage

    sink = ListSink(delay=0.05)  # slow enough that its own queue drops frames too

    class Camera(ListSource):
        # A camera does not stop after its 30th frame: it stays open until a frame is out,
        # however long the network's first pass takes on this machine.
        def frames(self):
            yield from super().frames()
            deadline = time.monotonic() + 120
            while not sink.frames and not self.closed.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)

    source = Camera([frame(i) for i in range(30)], live=True)
    stage = LiveStage(engine, finisher(), Settings(PropagationParams(enabled=False)))
    stats = await Pipeline(source, [stage], [sink], live=True).run()
    # An unpaced camera outruns the stage: what it did not see was dropped, and counted. Only the
    # drops before the core count here: the sink's own queue may also let a frame the core saw go.
    before_core = stats.queues[0].dropped + stage.dropped
    assert CountingCore.frames_seen + before_core == 30 and sink.frames
    assert stats.dropped >= stage.dropped == stage.stream.dropped  # the summary counts the stage's
    # `streamer serve`'s peer: the same core class, driven the same way.
    worker = InferenceWorker(engine)
    worker.start()
    pool = __import__("concurrent.futures").futures.ThreadPoolExecutor(1)
    peer = PeerSession(RTCPeerConnection(), worker, finisher(), pool)
    assert isinstance(peer.stream.core, CountingCore)
    seen = CountingCore.frames_seen
    for i in range(5):
        peer._offer(frame(i))
    await until(lambda: CountingCore.frames_seen + peer.stream.dropped == seen + 5, "the peer's frames")
    await until(lambda: peer.track.published > 0, "a frame published")
    await peer.close()
    await worker.aclose()
    pool.shutdown()


async def test_a_live_pipeline_delivers_every_camera_frame_in_order_at_its_rate():
    from streamer.live.core import LiveStage

    engine = GatedEngine()
    engine.gate.release(1000)
    clock = Clock()
    sink = ListSink()
    delivered = threading.Condition()

    def camera_interval(seconds: float) -> None:
        # The injected clock moves one frame interval once the frame before is out: a
        # machine that keeps up, whatever this one's real speed.
        with delivered:
            assert delivered.wait_for(lambda: len(sink.frames) == len(clock.sleeps) + 1, timeout=120)
        clock.sleep(seconds)

    class Sink(ListSink):
        def write(self, f):
            with delivered:
                sink.frames.append(f)
                delivered.notify_all()

    source = PacedSource(
        ListSource([frame(i) for i in range(60)], live=True), clock=clock, sleep=camera_interval
    )
    stage = LiveStage(engine, finisher(), clock=clock)
    await Pipeline(source, [stage], [Sink()], live=True).run()
    assert [f.index for f in sink.frames] == list(range(60))
    assert clock.sleeps == [pytest.approx(1 / 30)] * 59
    assert stage.stream.core.stats.delivered_rate.rate(clock.now) == pytest.approx(30, rel=0.01)


# -- `--live` file playback -----------------------------------------------------------------------
def test_a_file_plays_at_its_own_rate_by_pts():
    clock = Clock()
    start = clock.now
    frames = [frame(i) for i in (0, 1, 2, 4, 5)]  # a variable-rate file: frame 3 missing
    times = []
    for _ in paced(frames, clock=clock, sleep=clock.sleep):
        times.append(round(clock.now - start, 6))
    assert times == [0.0, round(1 / 30, 6), round(2 / 30, 6), round(4 / 30, 6), round(5 / 30, 6)]


def test_a_stalled_file_plays_on_from_now_instead_of_rushing():
    clock = Clock()
    out = []
    for f in paced([frame(i) for i in range(4)], clock=clock, sleep=clock.sleep):
        out.append(clock.now)
        if f.index == 1:
            clock.now += 5.0  # the decoder stalled for 5 s
    gaps = np.diff(out)
    assert gaps[0] == pytest.approx(1 / 30) and gaps[2] == pytest.approx(1 / 30)
