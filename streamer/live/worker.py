"""One inference thread shared by every live stream (`streamer.live.core`: each `serve` peer,
a live `run` job).

Each stream owns a `WorkerSlot` and offers it keyframes. A slot holds at most one waiting frame
(a newer frame replaces it) and at most one frame inside the engine, so latency never builds up
however slow the model is. Whenever the thread is free it takes the waiting frame of every slot
that has nothing in flight and runs them through the engine in one `predict` call: streams share
the GPU/CPU, not a queue.

When the network is much slower than the cameras (a CPU), the frame waiting when the thread
comes free is, on average, half a frame interval old, and its result has that much further to be
carried. So if a waiting frame is stale (older than a quarter of its camera's interval) and its
successor is due soon, the thread waits for it, but only while the wait costs at most
`FRESH_WAIT_SHARE` of a batch's time: never on a GPU, where inference is quicker than a frame
interval and the thread is idle when frames arrive anyway.

After a batch the thread stays out of the way until every stream has taken its result in (the
stream says so with `WorkerSlot.sent`), for at most `QUIET_SHARE` of a batch's time: on a
machine without a spare core, the network's threads would otherwise slow that stretch.

Still images (the HTTP image API, `streamer.live.api`) use the same thread through slots opened
with `image=True`, one per request. They come second: an image goes into the engine alone, when
no live frame is waiting, or after `LIVE_TURNS` live batches in a row have passed it over (a busy
CPU always has a live frame waiting, and an image must be answered some time). So a live stream
waits at most one image's pass for its next keyframe, while its frames keep flowing with mattes
carried by optical flow; and a batch of live frames is never made longer by an image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamer.frame import Frame
from streamer.live.stats import Interval
from streamer.pipeline.stages import predict_alphas
from streamer.priority import BACKGROUND_NICE, lower_thread_priority

log = logging.getLogger(__name__)

FRESH_WAIT_SHARE = 0.05
"""The longest the worker waits for fresher frames, as a share of its last batch's time."""
QUIET_SHARE = 0.05
"""The longest the worker waits for a batch's results to be sent, as a share of its time."""
LIVE_TURNS = 3
"""Live batches that may pass a waiting image over before it gets the network once: with live
streams keeping the network busy, images get at most a quarter of its passes."""


class SlotClosed(Exception):
    """The slot was closed while someone awaited its next result."""


@dataclass
class WorkerStats:
    batches: int = 0
    frames: int = 0
    last_batch_size: int = 0
    last_infer_s: float = 0.0
    total_infer_s: float = 0.0
    max_batch_size: int = 0
    fresh_waits: int = 0
    """Batches started late to take frames that had just arrived, and the total time so spent."""
    fresh_wait_s: float = 0.0
    quiet_wait_s: float = 0.0
    """Time spent waiting for results to be sent before the next batch."""
    images: int = 0
    """Still images matted (batches of one, counted apart: the live figures are live frames only)."""
    image_infer_s: float = 0.0

    @property
    def mean_infer_s(self) -> float:
        return self.total_infer_s / self.batches if self.batches else 0.0


