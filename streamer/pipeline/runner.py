"""Wires source -> stages -> sinks with bounded queues and runs them on asyncio.

Each blocking piece (the source's decoder, every stage, every sink) gets its own
single-thread executor, so decode, inference, compositing and encode overlap and the event
loop only moves frames between queues. Frames only ever flow downstream; control flows
through `stop` (finish cleanly: the source stops, what is in flight drains, sinks close)
and task cancellation (abort: sinks still close, in their own threads).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence

from streamer.errors import StreamerError
from streamer.frame import Frame
from streamer.pipeline.queues import END, make_queue
from streamer.pipeline.stages import Stage
from streamer.pipeline.stats import PipelineStats
from streamer.priority import lower_thread_priority
from streamer.sinks.base import Sink
from streamer.sources.base import Source

log = logging.getLogger(__name__)

RECORDING_BUFFER = 64
"""Frames a live job's recording (a sink that is not `realtime`: a file) may fall behind by before
its oldest are dropped. With the one-frame slot of a real-time sink, libx264 dropped 1 of 300
frames of a 640x480 camera and 9 of 300 at 1280x720 (it fills its lookahead, ~40 frames, then
encodes several at once: one write took 65 ms). About 2 s of a 30 fps camera; the frames are
already composited, so this holds references, never extra work."""


def sink_name(sink: Sink) -> str:
    """What the job's summary calls a sink: its file, else its label ("the virtual camera")."""
    path = getattr(sink, "path", None)
    return str(path) if path is not None else getattr(sink, "label", type(sink).__name__)


class StageError(StreamerError):
    """A stage failed for a reason that is not a user mistake; the message names the stage."""

    exit_code = 1


def _stage_error(name: str, err: BaseException) -> StreamerError:
    if isinstance(err, StreamerError):
        return err
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    wrapped = StageError(f"{name} stage failed: {type(err).__name__}: {detail} (run with -v for details)")
    wrapped.__cause__ = err
    return wrapped


