"""Live jobs run the network below the media threads' priority (Linux: a per-thread nice value)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading

import pytest
import torch

from streamer.live.worker import InferenceWorker
from streamer.pipeline.runner import Pipeline
from streamer.priority import BACKGROUND_NICE, lower_thread_priority, run_in_background
from tests.harness import FnStage, ListSink, ListSource, make_frames

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_only_the_calling_thread_is_lowered():
    base, seen = own_nice(), {}

    def work() -> None:
        seen["lowered"] = lower_thread_priority()
        seen["nice"] = own_nice()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == {"lowered": True, "nice": min(base + BACKGROUND_NICE, 19)}
    assert own_nice() == base


def test_run_in_background_lowers_the_call_and_every_thread_it_starts():
    """Benchmarks warm the network up this way: a library's compute threads started during the
    call (OpenVINO's) must keep the lower priority, as in a live job's inference thread."""
    base, seen = own_nice(), {}

    def work(value: int) -> None:
        seen["call"], seen["value"] = own_nice(), value
        child = threading.Thread(target=lambda: seen.update(child=own_nice()))
        child.start()
        child.join()

    run_in_background(work, 5)
    lowered = min(base + BACKGROUND_NICE, 19)
    assert seen == {"call": lowered, "value": 5, "child": lowered}
    assert own_nice() == base

    def fail() -> None:
        raise ValueError("no such size")

    with pytest.raises(ValueError, match="no such size"):
        run_in_background(fail)


class NiceEngine:
    """Notes the nice value of the thread that runs each predict."""

    def __init__(self) -> None:
        self.nice: list[int] = []

    def predict(self, image):
        self.nice.append(own_nice())
        return image[..., 0].float()


async def test_the_live_worker_runs_the_network_at_lower_priority():
    engine = NiceEngine()
    worker = InferenceWorker(engine)
    worker.start()
    slot = worker.open_slot()
    slot.put(make_frames(1)[0])
    await asyncio.wait_for(slot.get(), 30)
    await worker.aclose()
    assert engine.nice == [min(own_nice() + BACKGROUND_NICE, 19)]


class ComputeStage(FnStage):
    compute_bound = True


@pytest.mark.parametrize("live", [True, False])
async def test_a_live_pipeline_lowers_only_its_compute_bound_stage(live):
    seen: dict[str, set[int]] = {"infer": set(), "composite": set()}
    infer = ComputeStage("infer", fn=lambda frame: seen["infer"].add(own_nice()))
    composite = FnStage("composite", fn=lambda frame: seen["composite"].add(own_nice()))
    source = ListSource(make_frames(5), live=live, interval=0.01 if live else 0.0)
    await Pipeline(source, [infer, composite], [ListSink()], live=live).run()
    base = own_nice()
    assert seen == {"infer": {min(base + BACKGROUND_NICE, 19) if live else base}, "composite": {base}}


def task_nice() -> dict[int, int]:
    """Thread id -> nice value, for every thread of this process."""
    values = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/stat") as stat:
            values[int(tid)] = int(stat.read().rsplit(")", 1)[1].split()[16])
    return values


def test_torch_threads_started_by_a_lowered_thread_inherit_its_priority():
    # The network's intra-op threads are started by the thread that first runs it: they
    # must be lowered too, or they would still crowd out the media threads.
    lowered, seen = min(own_nice() + BACKGROUND_NICE, 19), {}
    threads = torch.get_num_threads()

    def work() -> None:
        lower_thread_priority()
        x = torch.randn(512, 512)
        for _ in range(20):
            x = torch.nn.functional.relu(x @ x).clamp_(max=1)
        me = threading.get_native_id()
        seen["helpers"] = [nice for tid, nice in task_nice().items() if tid != me and tid not in before]

    before = set(task_nice())
    torch.set_num_threads(2)
    try:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    finally:
        torch.set_num_threads(threads)
    assert seen["helpers"], "torch started no helper thread"
    assert set(seen["helpers"]) == {lowered}