class WorkerSlot:
    """A peer's place in the worker: `put` frames in (from the event loop), `await get()` results."""

    def __init__(
        self,
        worker: InferenceWorker,
        name: str,
        prepare: Callable[[object], Frame] | None,
        image: bool = False,
    ) -> None:
        self.name = name
        self.image = image
        """A still image's slot: it waits while live frames go first (see the module's doc)."""
        self._worker = worker
        self._prepare = prepare
        self._waiting: object | None = None
        self._puts = Interval(longest=1.0, weight=0.1)
        """Between two frames put (a pause is not a frame rate); `.last` is the waiting frame's
        arrival, when one waits."""
        self._in_flight = False
        self.last_taken: object | None = None
        """The last item the engine took (what `put` was given), for callers that pace their offers."""
        self._unsent = False
        """A result was delivered and the peer has not said it went out yet."""
        self._result: Frame | BaseException | None = None
        self._ready = asyncio.Event()
        self.closed = False
        self.submitted = 0
        self.completed = 0
        self.dropped = 0
        """Frames replaced before the engine took them, plus results replaced before `get` took them."""

    @property
    def busy(self) -> bool:
        return self._in_flight

    @property
    def last_infer_s(self) -> float:
        """Seconds the worker's last batch spent in the engine (0 before the first)."""
        return self._worker.stats.last_infer_s

    def put(self, frame: Frame | object) -> None:
        """Offer the newest frame; never blocks (the older waiting frame, if any, is dropped).

        With a `prepare` function, `frame` may be anything it turns into a `Frame`: that work
        is then done in the worker thread, and only for frames that are not dropped."""
        if self.closed:
            return
        now = self._worker.clock()
        with self._worker._cond:
            if self._waiting is not None:
                self.dropped += 1
            self._waiting = frame
            self._puts.note(now)
            self.submitted += 1
            self._worker._cond.notify()

    async def get(self) -> Frame:
        """The next frame with `alpha` set; raises what the engine raised, or `SlotClosed`."""
        while self._result is None:
            if self.closed:
                raise SlotClosed(self.name)
            self._ready.clear()
            await self._ready.wait()
        result, self._result = self._result, None
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._worker._remove(self)

    def sent(self) -> None:
        """The last result has gone out (composited, encoded, sent): the worker may go on."""
        with self._worker._cond:
            self._unsent = False
            self._worker._cond.notify()

    # Called by the worker thread with the lock held.
    def _successor_due(self, now: float) -> tuple[float, float] | None:
        """(expected, latest) arrival of the successor of a stale waiting frame; None if not stale.

        Stale: older than a quarter interval, so what the network starts on is at most that old."""
        interval, last_put = self._puts.value, self._puts.last
        if self._waiting is None or self._in_flight or self.closed or interval is None:
            return None
        if now - last_put <= interval / 4:
            return None
        # A quarter interval more before giving up, for network jitter.
        return last_put + interval, last_put + 1.25 * interval

    @property
    def _ready_to_take(self) -> bool:
        return not (self.closed or self._in_flight or self._waiting is None)

    def _take(self) -> object | None:
        if not self._ready_to_take:
            return None
        frame, self._waiting = self._waiting, None
        self._in_flight = True
        self.last_taken = frame
        return frame

    # Called on the event loop.
    def _deliver(self, result: Frame | BaseException) -> None:
        if self.closed:
            return
        if isinstance(self._result, Frame):
            self.dropped += 1
        self._result = result
        self.completed += 1
        self._ready.set()