class Pipeline:
    """One source feeding a chain of stages and one or more sinks.

    `live` picks the queue policy (latest frame wins, or lossless with backpressure);
    `batch_size` frames go through the stages together (file jobs; live uses 1).
    """

    def __init__(
        self,
        source: Source,
        stages: Sequence[Stage],
        sinks: Sequence[Sink],
        *,
        live: bool,
        batch_size: int = 1,
        queue_size: int | None = None,
        on_frame: Callable[[Frame], None] | None = None,
    ) -> None:
        if not sinks:
            raise ValueError("a pipeline needs at least one sink")
        self.source = source
        self.stages = list(stages)
        self.sinks = list(sinks)
        self.live = live
        self.batch_size = 1 if live else max(1, batch_size)
        # Live: a slot of one frame per hop keeps latency at one frame per stage at most.
        # Files: room for two batches lets a stage start its next batch while the one
        # downstream is still busy, without letting memory grow.
        self.queue_size = queue_size or (1 if live else 2 * self.batch_size)
        self.on_frame = on_frame
        self.stats = PipelineStats([s.name for s in self.stages], len(self.sinks))
        self._stop = threading.Event()

    def _is_recording(self, sink: Sink) -> bool:
        return self.live and not getattr(sink, "realtime", True)

    def _sink_queue_size(self, sink: Sink) -> int:
        return max(self.queue_size, RECORDING_BUFFER) if self._is_recording(sink) else self.queue_size

    def stop(self) -> None:
        """Finish cleanly: no new frames are read; everything in flight is delivered."""
        self._stop.set()

    async def run(self) -> PipelineStats:
        loop = asyncio.get_running_loop()
        executors: list[concurrent.futures.ThreadPoolExecutor] = []

        def executor(name: str, background: bool = False) -> concurrent.futures.ThreadPoolExecutor:
            ex = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"streamer-{name}",
                initializer=lower_thread_priority if background else None,
            )
            executors.append(ex)
            return ex

        hops = [make_queue(self.live, self.queue_size) for _ in range(len(self.stages) + 1)]
        sink_queues = [make_queue(self.live, self._sink_queue_size(sink)) for sink in self.sinks]
        sink_executors = [executor(f"sink{i}") for i in range(len(self.sinks))]
        self.stats.queues = hops + sink_queues
        self.stats.outputs = [
            (sink_name(sink), queue, self._is_recording(sink), getattr(sink, "keep_up", ""))
            for sink, queue in zip(self.sinks, sink_queues, strict=True)
        ]
        self.stats.droppers = [stage for stage in self.stages if hasattr(stage, "dropped")]
        self.stats.start()
        finished = False
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read_source(loop, executor("source"), hops[0]))
                for i, stage in enumerate(self.stages):
                    # Live: capture, compositing and the sinks must not wait behind the network.
                    ex = executor(stage.name, background=self.live and getattr(stage, "compute_bound", False))
                    if hasattr(stage, "drive"):  # a stage with its own flow (streamer.live.core)
                        group.create_task(self._drive_stage(ex, stage, hops[i], hops[i + 1]))
                    else:
                        group.create_task(self._run_stage(loop, ex, stage, hops[i], hops[i + 1]))
                group.create_task(self._fan_out(hops[-1], sink_queues))
                for i, (sink, queue, ex) in enumerate(
                    zip(self.sinks, sink_queues, sink_executors, strict=True)
                ):
                    group.create_task(self._write_sink(loop, ex, i, sink, queue))
            finished = True
        except BaseExceptionGroup as group_err:
            first = group_err.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            # Out of the group, keeping the cause that -v shows.
            raise first from first.__cause__
        finally:
            self._stop.set()
            self.source.close()
            # After a failure, a sink that cannot close either (a full disk) must not hide why.
            await self._close_sinks(loop, sink_executors, report=finished)
            for ex in executors:
                ex.shutdown(wait=False, cancel_futures=True)
            self.stats.finish()
        return self.stats

    async def _read_source(self, loop, ex, out) -> None:
        async def admit(frame: Frame) -> None:
            await out.put(frame)
            # Counted on the loop once it is in: a frame given up while an aborted job waited for
            # room never entered it, so `frames_in` is exactly what was delivered or let go.
            self.stats.frames_in += 1

        def pump() -> None:
            try:
                for frame in self.source.frames():
                    if self._stop.is_set():
                        break
                    frame.captured_at = frame.captured_at or time.monotonic()
                    done = asyncio.run_coroutine_threadsafe(admit(frame), loop)
                    # Backpressure: wait for room, but notice a stop while waiting.
                    while True:
                        try:
                            done.result(timeout=0.1)
                            break
                        except concurrent.futures.TimeoutError:
                            if self._stop.is_set():
                                # Aborting: nobody may ever make room, so give up the frame.
                                done.cancel()
                                return
            except Exception as err:
                raise _stage_error("source", err) from err

        await loop.run_in_executor(ex, pump)
        await out.put(END)

    async def _drive_stage(self, ex, stage, inq, outq) -> None:
        try:
            await stage.drive(ex, inq, outq, lambda seconds: self.stats.record_stage(stage.name, seconds, 1))
        except Exception as err:
            raise _stage_error(stage.name, err) from err

    async def _run_stage(self, loop, ex, stage: Stage, inq, outq) -> None:
        while True:
            item = await inq.get()
            if item is END:
                await outq.put(END)
                return
            batch = [item]
            while len(batch) < self.batch_size:
                nxt = await inq.get()
                if nxt is END:
                    await self._process(loop, ex, stage, batch, outq)
                    await outq.put(END)
                    return
                batch.append(nxt)
            await self._process(loop, ex, stage, batch, outq)

    async def _process(self, loop, ex, stage: Stage, batch: list[Frame], outq) -> None:
        if self._stop.is_set() and stage is self.stages[0]:
            # Stopping: frames not yet inferred are let go so the job ends promptly; what is
            # already past inference still reaches the sinks.
            self.stats.discarded += len(batch)
            return

        def call() -> tuple[list[Frame], float]:
            start = time.perf_counter()
            try:
                frames = stage(batch)
            except Exception as err:
                raise _stage_error(stage.name, err) from err
            return frames, time.perf_counter() - start

        frames, seconds = await loop.run_in_executor(ex, call)
        self.stats.record_stage(stage.name, seconds, len(frames))
        for frame in frames:
            await outq.put(frame)

    async def _fan_out(self, inq, sink_queues) -> None:
        while True:
            item = await inq.get()
            for queue in sink_queues:
                await queue.put(item)
            if item is END:
                return

    async def _write_sink(self, loop, ex, index: int, sink: Sink, inq) -> None:
        def write(frame: Frame) -> None:
            try:
                sink.write(frame)
            except Exception as err:
                raise _stage_error(f"sink {type(sink).__name__}", err) from err

        while True:
            item = await inq.get()
            if item is END:
                return
            await loop.run_in_executor(ex, write, item)
            self.stats.record_output(index, item)
            if self.on_frame is not None and index == 0:
                self.on_frame(item)

    async def _close_sinks(self, loop, sink_executors, *, report: bool) -> None:
        errors: list[tuple[Sink, Exception]] = []
        for sink, ex in zip(self.sinks, sink_executors, strict=True):
            # Closing in the sink's own thread queues it behind a write still in progress.
            try:
                await asyncio.shield(loop.run_in_executor(ex, sink.close))
            except Exception as err:  # keep closing the others: each output must stay playable
                log.warning("closing %s failed: %s", type(sink).__name__, err)
                errors.append((sink, err))
            except asyncio.CancelledError:
                sink.close()
        if report and errors:
            sink, err = errors[0]
            raise _stage_error(f"sink {type(sink).__name__}", err) from err
