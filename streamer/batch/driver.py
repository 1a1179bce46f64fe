"""The Ray side of `streamer batch`: workers, retries, progress, summary.

Ray does the distributing: `ClipWorker` actors (one model each, loaded once from the state
dict the driver put in Ray's object store, so no worker downloads or reads weights), Ray's
`ActorPool` hands them tasks, Ray restarts a worker whose process died and re-runs its task
(`max_restarts`, `max_task_retries`), and plain Ray tasks probe inputs and join segments.
Workers read inputs and write outputs on a path every node sees; only small records reach
the driver.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.util.actor_pool import ActorPool

from streamer.batch.inputs import Clip, output_path, partial_path
from streamer.batch.plan import Probe, Task, plan_key, probe, split, warmup_frames
from streamer.config import JobConfig
from streamer.errors import ConfigError
from streamer.sinks.paths import refuse_input_as_output, write_json

RESTARTS = 3
"""A worker process that dies is restarted (and its task re-run) up to this many times."""
REPORT_EVERY_S = 0.5


@dataclass
class BatchOptions:
    out_dir: Path
    fmt: str
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    segment_frames: int = 1000
    progress: bool = True
    report: Path | None = None


@dataclass
class ClipResult:
    input: str
    output: str
    frames: int = 0
    seconds: float = 0.0
    workers: list[str] = field(default_factory=list)
    status: str = "pending"
    error: str | None = None
    segments: int = 1
    retried: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict:
        return {
            "input": self.input,
            "output": self.output,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 3),
            "worker": ", ".join(self.workers),
            "status": self.status,
            "error": self.error,
            "segments": self.segments,
            "retried": self.retried,
        }


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where workers post progress (fire and forget) and the driver reads it."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}
        self.attempts: dict[str, list[str]] = {}
        self.workers: dict[str, tuple[str, float]] = {}

    def started(self, key: str, worker: str) -> None:
        self.attempts.setdefault(key, []).append(worker)
        self.done[key] = 0

    def update(self, key: str, worker: str, clip: str, done: int, fps: float) -> None:
        self.done[key] = done
        self.workers[worker] = (clip, fps)

    def snapshot(self) -> dict:
        return {"done": dict(self.done), "attempts": dict(self.attempts), "workers": dict(self.workers)}


@ray.remote
class ClipWorker:
    """Loads the model once; processes whole clips or segments, in frame order, one at a time."""

    def __init__(self, sections: dict, state: dict, threads: int, board) -> None:
        import torch

        from streamer.engine import MattingEngine

        torch.set_num_threads(max(1, threads))
        self.config = config = JobConfig(sections)
        self.board = board
        self.engine = MattingEngine.from_params(config.model, state)
        self.label = f"{ray.util.get_node_ip_address()}:{os.getpid()}"

    def ready(self) -> str:
        return self.label

    def process(self, task: Task) -> dict:
        from streamer.batch.work import run_task

        self.board.started.remote(task.key, self.label)
        start = time.perf_counter()
        last = 0.0

        def on_progress(done: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last >= REPORT_EVERY_S or done == task.frames:
                last = now
                fps = done / (now - start) if now > start else 0.0
                self.board.update.remote(task.key, self.label, task.name, done, fps)

        result = run_task(task, self.config, self.engine, on_progress)
        self.board.update.remote(task.key, self.label, "(idle)", result["frames"], 0.0)
        return {**result, "key": task.key, "worker": self.label}


@ray.remote(num_cpus=0, max_retries=RESTARTS)
def probe_remote(source: str) -> Probe:
    return probe(source)


@ray.remote(num_cpus=0, max_retries=RESTARTS)
def join_remote(
    parts: list[str], offsets: list[int], time_base, output: str, audio: str | None, origin: float
):
    from streamer.batch.segment import join
    from streamer.batch.work import in_progress_path, remove_path
    from streamer.errors import StreamerError

    writing = in_progress_path(output)
    remove_path(writing)
    try:
        join([Path(p) for p in parts], offsets, time_base, writing, audio, origin)
    except StreamerError as err:
        return str(err)
    os.replace(writing, output)
    for part in parts:
        Path(part).unlink(missing_ok=True)
    return None


def connect(address: str | None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"cannot reach the Ray cluster at {address}: {str(err).splitlines()[0]} "
                "(start one with 'ray start --head', or leave out --address for a local one)"
            ) from None
    else:
        try:
            ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (OSError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"cannot start a local Ray instance: {str(err).splitlines()[0]} "
                "(set RAY_TMPDIR to a short folder, or pass --address of a running cluster)"
            ) from None


def worker_count(options: BatchOptions, tasks: int) -> int:
    if options.workers:
        wanted = options.workers
    else:
        resources = ray.cluster_resources()
        if options.gpus_per_worker > 0:
            wanted = int(resources.get("GPU", 0) / options.gpus_per_worker)
        else:
            wanted = int(resources.get("CPU", 1) / max(options.cpus_per_worker, 1e-3))
    return max(1, min(wanted, tasks))


def plan_clips(
    clips: list[Clip], probes: list[Probe], config: JobConfig, weights: str, options: BatchOptions
):
    """(tasks to run, results of every clip, joins to make: clip index -> segment tasks)."""
    tasks: list[Task] = []
    results: list[ClipResult] = []
    joins: dict[int, tuple[list[Task], Probe]] = {}
    sections = {name: repr(params) for name, params in config.sections.items()}
    for i, (clip, info) in enumerate(zip(clips, probes, strict=True)):
        final = output_path(options.out_dir, clip.name, options.fmt)
        result = ClipResult(clip.source, str(final), frames=info.frames)
        results.append(result)
        if final.exists() and not config.output.overwrite:
            result.status = "skipped (done)"  # frames 0: not probed
            continue
        if info.error:
            result.status, result.error, result.frames = "failed", info.error, 0
            continue
        warm = warmup_frames(config.smoothing.time_constant if config.smoothing.enabled else 0.0, info.fps)
        segments = split(info, options.segment_frames, warm) if options.fmt != "png" else []
        if len(segments) < 2:
            tasks.append(Task(clip.source, clip.name, str(final), info.frames, key=f"{i}"))
            continue
        key = plan_key(sections, weights, options.fmt, segments)
        parts = []
        for seg in segments:
            part = partial_path(options.out_dir, clip.name, options.fmt, f"{key}.seg{seg.index:03d}")
            parts.append(Task(clip.source, clip.name, str(part), seg.frames, seg, key=f"{i}.{seg.index}"))
        # Segments finished by an earlier run of the same plan are kept, not redone.
        tasks.extend(t for t in parts if not Path(t.output).exists())
        result.segments = len(segments)
        joins[i] = (parts, info)
    tasks.sort(key=lambda t: -t.frames)  # longest first: the last task to start is a short one
    return tasks, results, joins


def refuse_inputs_as_outputs(clips: list[Clip], out_dir: Path, fmt: str) -> None:
    """Raises MediaError when a clip's output would be an input: with --overwrite it would be
    replaced, without it taken for its own finished output and skipped."""
    finals = [output_path(out_dir, c.name, fmt) for c in clips]
    refuse_input_as_output(finals, [c.source for c in clips], "choose another --out-dir")


def run_batch(clips: list[Clip], config: JobConfig, state: dict, weights: str, options: BatchOptions) -> int:
    options.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timing = {"workers": 0, "probe_seconds": 0.0, "startup_seconds": 0.0, "work_seconds": 0.0}
    connect(options.address)
    try:
        begin = time.perf_counter()
        # Finished outputs are not even probed: a re-run over a big library starts at once.
        todo = [
            config.output.overwrite or not output_path(options.out_dir, c.name, options.fmt).exists()
            for c in clips
        ]
        refs = [probe_remote.remote(c.source) if t else None for c, t in zip(clips, todo, strict=True)]
        probes = [ray.get(r) if r is not None else Probe(c.source) for c, r in zip(clips, refs, strict=True)]
        timing["probe_seconds"] = round(time.perf_counter() - begin, 3)
        tasks, results, joins = plan_clips(clips, probes, config, weights, options)
        if tasks:
            _run_tasks(tasks, results, joins, config, state, options, timing)
        else:
            for index in joins:
                _submit_join_now(index, joins, results)
    finally:
        ray.shutdown()
    _print_summary(results)
    if options.report:
        report = {
            "clips": [r.as_json() for r in results],
            "frames": sum(r.frames for r in results if r.status.startswith("done")),
            "wall_seconds": round(time.perf_counter() - started, 3),
            **timing,
        }
        write_json(report, options.report)
    return 1 if any(r.status.startswith(("failed", "incomplete")) for r in results) else 0


def _submit_join_now(index: int, joins, results) -> None:
    error = ray.get(_join(index, joins, results))
    _finish_join(results[index], error)


def _join(index: int, joins, results):
    parts, info = joins[index]
    origin = max(0, info.pts[0])
    offsets = [max(0, t.segment.start_pts) - origin for t in parts]
    audio = info.source if info.audio else None
    return join_remote.remote(
        [t.output for t in parts],
        offsets,
        info.time_base,
        results[index].output,
        audio,
        float(origin * info.time_base),
    )


def _finish_join(result: ClipResult, error: str | None) -> None:
    if error:
        result.status, result.error = "failed", error
    elif not result.status.startswith("failed"):
        result.status = "done (retried)" if result.retried else "done"


def _run_tasks(tasks, results, joins, config, state, options: BatchOptions, timing: dict) -> None:
    begin = time.perf_counter()
    board = ProgressBoard.remote()
    state_ref = ray.put(state)
    count = worker_count(options, len(tasks))
    threads = max(1, int(options.cpus_per_worker))
    actors = [
        ClipWorker.options(
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker,
            max_restarts=RESTARTS,
            max_task_retries=RESTARTS,
            scheduling_strategy="SPREAD",
        ).remote(config.sections, state_ref, threads, board)
        for _ in range(count)
    ]
    # Every worker holds its model before the clock of the work starts (startup is reported apart).
    ray.get([actor.ready.remote() for actor in actors])
    timing["workers"], timing["startup_seconds"] = count, round(time.perf_counter() - begin, 3)
    begin = time.perf_counter()
    by_key = {t.key: t for t in tasks}
    clip_of = {t.key: int(t.key.split(".")[0]) for t in tasks}
    waiting = {i: {t.key for t in parts if t.key in by_key} for i, (parts, _) in joins.items()}
    total = sum(t.frames for t in tasks)
    display = _Display(total, count, options.progress)
    pool = ActorPool(actors)
    for task in tasks:
        pool.submit(lambda actor, t: actor.process.remote(t), task)
    pending_joins: dict = {}
    for index in [i for i, keys in waiting.items() if not keys]:
        pending_joins[_join(index, joins, results)] = index
    finished: set[str] = set()
    lost: str | None = None
    while pool.has_next() or pending_joins:
        if pool.has_next():
            try:
                out = pool.get_next_unordered(timeout=REPORT_EVERY_S)
            except TimeoutError:
                out = None
            except ray.exceptions.RayError as err:  # a worker lost more often than Ray restarts it
                lost = re.sub(r"\x1b\[[0-9;]*m", "", str(err).strip().splitlines()[0])
                out = None
        else:
            out = None
            time.sleep(REPORT_EVERY_S)
        if out is not None:
            finished.add(out["key"])
            index = clip_of[out["key"]]
            result = results[index]
            result.frames = result.frames if index in joins else out["frames"]
            result.seconds += out["seconds"]
            if out["worker"] not in result.workers:
                result.workers.append(out["worker"])
            if out["error"]:
                result.status, result.error = "failed", out["error"]
            elif index not in joins:
                result.status = "done"
            if index in waiting:
                waiting[index].discard(out["key"])
                if not waiting[index] and not result.status.startswith("failed"):
                    pending_joins[_join(index, joins, results)] = index
        if pending_joins:
            ready, _ = ray.wait(list(pending_joins), num_returns=len(pending_joins), timeout=0)
            for ref in ready:
                index = pending_joins.pop(ref)
                _finish_join(results[index], ray.get(ref))
        snap = ray.get(board.snapshot.remote())
        display.update(snap)
        for key, workers in snap["attempts"].items():
            if len(workers) > 1 and key in clip_of:
                results[clip_of[key]].retried = True
    display.close()
    timing["work_seconds"] = round(time.perf_counter() - begin, 3)
    for key, index in clip_of.items():
        if key not in finished and not results[index].status.startswith("failed"):
            results[index].status, results[index].error = "failed", lost or "its worker was lost"
    for result in results:
        if result.retried and result.status == "done":
            result.status = "done (retried)"


class _Display:
    """One bar of frames done / total (fps, ETA) and a line per worker: its clip and fps."""

    def __init__(self, total: int, workers: int, enabled: bool) -> None:
        self.bars = []
        if not enabled:
            return
        from tqdm import tqdm

        self.bars.append(tqdm(total=total, unit="frame", dynamic_ncols=True, file=sys.stderr, position=0))
        for i in range(workers):
            self.bars.append(tqdm(bar_format="{desc}", position=i + 1, file=sys.stderr, leave=False))

    def update(self, snap: dict) -> None:
        if not self.bars:
            return
        main = self.bars[0]
        main.update(sum(snap["done"].values()) - main.n)
        for bar, (worker, (clip, fps)) in zip(self.bars[1:], sorted(snap["workers"].items()), strict=False):
            bar.set_description_str(f"  worker {worker}: {clip} {fps:.2f} fps")

    def close(self) -> None:
        for bar in reversed(self.bars):
            bar.close()


def _print_summary(results: list[ClipResult]) -> None:
    rows = [("input", "frames", "seconds", "fps", "worker", "status")]
    for r in results:
        status = r.status if not r.error else f"{r.status}: {r.error}"
        rows.append(
            (r.input, str(r.frames), f"{r.seconds:.1f}", f"{r.fps:.2f}", ", ".join(r.workers) or "-", status)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=False)) + "  " + row[5],
            file=sys.stderr,
        )
