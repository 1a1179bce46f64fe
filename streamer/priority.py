"""Thread priority for live jobs: the network yields the CPU to the media path.

On a machine without a spare core, the matting network (one long computation per frame)
and the media threads (capture, decode, encode, compositing, the event loop: short bursts
due every frame interval) fight for the same cores. At equal priority every burst waits
behind the network, and that wait is added to each frame's latency. A lower priority
(higher nice value) for the thread that runs the network, and for the compute threads it
starts, lets the bursts run the moment they are due; the network still gets every cycle
they leave, so its throughput hardly changes. Linux only (where a nice value is per
thread); elsewhere nothing changes.
"""

from __future__ import annotations

import os
import sys
import threading

BACKGROUND_NICE = 10
"""CFS gives a nice-0 thread about 9 times the share of a nice-10 one when both want a core."""


def lower_thread_priority(nice: int = BACKGROUND_NICE) -> bool:
    """Raise the calling thread's nice value by `nice`; call before it starts torch's threads.

    Returns False where it cannot (not Linux, or not permitted), which is harmless."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError:
        return False
    return True


def run_in_background(fn, *args) -> None:
    """Call `fn(*args)` in a thread at BACKGROUND_NICE and wait for it (benchmarks warm the
    network up this way). Compute threads a library starts keep the priority of the thread that
    started them: OpenVINO's, made by a first inference on a normal-priority thread, would run
    the network beside the media threads on equal terms, as a live job's never do."""
    failure: list[BaseException] = []

    def run() -> None:
        lower_thread_priority()
        try:
            fn(*args)
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=run, name="streamer-warm-up")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
