import asyncio
import threading

import pytest

from streamer.pipeline.queues import END, LatestQueue, LosslessQueue
from streamer.pipeline.runner import Pipeline, StageError
from tests.harness import FnStage, ListSink, ListSource, make_frames, until


async def test_latest_queue_drops_oldest_and_keeps_end():
    q = LatestQueue(2)
    for i in range(5):
        q.put_nowait(i)
    assert q.dropped == 3
    q.put_nowait(END)  # makes no room: the last frames stay
    assert q.dropped == 3 and len(q) == 3 and q.max_depth == 2  # depths count frames
    q.put_nowait(99)  # (never happens: nothing follows END) a frame still drops the oldest frame
    assert q.dropped == 4
    assert [await q.get(), await q.get(), await q.get()] == [4, END, 99]


async def test_lossless_queue_blocks_until_room():
    q = LosslessQueue(1)
    await q.put(1)
    blocked = asyncio.create_task(q.put(2))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    assert await q.get() == 1
    await asyncio.wait_for(blocked, 1)
    assert await q.get() == 2 and q.dropped == 0


async def test_lossless_delivers_every_frame_in_order_to_every_sink():
    frames = make_frames(40)
    sinks = [ListSink(), ListSink(delay=0.002)]
    stages = [FnStage("infer", delay=0.003), FnStage("smooth"), FnStage("composite", delay=0.001)]
    stats = await Pipeline(ListSource(frames), stages, sinks, live=False, batch_size=4).run()
    for sink in sinks:
        assert [f.index for f in sink.frames] == list(range(40))
        assert [f.pts for f in sink.frames] == list(range(40))
        assert sink.closed == 1
    assert stats.frames_in == 40 and stats.frames_out == [40, 40] and stats.dropped == 0
    assert set(stages[0].batches) == {4}
    # Each stage runs in its own thread, never on the event loop's thread.
    loop_thread = threading.current_thread().name
    assert all(loop_thread not in s.threads for s in stages)
    assert len({name for s in stages for name in s.threads}) == 3


async def test_last_partial_batch_is_flushed():
    sink = ListSink()
    stage = FnStage("infer")
    await Pipeline(ListSource(make_frames(10)), [stage], [sink], live=False, batch_size=4).run()
    assert stage.batches == [4, 4, 2] and len(sink.frames) == 10


async def test_live_drops_instead_of_building_latency():
    frames = make_frames(60)
    sink = ListSink()
    slow = FnStage("infer", delay=0.03)  # 3x slower than the 100 fps source
    pipe = Pipeline(ListSource(frames, live=True, interval=0.01), [slow], [sink], live=True)
    stats = await pipe.run()
    assert stats.dropped > 20
    assert stats.max_queue_depth <= 1
    assert len(sink.frames) + stats.dropped == 60
    indices = [f.index for f in sink.frames]
    assert indices == sorted(indices)
    # Latency stays near one stage time plus one waiting frame; it never grows with the run. A
    # queue that kept every frame would make the last one wait ~1.2 s (60 x 30 ms of work against
    # 60 x 10 ms of camera); the bound leaves a loaded machine 4x the ideal ~0.1 s.
    # The 90th percentile, so that one stall of a loaded machine cannot fail it; a growing queue
    # would put two thirds of the frames above the bound.
    assert stats.latencies.percentile(90) < 0.4
    assert slow.batches == [1] * len(slow.batches)


class Recording(ListSink):
    """A file-like sink (not real time) whose first write stalls until `release` is set, as
    libx264 does once its lookahead is full."""

    realtime = False
    keep_up = "use a faster disk"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, frame):
        assert self.release.wait(timeout=30)
        super().write(frame)


class StalledPreview(Recording):
    """A real-time sink (a preview) that stalls the same way."""

    realtime = True
    keep_up = ""
    label = "the preview"


async def run_live_with_recording(
    n: int, recording: Recording | None = None
) -> tuple[Recording, ListSink, object]:
    """A live pipeline into a real-time sink and a stalled second sink (a recording unless given).
    The camera's next frame comes once the real-time sink has the one before (a machine that
    keeps up, whatever this one's speed); the second sink is released once the camera has sent
    everything."""
    shown, recording = ListSink(), recording or Recording()
    delivered = threading.Condition()

    class Shown(ListSink):
        def write(self, frame):
            with delivered:
                shown.frames.append(frame)
                delivered.notify_all()

    class Camera(ListSource):
        def frames(self):
            for i, frame in enumerate(super().frames()):
                with delivered:
                    assert delivered.wait_for(lambda i=i: len(shown.frames) == i, timeout=30)
                yield frame
            with delivered:
                assert delivered.wait_for(lambda: len(shown.frames) == n, timeout=30)
            recording.release.set()

    stats = await Pipeline(Camera(make_frames(n), live=True), [], [Shown(), recording], live=True).run()
    return recording, shown, stats


async def test_a_live_recording_falls_behind_by_its_buffer_and_loses_nothing():
    from streamer.pipeline.runner import RECORDING_BUFFER

    n = RECORDING_BUFFER + 1  # one being written, the rest waiting
    recording, shown, stats = await run_live_with_recording(n)
    assert [f.index for f in shown.frames] == list(range(n))
    assert [f.index for f in recording.frames] == list(range(n))
    assert stats.dropped == 0
    assert "not recorded" not in stats.summary()


