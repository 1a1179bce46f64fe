"""Soak: does a live job hold its memory, file descriptors, threads and queues flat for many minutes?

One process runs both live paths at once, each fed by a synthetic 30 fps camera (bench_live's moving
head-and-shoulders picture):

- vcam: the `run` pipeline (infer -> smooth -> composite, live queues) into the virtual camera sink,
  whose device is tests/fake_v4l2.py's FUSE stand-in (writes accepted, not kept);
- webrtc: `build_server`'s aiohttp app with one in-process aiortc peer that sends the camera (VP8)
  and receives the composited video back.

Lite network with the recipe's deterministic weights, model input 128x128. Once a minute it records
the RSS, open fds, threads and asyncio tasks of this process and the depth of every queue, then prints
the table and the verdict. Target: RSS grows < 50 MB after the first 2 minutes; fds, threads and
tasks end where they were at minute 2; queue depths never pass their bounds (1 for live).

The run stays in a private network namespace (the script re-executes itself under `unshare -n` with
only 10.77.0.1 on loopback; needs root), so no packet uses the machine's interface. Usage:
    flock /tmp/bench.lock python scripts/soak_live.py --minutes 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NETNS_ADDRESS = "10.77.0.1"
RSS_GROWTH_MB = 50.0


def reexec_in_private_netns() -> None:
    """Run this script again inside `unshare -n` (lo up, one address); returns only inside it."""
    if os.environ.get("SOAK_IN_NETNS") == "1":
        return
    command = " ".join(
        ["exec", sys.executable, *(f"'{a}'" for a in [str(Path(__file__).resolve()), *sys.argv[1:]])]
    )
    setup = f"ip link set lo up && ip addr add {NETNS_ADDRESS}/32 dev lo && {command}"
    env = {**os.environ, "SOAK_IN_NETNS": "1", "PYTHONPATH": str(ROOT)}
    try:
        sys.exit(subprocess.call(["unshare", "-n", "bash", "-c", setup], env=env))
    except FileNotFoundError:
        sys.exit("soak_live: `unshare` not found (util-linux); it keeps the soak's packets off the network")


reexec_in_private_netns()
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from aiohttp import web  # noqa: E402
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402
from av import VideoFrame  # noqa: E402
from bench_live import synthetic_frames  # noqa: E402
from fake_v4l2 import FakeV4l2Device, fuse_missing_reason  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from script_args import count, frame_size, positive  # noqa: E402

from streamer.config import load_config  # noqa: E402
from streamer.frame import Frame  # noqa: E402
from streamer.job import build_processing, open_output  # noqa: E402
from streamer.live.core import LiveStage, Settings  # noqa: E402
from streamer.live.serve import build_server  # noqa: E402
from streamer.model.recipe import make_state_dict  # noqa: E402
from streamer.pipeline.runner import Pipeline  # noqa: E402
from streamer.pipeline.stages import Finisher  # noqa: E402
from streamer.sources.base import SourceInfo  # noqa: E402

CLOCK = Fraction(1, 90000)


class SyntheticCamera:
    """A live source: the pictures in a loop, paced at `fps`, until closed."""

    def __init__(self, pictures: list[np.ndarray], fps: float) -> None:
        self.pictures = [torch.from_numpy(p) for p in pictures]
        self.fps = fps
        h, w = pictures[0].shape[:2]
        self.info = SourceInfo(w, h, fps, CLOCK, None, live=True, description="synthetic camera")
        self._stop = threading.Event()

    def frames(self):
        start, n = time.monotonic(), 0
        while not self._stop.wait(max(0.0, start + n / self.fps - time.monotonic())):
            pts = round(n / self.fps / CLOCK)
            yield Frame(self.pictures[n % len(self.pictures)], pts, CLOCK, n, time.monotonic())
            n += 1

    def close(self) -> None:
        self._stop.set()


class CameraTrack(VideoStreamTrack):
    """The same camera as a WebRTC track (I420, converted once)."""

    def __init__(self, pictures: list[np.ndarray], fps: float) -> None:
        super().__init__()
        self.pictures = [
            VideoFrame.from_ndarray(p, format="rgb24").reformat(format="yuv420p").to_ndarray()
            for p in pictures
        ]
        self.fps, self.n, self.start = fps, 0, None

    async def recv(self) -> VideoFrame:
        self.start = self.start or time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.n / self.fps - time.monotonic()))
        frame = VideoFrame.from_ndarray(self.pictures[self.n % len(self.pictures)], format="yuv420p")
        frame.pts, frame.time_base = round(self.n / self.fps / CLOCK), CLOCK
        self.n += 1
        return frame


def process_figures() -> dict:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": int(fields["Threads"]),
        "tasks": len(asyncio.all_tasks()),
    }


def thread_kinds() -> dict[str, int]:
    """Python threads by name, pools counted by pool ("asyncio_3" -> "asyncio"): a pool that grows
    to its bound is no leak; a new kind, or a kind that keeps growing, is."""
    return dict(Counter(re.sub(r"_\d+$", "", t.name) for t in threading.enumerate()))


def slot_depth(peer) -> int:
    """Frames held by a peer's hand-over to the worker (waiting + in flight + result)."""
    slot = getattr(peer, "slot", None)
    held = (getattr(slot, "_waiting", None), getattr(slot, "_result", None))
    return sum(x is not None for x in held) + int(bool(getattr(slot, "busy", False)))