class InferenceWorker:
    """Owns the engine and the one thread that calls it; use it from a single event loop.

    `engine` needs `predict(images)` as in `streamer.engine.MattingEngine`. `resize(size)`,
    when given, is called in the worker thread between batches after `set_size` and returns
    the engine to use from then on (the input size is shared by all peers). The thread runs
    `nice` steps below the rest of the process (`streamer.priority`), so that decoding,
    compositing and encoding each frame never wait behind the network. `clock` times every
    decision and statistic (tests drive their own; a wait ends early when another thread
    notifies `_cond`).
    """

    def __init__(
        self,
        engine,
        *,
        resize: Callable[[tuple[int, int]], object] | None = None,
        size: tuple[int, int] | None = None,
        nice: int = BACKGROUND_NICE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.nice = nice
        self._resize = resize
        self.size = size
        self._pending_size: tuple[int, int] | None = None
        self._cond = threading.Condition()
        self._slots: dict[WorkerSlot, None] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = WorkerStats()
        self._counter = 0
        self._passed_over = 0
        """Live batches in a row that went ahead of a waiting image."""

    @property
    def peers(self) -> int:
        """Live streams (image requests are not peers)."""
        return sum(not slot.image for slot in self._slots)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="streamer-infer", daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        with self._cond:
            self._stopping = True
            slots = list(self._slots)
            self._cond.notify_all()
        for slot in slots:
            slot.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def open_slot(
        self,
        name: str | None = None,
        prepare: Callable[[object], Frame] | None = None,
        *,
        image: bool = False,
    ) -> WorkerSlot:
        """A new peer's slot; `prepare` (run in the worker thread) turns what it puts into a Frame.

        `image=True`: a still image's slot, served after live frames (see the module's doc)."""
        if self._thread is None or self._stopping:
            raise RuntimeError("the inference worker is not running")
        self._counter += 1
        slot = WorkerSlot(self, name or f"slot-{self._counter}", prepare, image)
        with self._cond:
            self._slots[slot] = None
        return slot

    @property
    def requested_size(self) -> tuple[int, int] | None:
        """The size of the next batch: a pending change, else the current size."""
        return self._pending_size or self.size

    def set_size(self, size: tuple[int, int]) -> None:
        """Change the engine input size for every peer, from the next batch on."""
        if self._resize is None:
            raise RuntimeError("this worker cannot change the model size")
        with self._cond:
            self._pending_size = (int(size[0]), int(size[1]))
            self._cond.notify()

    def _remove(self, slot: WorkerSlot) -> None:
        with self._cond:
            slot.closed = True
            slot._waiting = None
            self._slots.pop(slot, None)
        slot._ready.set()

    def _next_batch(self) -> tuple[list[tuple[WorkerSlot, object]], tuple[int, int] | None] | None:
        with self._cond:
            waited_from = None
            while True:
                if self._stopping:
                    return None
                now = self.clock()
                budget = FRESH_WAIT_SHARE * self.stats.last_infer_s
                due = None if self._pending_size else self._fresher_frames_due(now, budget)
                if due is not None and (deadline := min(due, (waited_from or now) + budget)) > now:
                    waited_from = waited_from or now
                    self._cond.wait(deadline - now)
                    continue
                batch = self._take_batch()
                size, self._pending_size = self._pending_size, None
                if batch or size:
                    if waited_from is not None:
                        self.stats.fresh_waits += 1
                        self.stats.fresh_wait_s += self.clock() - waited_from
                    return batch, size
                self._cond.wait()

    def _take_batch(self) -> list[tuple[WorkerSlot, object]]:
        """Every waiting live frame, or one image when its turn has come (lock held)."""
        image = next((slot for slot in self._slots if slot.image and slot._ready_to_take), None)
        live_waiting = any(not slot.image and slot._ready_to_take for slot in self._slots)
        if image is not None and (not live_waiting or self._passed_over >= LIVE_TURNS):
            self._passed_over = 0
            return [(image, image._take())]
        batch = [
            (slot, item) for slot in self._slots if not slot.image and (item := slot._take()) is not None
        ]
        if image is not None:
            self._passed_over += 1
        return batch

    def _fresher_frames_due(self, now: float, budget: float) -> float | None:
        """Until when to wait for the successors of stale frames, or None to start now (lock held)."""
        dues = [due for slot in self._slots if (due := slot._successor_due(now)) is not None]
        if not dues:
            return None
        expected, latest = max(d[0] for d in dues), max(d[1] for d in dues)
        return latest if expected - now <= budget else None

    def _run(self) -> None:
        lower_thread_priority(self.nice)
        while (job := self._next_batch()) is not None:
            batch, size = job
            if size is not None:
                self._apply_size(size)
            if not batch:
                continue
            started = self.clock()
            try:
                frames = [slot._prepare(item) if slot._prepare else item for slot, item in batch]
                started = self.clock()  # the engine's time only, not the RGB conversion
                alphas = predict_alphas(self.engine, [frame.image for frame in frames])
                results: list[Frame | BaseException] = []
                infer_s = self.clock() - started
                for frame, alpha in zip(frames, alphas, strict=True):
                    frame.alpha = alpha
                    frame.meta["infer_s"] = infer_s
                    results.append(frame)
            except Exception as err:  # a failed batch is reported to each peer, the worker goes on
                log.exception("inference failed")
                results = [err] * len(batch)
            self._record(batch, self.clock() - started)
            with self._cond:
                for (slot, _), result in zip(batch, results, strict=True):
                    slot._in_flight = False
                    # Nobody waits for an image's result to be sent: its request takes it.
                    slot._unsent = isinstance(result, Frame) and not slot.image
            for (slot, _), result in zip(batch, results, strict=True):
                self._call_soon(slot._deliver, result)
            self._wait_until_sent([slot for slot, _ in batch])

    def _wait_until_sent(self, slots: list[WorkerSlot]) -> None:
        started = self.clock()
        deadline = started + QUIET_SHARE * self.stats.last_infer_s
        with self._cond:
            while not self._stopping and any(slot._unsent and not slot.closed for slot in slots):
                if (left := deadline - self.clock()) <= 0:
                    break
                self._cond.wait(left)
        self.stats.quiet_wait_s += self.clock() - started

    def _apply_size(self, size: tuple[int, int]) -> None:
        try:
            self.engine = self._resize(size)
            self.size = size
        except Exception:
            log.exception("could not change the model size to %sx%s", *size)

    def _record(self, batch: list[tuple[WorkerSlot, object]], seconds: float) -> None:
        stats = self.stats
        if batch[0][0].image:
            stats.images += 1
            stats.image_infer_s += seconds
            return
        batch_size = len(batch)
        stats.batches += 1
        stats.frames += batch_size
        stats.last_batch_size = batch_size
        stats.max_batch_size = max(stats.max_batch_size, batch_size)
        stats.last_infer_s = seconds
        stats.total_infer_s += seconds

    def _call_soon(self, fn, *args) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn, *args)
