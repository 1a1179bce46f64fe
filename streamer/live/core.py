"""One live stream's chain, the same for `streamer run` (a camera or `--live` file into a virtual
camera, a preview, files) and `streamer serve` (each WebRTC peer): keyframe scheduling,
propagation, smoothing and compositing.

Every frame from the source goes out, at the source's rate. The network (the `InferenceWorker`
shared by every stream) runs whenever it is free on the newest frame offered to it, a keyframe.
Every frame gets a matte carried by optical flow from the newest keyframe result
(`streamer.propagation.Propagator`); a result, which comes back late, is carried forward over the
frames that passed meanwhile before it replaces the matte. The per-frame path never waits for
the network: frames before the stream's first result go out with no matte (the background alone).

When the network keeps up with the camera (a GPU), a keyframe is held until its own result is
back (never past the next frame's arrival), so every frame is matted by the network itself, as
without propagation; `keyframe_every: k` offers at most every k-th frame, with propagated frames
in between. With propagation off every frame is offered and only the network's results go out:
one frame per network pass.

`LiveCore` is the per-stream state, called from one thread at a time; `LiveStream` drives it from
the event loop: frames in order (the newest wins if the stream's thread falls behind), network
results as they arrive, both handed to that thread one at a time.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
import torch

from streamer.frame import Frame
from streamer.live.stats import Interval, LatencyWindow, RateMeter
from streamer.live.worker import InferenceWorker, SlotClosed, WorkerSlot
from streamer.pipeline.stages import Finisher
from streamer.propagation import PropagationParams, Propagator

log = logging.getLogger(__name__)

HOLD_SHARE = 0.8
"""A keyframe waits for its own result when the network's last batch took at most this share of
a frame interval: the network keeps up, and the result is back before the next frame."""


class Settings:
    """A stream's propagation parameters, replaceable while it runs (live controls).

    An attribute assignment is atomic for the thread reading it, like the compositor's params."""

    def __init__(self, params: PropagationParams | None = None) -> None:
        self.params = params or PropagationParams()


@dataclasses.dataclass
class CoreStats:
    frames: int = 0
    delivered: int = 0
    propagated: int = 0
    """Frames delivered with a matte carried by flow (the others got the network's own)."""
    keyframes: int = 0
    unmatted: int = 0
    """Frames delivered before their stream had any matte (before the first network result):
    with the last matte shown, or with none (the background only)."""

    def __post_init__(self) -> None:
        self.delivered_rate = RateMeter()
        self.keyframe_rate = RateMeter(window_s=5.0)  # a CPU's keyframes come ~1-5 a second
        self.frame_s = LatencyWindow(300)
        """Seconds of this thread's work per frame (propagation, smoothing, compositing)."""