async def soak(args, weights: Path, device: str) -> list[dict]:
    pictures = synthetic_frames(args.frame, count=60)
    model = {"variant": "lite", "weights": str(weights), "size": args.model_size, "device": "cpu"}
    config = load_config(None, {"model": model, "vcam": {"device": device}})

    # vcam: the run pipeline, as `streamer run --source <camera> --sink vcam` builds it.
    camera = SyntheticCamera(pictures, args.fps)
    engine, smoother, compositor = build_processing(config)
    sink = open_output("vcam", camera.info, config)
    pipeline = Pipeline(
        camera,
        [LiveStage(engine, Finisher(smoother, compositor), Settings(config.propagation))],
        [sink],
        live=True,
    )
    run = asyncio.create_task(pipeline.run())

    # webrtc: the serve app and one peer.
    server = build_server(config)
    runner = web.AppRunner(server.build())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    pc = RTCPeerConnection()
    track = CameraTrack(pictures, args.fps)
    pc.addTransceiver(track, direction="sendrecv")
    received = [0]

    async def receive(remote) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await remote.recv()
                received[0] += 1

    readers = []
    pc.on("track", lambda remote: readers.append(asyncio.ensure_future(receive(remote))))
    await pc.setLocalDescription(await pc.createOffer())
    rows = []
    async with aiohttp.ClientSession() as http:
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with http.post(f"{base}/offer", json=offer) as response:
            answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        started = time.monotonic()
        for minute in range(args.minutes + 1):
            await asyncio.sleep(max(0.0, started + args.every * minute - time.monotonic()))
            if run.done():
                run.result()  # the pipeline must not end early: raise its error
                raise RuntimeError("the vcam pipeline ended early")
            async with http.get(f"{base}/stats", params={"peer": answer["peer"]}) as response:
                stats = await response.json()
            row = {
                "min": minute,
                **process_figures(),
                "vcam_sent": sink.stats.sent,
                "vcam_frames": pipeline.stats.frames_out[0],
                "vcam_dropped": pipeline.stats.dropped,
                "queues": "/".join(str(len(q)) for q in pipeline.stats.queues),
                "max_queue": pipeline.stats.max_queue_depth,
                "rtc_sent": track.n,
                "rtc_back": received[0],
                "rtc_dropped": stats["dropped"],
                "peer_slot": max((slot_depth(p) for p in server.peers.values()), default=0),
                "state": stats["state"],
                "load": round(os.getloadavg()[0], 2),
                "thread_kinds": thread_kinds(),
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    pipeline.stop()
    camera.close()
    await run
    await pc.close()
    for reader in readers:
        reader.cancel()
    await runner.cleanup()
    return rows


def verdict(rows: list[dict]) -> list[str]:
    base = rows[min(2, len(rows) - 1)]
    last = rows[-1]
    growth = max(r["rss_mb"] for r in rows[rows.index(base) :]) - base["rss_mb"]
    lines = [
        f"RSS after minute {base['min']}: {base['rss_mb']} MB, then at most +{growth:.1f} MB "
        f"({'met' if growth < RSS_GROWTH_MB else 'NOT met'}: < {RSS_GROWTH_MB:g} MB)"
    ]
    if last["thread_kinds"] != base["thread_kinds"]:
        lines.append(
            f"python threads by kind: {base['thread_kinds']} at minute {base['min']}, {last['thread_kinds']} at the end"
        )
    for key in ("fds", "threads", "tasks"):
        flat = last[key] == base[key]
        seen = sorted({r[key] for r in rows[rows.index(base) :]})
        lines.append(
            f"{key}: {base[key]} at minute {base['min']}, {last[key]} at the end, seen {seen} "
            f"({'flat' if flat else 'NOT flat'})"
        )
    worst = max(max(r["max_queue"], r["peer_slot"]) for r in rows)
    lines.append(
        f"largest queue depth seen: {worst} (live pipeline queues hold at most 1; a peer's slot 3: waiting, in flight, result)"
    )
    lines.append(
        f"frames: vcam {last['vcam_sent']} sent to the device ({last['vcam_frames']} composited), "
        f"webrtc {last['rtc_sent']} sent and {last['rtc_back']} received back"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=count, default=30)
    parser.add_argument("--every", type=positive, default=60.0, help="seconds between samples (a 'minute')")
    parser.add_argument("--fps", type=positive, default=30.0)
    parser.add_argument("--frame", type=frame_size, default="320x240", help="camera size WxH")
    parser.add_argument("--model-size", type=count, default=128)
    parser.add_argument("--out", type=Path, help="also write the rows here (JSON lines)")
    args = parser.parse_args()
    if reason := fuse_missing_reason():
        sys.exit(f"soak_live: no FUSE for the fake v4l2 device: {reason}")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, FakeV4l2Device(Path(tmp), keep=False) as device:
        weights = Path(tmp) / "lite.safetensors"
        save_file(make_state_dict("lite"), str(weights))
        rows = asyncio.run(soak(args, weights, device.device))
    keys = [k for k in rows[0] if k != "thread_kinds"]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))
    print("\n".join(verdict(rows)))
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