async def test_a_live_recording_further_behind_than_its_buffer_drops_its_oldest_and_counts_them():
    from streamer.pipeline.runner import RECORDING_BUFFER

    n = RECORDING_BUFFER + 11
    recording, shown, stats = await run_live_with_recording(n)
    assert len(shown.frames) == n
    # Frame 0 was being written; of the others only the newest RECORDING_BUFFER waited.
    assert [f.index for f in recording.frames] == [0, *range(n - RECORDING_BUFFER, n)]
    assert stats.frames_out == [n, RECORDING_BUFFER + 1]
    # The user is told which output lost frames, and the sink's advice for keeping up; the job's
    # own count is of the first output's frames, which lost none.
    summary = stats.summary().splitlines()
    assert stats.dropped == 0 and summary[0].startswith(f"frames: {n} in, {n} out, 0 dropped;")
    assert "Recording: 10 frames not recorded: it could not keep up (use a faster disk)" in summary


async def test_a_later_real_time_sink_that_falls_behind_is_named_with_what_it_lost():
    n = 20
    preview, shown, stats = await run_live_with_recording(n, StalledPreview())
    assert len(shown.frames) == n
    # Frame 0 was being shown; of the others only the newest waited in its one-frame slot.
    assert [f.index for f in preview.frames] == [0, n - 1]
    summary = stats.summary().splitlines()
    assert stats.dropped == 0 and summary[0].startswith(f"frames: {n} in, {n} out, 0 dropped;")
    assert f"the preview: {n - 2} frames not shown: it could not keep up" in summary


async def test_stage_error_stops_everything_and_names_the_stage():
    def boom(frame):
        if frame.index == 5:
            raise RuntimeError("out of memory\nsecond line")

    sink = ListSink()
    source = ListSource(make_frames(100))
    with pytest.raises(StageError) as info:
        await Pipeline(source, [FnStage("infer", boom)], [sink], live=False).run()
    assert str(info.value) == "infer stage failed: RuntimeError: out of memory (run with -v for details)"
    assert sink.closed == 1 and source.closed.is_set()
    assert len(sink.frames) <= 5


async def test_sink_error_stops_the_pipeline():
    class BadSink(ListSink):
        def write(self, frame):
            raise OSError("disk full")

    source = ListSource(make_frames(100))
    with pytest.raises(StageError, match="sink BadSink stage failed: OSError: disk full"):
        await Pipeline(source, [FnStage("infer")], [BadSink()], live=False).run()
    assert source.closed.is_set()


async def test_a_sink_failing_again_as_it_closes_does_not_hide_the_first_error():
    class FullDisk(ListSink):
        def write(self, frame):
            if frame.index == 3:
                raise OSError("no space left while writing")
            super().write(frame)

        def close(self):
            super().close()
            raise OSError("no space left for the trailer")

    other = ListSink()
    with pytest.raises(StageError) as info:
        await Pipeline(ListSource(make_frames(10)), [FnStage("infer")], [other, FullDisk()], live=False).run()
    assert "sink FullDisk stage failed: OSError: no space left while writing" in str(info.value)
    assert str(info.value.__cause__) == "no space left while writing"  # what -v shows
    assert other.closed == 1


async def test_a_sink_failing_to_close_after_a_whole_run_is_reported_by_its_name():
    class NoTrailer(ListSink):
        def close(self):
            super().close()
            raise OSError("no space left for the trailer")

    first, failing = ListSink(), NoTrailer()
    with pytest.raises(
        StageError, match="sink NoTrailer stage failed: OSError: no space left for the trailer"
    ):
        await Pipeline(ListSource(make_frames(5)), [FnStage("infer")], [first, failing], live=False).run()
    assert len(first.frames) == len(failing.frames) == 5 and first.closed == 1


async def test_stop_drains_in_flight_frames_and_closes_sinks():
    sink = ListSink()
    pipe = Pipeline(
        ListSource(make_frames(1000), interval=0.002), [FnStage("infer", delay=0.005)], [sink], live=False
    )
    task = asyncio.create_task(pipe.run())
    await until(lambda: sink.frames, "a first frame out")
    pipe.stop()
    stats = await asyncio.wait_for(task, 60)
    assert 0 < len(sink.frames) < 1000 and sink.closed == 1
    # Every frame that got through inference was delivered; the rest were let go, not lost.
    assert stats.frames_in == len(sink.frames) + stats.discarded
    # At most what the queue before inference held, plus the frame the reader was handing over.
    assert stats.discarded <= pipe.queue_size + 1
    assert [f.index for f in sink.frames] == list(range(len(sink.frames)))


async def test_a_frame_given_up_on_stop_was_never_in():
    # The stage holds its first frame while the job is stopped: the reader, waiting for room,
    # gives its frame up. Every frame counted in was then delivered or let go, none lost.
    release, given_up = threading.Event(), threading.Event()

    class Source(ListSource):
        def frames(self):
            try:
                yield from super().frames()
            finally:  # the reader let go of this generator
                given_up.set()

    sink = ListSink()
    stage = FnStage("infer", fn=lambda frame: release.wait(timeout=60))
    pipe = Pipeline(Source(make_frames(100)), [stage], [sink], live=False)
    task = asyncio.create_task(pipe.run())
    await until(lambda: stage.batches, "the first frame in the stage")
    await until(lambda: len(pipe.stats.queues[0]) == pipe.queue_size, "the queue before it full")
    pipe.stop()
    await until(given_up.is_set, "the reader giving up")
    release.set()
    stats = await asyncio.wait_for(task, 60)
    assert len(sink.frames) == 1 and stats.discarded == pipe.queue_size
    assert stats.frames_in == len(sink.frames) + stats.discarded


async def test_cancel_aborts_and_still_closes_sinks():
    sink = ListSink()
    pipe = Pipeline(
        ListSource(make_frames(1000), interval=0.001), [FnStage("infer", delay=0.01)], [sink], live=False
    )
    task = asyncio.create_task(pipe.run())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.closed == 1
    # The reader notices the abort at its next wait for room (every 0.1 s) and ends.
    await until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("streamer-source")],
        "the source's thread gone",
    )