class LiveCore:
    """Per-stream state; `on_frame` for every frame in order, `on_result` for each network result.

    Both return the frames to deliver now (with `.output` set), in order. `prepare` turns what
    the stream is given into a `Frame` (e.g. a decoded WebRTC frame into RGB); `present` turns a
    finished frame into what the sink takes (stored in `frame.meta["presented"]`); both run in the
    calling thread."""

    def __init__(
        self,
        slot: WorkerSlot,
        finisher: Finisher,
        settings: Settings,
        *,
        prepare: Callable[[object], Frame] | None = None,
        present: Callable[[Frame], object] | None = None,
        make_propagator: Callable[[PropagationParams], object] = Propagator,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slot = slot
        self.finisher = finisher
        self.settings = settings
        self._prepare = prepare
        self._present = present
        self._make_propagator = make_propagator
        self._clock = clock
        self._propagator = None
        self._propagator_params: PropagationParams | None = None
        self._first_id = 0
        """The first frame id the current propagator stepped: older results are not its own."""
        self._next_id = 0
        self._pending: tuple[Frame, np.ndarray | None, np.ndarray | None] | None = None
        self._interval = Interval(longest=1.0, weight=0.1)
        """Between camera frames."""
        self._keyframe_interval = Interval(longest=10.0, weight=0.2)
        """Between keyframes, in the frames' own time, for the propagator (how fine a flow the
        carry needs) and the smoother (how long to average); a CPU's come 0.1-1 s apart."""
        self._shown: torch.Tensor | None = None
        """The matte of the last frame delivered (smoothed, on the compositor's device)."""
        self.stats = CoreStats()

    # -- the two entry points -------------------------------------------------------------------
    def on_frame(self, item) -> list[Frame]:
        started = self._clock()
        frame = self._prepare(item) if self._prepare is not None else item
        frame_id = self._next_id
        self._next_id += 1
        frame.meta["live_id"] = frame_id
        self.stats.frames += 1
        self._interval.note(frame.time)
        out = self._release_pending()
        params = self.settings.params
        propagator = self._propagator_for(params, frame_id)
        if propagator is None:
            self._offer(frame)  # every frame; the newest waiting one wins
        else:
            keyframe = self._keyframe_due(frame_id, params.keyframe_every)
            if keyframe:
                self._offer(frame)  # first, so a GPU starts while the flow is computed
            image = np.ascontiguousarray(frame.image.numpy())
            alpha = propagator.step(frame_id, image, self._keyframe_interval.value)
            correction = propagator.correction()
            if keyframe and self._network_keeps_up():
                self._pending = (frame, alpha, correction)  # its own result is back before the next frame
            elif alpha is None:
                out.append(self._without_matte(frame))
            else:
                out.append(self._finish(frame, alpha, propagated=True, correction=correction))
        seconds = self._clock() - started
        self.stats.frame_s.add(seconds)
        for done in out:
            done.meta["frame_s"] = seconds
        return out

    def on_result(self, result: Frame) -> list[Frame]:
        """A network result (the offered frame, with `.alpha`); raises what the engine raised."""
        if isinstance(result, BaseException):
            raise result
        self.stats.keyframes += 1
        self.stats.keyframe_rate.tick(self._clock())
        self._keyframe_interval.note(result.time)
        frame_id = result.meta["live_id"]
        if self._propagator is None:
            return [self._finish(result, result.alpha, propagated=False)]
        if frame_id >= self._first_id:
            alpha = result.alpha.detach().to("cpu", torch.float32).numpy()
            self._propagator.keyframe(frame_id, alpha)
        pending = self._pending
        if pending is not None and pending[0].meta["live_id"] == frame_id:
            self._pending = None
            return [self._finish(pending[0], result.alpha, propagated=False)]
        return []

    def flush(self) -> list[Frame]:
        """The frame held for its keyframe, if any (end of stream)."""
        return self._release_pending()

    # -- helpers --------------------------------------------------------------------------------
    def _propagator_for(self, params: PropagationParams, frame_id: int):
        if not params.enabled:
            self._propagator = self._propagator_params = None
            return None
        if self._propagator is None:
            # Just turned on: start from the next keyframe (results offered before are not its own).
            self._propagator = self._make_propagator(params)
            self._first_id = frame_id
        elif params is not self._propagator_params:
            self._propagator.params = params  # the propagator keeps its matte across new settings
        self._propagator_params = params
        return self._propagator

    def _keyframe_due(self, frame_id: int, every: int) -> bool:
        taken = self.slot.last_taken
        last = taken.meta.get("live_id", -every) if isinstance(taken, Frame) else -every
        return frame_id - last >= every

    def _offer(self, frame: Frame) -> None:
        # The worker sets `.alpha` on what it is given: a copy, as this thread sets its own.
        self.slot.put(dataclasses.replace(frame, meta=dict(frame.meta)))

    def _network_keeps_up(self) -> bool:
        infer = self.slot.last_infer_s
        interval = self._interval.value
        return bool(infer) and interval is not None and infer <= HOLD_SHARE * interval

    def _release_pending(self) -> list[Frame]:
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        frame, alpha, correction = pending
        if alpha is None:
            return [self._without_matte(frame)]
        return [self._finish(frame, alpha, propagated=True, correction=correction)]

    def _without_matte(self, frame: Frame) -> Frame:
        """A frame that came before its stream had a matte still goes out at once (the camera's
        rate does not wait for the network's first pass, which a starved CPU may take seconds
        over): with the last matte shown (propagation was just switched back on), or else with
        none, the background alone. Never the picture unmatted: that would show the room the
        user is replacing."""
        self.stats.unmatted += 1
        shown = self._shown
        if shown is not None and tuple(shown.shape[-2:]) == tuple(frame.image.shape[:2]):
            return self._finish(frame, shown, propagated=False)
        # Not through the smoother: it would ease the first real matte in from this empty one.
        compositor = self.finisher.compositor
        frame.alpha = torch.zeros(frame.image.shape[:2], dtype=torch.float32, device=compositor.device)
        frame.output = compositor(frame.image, frame.alpha, frame.time)
        return self._deliver(frame, propagated=False)

    def _finish(
        self, frame: Frame, alpha, *, propagated: bool, correction: np.ndarray | None = None
    ) -> Frame:
        if isinstance(alpha, np.ndarray):
            alpha = torch.from_numpy(alpha)
        # Network and propagated mattes on one device (a GPU's, when there is one): the smoother
        # starts over whenever the device changes.
        device = self.finisher.compositor.device
        alpha = alpha.to(device, non_blocking=True)
        if correction is not None:
            correction = torch.from_numpy(correction).to(device, non_blocking=True)
        keyframe_interval = self._keyframe_interval.value if self._propagator is not None else None
        self.finisher(frame, alpha, keyframe_interval, correction)
        self._shown = frame.alpha
        return self._deliver(frame, propagated=propagated)

    def _deliver(self, frame: Frame, *, propagated: bool) -> Frame:
        frame.meta["propagated"] = propagated
        if self._present is not None:
            frame.meta["presented"] = self._present(frame)
        self.stats.delivered += 1
        self.stats.propagated += propagated
        self.stats.delivered_rate.tick(self._clock())
        return frame


class LiveStream:
    """Drives one `LiveCore` from the event loop: `offer` frames, `end`, and `run(emit)`.

    Frames wait in a backlog of `backlog` (the oldest is dropped and counted when the stream's
    thread falls behind); network results are never dropped and go first. `executor` runs the
    core (one call at a time, so a shared pool keeps each stream's order); `emit` (plain or async)
    gets each delivered frame on the event loop. With `tolerate_errors` a frame that fails is
    counted and skipped (a call must not end on one bad frame); otherwise the error ends `run`.
    """

    def __init__(
        self,
        worker: InferenceWorker,
        finisher: Finisher,
        settings: Settings | None = None,
        *,
        name: str | None = None,
        executor: Executor | None = None,
        backlog: int = 2,
        tolerate_errors: bool = False,
        **core_options,
    ) -> None:
        self.slot = worker.open_slot(name)
        self.worker = worker
        self.core = LiveCore(self.slot, finisher, settings or Settings(), **core_options)
        self.executor = executor
        self.backlog = backlog
        self.tolerate_errors = tolerate_errors
        self.offered = 0
        self.dropped = 0
        self.max_backlog = 0
        self.errors = 0
        self._frames: collections.deque = collections.deque()
        self._results: collections.deque = collections.deque()
        self._wake = asyncio.Event()
        self._ended = False

    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def finisher(self) -> Finisher:
        return self.core.finisher

    def offer(self, item) -> None:
        """The next frame from the source; never blocks."""
        self.offered += 1
        if len(self._frames) >= self.backlog:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(item)
        self.max_backlog = max(self.max_backlog, len(self._frames))
        self._wake.set()

    def end(self) -> None:
        """No more frames: `run` returns once those offered are delivered."""
        self._ended = True
        self._wake.set()

    def close(self) -> None:
        self.slot.close()
        self.end()

    async def run(self, emit: Callable[[Frame], object]) -> None:
        loop = asyncio.get_running_loop()
        collector = loop.create_task(self._collect(), name=f"{self.slot.name}-results")
        try:
            while True:
                if self._results:
                    call, item = self.core.on_result, self._results.popleft()
                elif self._frames:
                    call, item = self.core.on_frame, self._frames.popleft()
                elif self._ended:
                    call, item = self.core.flush, None
                else:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                try:
                    frames = await loop.run_in_executor(
                        self.executor, call, *(() if item is None else (item,))
                    )
                except Exception:
                    if not self.tolerate_errors:
                        raise
                    self.errors += 1
                    log.exception("%s: could not process a frame", self.slot.name)
                    frames = []
                for frame in frames:
                    done = emit(frame)
                    if inspect.isawaitable(done):
                        await done
                if call is self.core.on_result:
                    self.slot.sent()
                if item is None:
                    return
        finally:
            collector.cancel()

    async def _collect(self) -> None:
        while True:
            try:
                result = await self.slot.get()
            except SlotClosed:
                return
            except Exception as err:  # the engine failed on this batch: the core reports it
                result = err
            self._results.append(result)
            self._wake.set()

    def stats(self) -> dict:
        core, now = self.core.stats, self.core._clock()
        frame_p95 = core.frame_s.percentile(95)
        return {
            "delivered": core.delivered,
            "delivered_fps": round(core.delivered_rate.rate(now), 2),
            "propagated": core.propagated,
            "keyframes": core.keyframes,
            "keyframe_hz": round(core.keyframe_rate.rate(now), 2),
            "frame_ms_p95": None if frame_p95 is None else round(frame_p95 * 1000, 1),
            "infer_ms": round(self.worker.stats.last_infer_s * 1000, 1),
            "backlog_dropped": self.dropped,
            "unmatted": core.unmatted,
        }


class LiveStage:
    """`streamer run`'s live chain as one pipeline stage: a worker of its own and one `LiveStream`.

    The runner calls `drive` instead of calling the stage per batch: frames go in from `inq` in
    order, delivered frames out to `outq`, and `END` through."""

    name = "live"

    def __init__(self, engine, finisher: Finisher, settings: Settings | None = None, **core_options) -> None:
        self.engine = engine
        self.finisher = finisher
        self.settings = settings or Settings()
        self._core_options = core_options
        self.stream: LiveStream | None = None

    async def drive(self, executor: Executor, inq, outq, record: Callable[[float], None]) -> None:
        from streamer.pipeline.queues import END

        worker = InferenceWorker(self.engine)
        worker.start()
        stream = LiveStream(worker, self.finisher, self.settings, executor=executor, **self._core_options)
        self.stream = stream

        async def feed() -> None:
            while (item := await inq.get()) is not END:
                stream.offer(item)
            stream.end()

        async def emit(frame: Frame) -> None:
            record(frame.meta.get("frame_s", 0.0))
            await outq.put(frame)

        feeder = asyncio.get_running_loop().create_task(feed(), name="live-feed")
        try:
            await stream.run(emit)
        finally:
            feeder.cancel()
            stream.close()
            await worker.aclose()
        await outq.put(END)

    @property
    def dropped(self) -> int:
        """Frames the stream let go because its thread fell behind (the newest wins)."""
        return 0 if self.stream is None else self.stream.dropped

    def summary(self) -> str:
        if self.stream is None:
            return ""
        s = self.stream.stats()
        return (
            f"live: {s['keyframes']} keyframes, {s['propagated']} of {s['delivered']} frames with a "
            f"propagated matte, network {s['infer_ms']:.0f} ms a pass"
        )
