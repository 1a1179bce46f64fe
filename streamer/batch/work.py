"""One task (a whole clip or one segment) through the same file pipeline as `streamer run`.

The worker reads its input and writes its output itself: frames never travel through the
driver. Outputs are written under a hidden temporary name and renamed into place only when
complete, so an interrupted batch never leaves a half file under the final name.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from streamer.batch.plan import Task
from streamer.batch.segment import SegmentSource, WindowSink
from streamer.config import JobConfig, merge_params
from streamer.errors import StreamerError
from streamer.job import build_processing, file_stages, open_output
from streamer.pipeline.runner import Pipeline
from streamer.sinks.paths import partial_path


def in_progress_path(output: str) -> Path:
    """Where a task writes before the rename: a hidden sibling of its output."""
    path = Path(output)
    name = path.name if path.name.startswith(".") else f".{path.name}"
    return path.with_name(f"{name}.writing{path.suffix}")


def remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_task(
    task: Task,
    config: JobConfig,
    engine,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Process `task`; returns {frames, seconds, error}. A user-fixable problem is an `error`, not a raise."""
    start = time.perf_counter()
    try:
        frames = _process(task, config, engine, on_progress)
    except StreamerError as err:
        return {"frames": 0, "seconds": time.perf_counter() - start, "error": str(err)}
    return {"frames": frames, "seconds": time.perf_counter() - start, "error": None}


def _process(task: Task, config: JobConfig, engine, on_progress) -> int:
    from streamer.sinks.open import open_sink
    from streamer.sources.open import open_source

    target = Path(task.output)
    writing = in_progress_path(task.output)
    # Left by an attempt whose worker died: the clip is redone whole, so neither is anyone's work
    # (the file sink would otherwise keep its partial as an ".interrupted" copy).
    remove_path(writing)
    remove_path(partial_path(writing))
    png = task.output.endswith("/") or not target.suffix
    spec = f"{writing}/" if png else str(writing)
    segment = task.segment
    if segment is None:
        source = open_source(task.source, live=False)
        start_pts = None
    else:
        source = SegmentSource(task.source, segment.seek_pts, segment.end_pts)
        start_pts = segment.start_pts
    try:
        if segment is None:
            sink = open_output(spec, source.info, config)
        else:
            # Segments carry no audio: the join copies the source's audio once.
            params = merge_params(config.output, "output", {"audio": False, "overwrite": True})
            inner = open_sink(spec, info=source.info, params=params)
            sink = WindowSink(inner, start_pts)
    except BaseException:
        source.close()
        raise
    _, smoother, compositor = build_processing(config, engine)
    pipeline = Pipeline(
        source,
        file_stages(engine, smoother, compositor),
        [sink],
        live=False,
        batch_size=config.model.batch_size,
    )
    done = 0

    def on_frame(frame) -> None:
        nonlocal done
        if start_pts is None or (frame.pts is not None and frame.pts >= start_pts):
            done += 1
            if on_progress is not None:
                on_progress(done)

    pipeline.on_frame = on_frame
    asyncio.run(pipeline.run())
    written = getattr(sink.sink if segment is not None else sink, "frames_written", done)
    if written != task.frames:
        # A damaged file decodes fewer frames than its index lists: keep it out of the final name.
        remove_path(writing)
        raise _short(task, written)
    if target.is_dir():  # --overwrite of a PNG folder: a folder cannot be replaced by a rename
        shutil.rmtree(target)
    os.replace(writing, target)
    return written


def _short(task: Task, written: int) -> StreamerError:
    from streamer.errors import MediaError

    return MediaError(
        f"{task.source}: decoded {written} of {task.frames} frames (the file is damaged; re-export or re-download it)"
    )
