"""Live delivery of the live core (`streamer.live.core`): a paced synthetic camera, every frame out.

Two paths, each at every frame size, model size and keyframe interval asked for:

- direct: `streamer run`'s live pipeline (the camera as a paced source -> the live core -> a
  sink doing the virtual camera's per-frame work: RGB -> I420). Latency = capture -> written by
  the sink, for every delivered frame.
- webrtc: `streamer serve`'s app with an in-process aiortc client (the stand-in for a browser)
  that sends the synthetic camera (VP8) over loopback and receives the composited video back;
  `fps` = frames received back per second; latency = handed to the client's sender -> the last
  RTP packet of that frame back at the client (the server copies each frame's pts onto its
  output; aiortc's random RTP timestamp origin is fixed at 0 so the pts come back as sent, give or
  take the tick aiortc's stock encoder loses rounding them: a frame is found by its number).

Each row: delivered fps against the camera's, the share of delivered frames with a matte whose
matte was carried by flow (`propagated`; the frames before the first network result go out with
none: `unmatted`), the keyframe rate and the network's mean time a pass, latency
p50/p95 and its drift (median of the last third minus the first), the live core's time per frame
(propagation, smoothing, compositing), frames dropped anywhere, the largest queue depths seen
(pipeline queues / the stream's backlog: bounds 1 and 2), and the load average. Weights: the
deterministic recipe (speed does not depend on weight values). With `--device cuda` and no CUDA
GPU it prints that it skipped and exits 0. Usage (this machine's rows, then a GPU's):

    python scripts/bench_live.py --frame-sizes 640x480,1280x720 --modes color,blur --duration 300
    python scripts/bench_live.py --device cuda --variant portrait --model-size 512,1024 \
        --frame-sizes 1920x1080 --fps 60 --keyframe-every 1,2 --paths direct --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import aioice.ice  # noqa: E402
import aiortc.rtcrtpsender  # noqa: E402
from aiohttp import web  # noqa: E402
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket  # noqa: E402
from av import VideoFrame  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from script_args import count, frame_size, listed, network_size, non_negative, positive  # noqa: E402

from streamer.config import load_config, parse_assignment  # noqa: E402
from streamer.errors import StreamerError  # noqa: E402
from streamer.frame import Frame  # noqa: E402
from streamer.job import Job, build_processing  # noqa: E402
from streamer.live.core import Settings  # noqa: E402
from streamer.live.serve import build_server  # noqa: E402
from streamer.live.stats import percentile  # noqa: E402
from streamer.model import VARIANTS  # noqa: E402
from streamer.model.recipe import make_state_dict  # noqa: E402
from streamer.pipeline.runner import Pipeline  # noqa: E402
from streamer.priority import run_in_background  # noqa: E402
from streamer.sinks.vcam import encode, to_rgb  # noqa: E402
from streamer.sources.base import SourceInfo  # noqa: E402
from streamer.sources.pace import paced  # noqa: E402

CLOCK = Fraction(1, 90000)


def synthetic_frames(size: tuple[int, int], count: int = 30, grain: float = 0.0) -> list[np.ndarray]:
    """A gradient room with a moving head-and-shoulders blob: something for VP8 and the model.

    `grain` adds a camera sensor's noise (standard deviation in levels; webcams show 2-6): flat
    synthetic pictures cost an encoder a fraction of the bits of a real camera's."""
    rng = np.random.default_rng(0)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 200, y / height * 160 + 40, np.full_like(x, 90)], -1)
    frames = []
    for i in range(count):
        cx = width * (0.5 + 0.2 * np.sin(2 * np.pi * i / count))
        person = ((x - cx) / (0.18 * width)) ** 2 + ((y - 0.45 * height) / (0.22 * height)) ** 2 < 1
        person |= (np.abs(x - cx) < 0.3 * width) & (y > 0.62 * height)
        image = base.copy()
        image[person] = (220, 180, 150)
        if grain:
            image += rng.normal(0.0, grain, image.shape).astype(np.float32)
        frames.append(image.clip(0, 255).astype(np.uint8))
    return frames


class StampedTrack(VideoStreamTrack):
    """The synthetic camera as a WebRTC track; remembers when each frame was handed over.

    Frame n has pts n x `step` (1/90000 s ticks). aiortc's stock encoder (this client's, as in
    the field) rebases a frame's pts to its codec's time base and back, which rounds a third of
    them down by one tick, and the server sends back the pts it received: so a returned frame is
    found by its number, `number(pts)`, not by its exact pts."""

    def __init__(self, size, fps: float, sent_at: dict[int, float], grain: float) -> None:
        super().__init__()
        # Cameras deliver YUV: convert once here, so the client's encoder does not pay an RGB
        # conversion per frame on the two cores the server needs.
        self.pictures = [
            VideoFrame.from_ndarray(p, format="rgb24").reformat(format="yuv420p").to_ndarray()
            for p in synthetic_frames(size, grain=grain)
        ]
        self.fps = fps
        self.step = round(1 / (fps * CLOCK))
        self.sent_at = sent_at
        self.n = 0
        self.start: float | None = None

    async def recv(self) -> VideoFrame:
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.n / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = VideoFrame.from_ndarray(self.pictures[self.n % len(self.pictures)], format="yuv420p")
        frame.pts, frame.time_base = self.n * self.step, CLOCK
        self.sent_at[self.n] = time.monotonic()
        self.n += 1
        return frame

    def number(self, pts: int) -> int:
        return round(pts / self.step)


def on_frame_back(receiver, arrived: Callable[[int, float], None]) -> None:
    """Call `arrived(rtp_timestamp, now)` when the last packet (marker bit) of a frame reaches
    `receiver`: the moment the frame is back, before this client's own jitter buffer and decoder
    (aiortc's, the stand-in for a browser's: it sometimes holds every frame ~0.3 s there)."""
    handle = receiver._handle_rtp_packet

    async def handle_rtp_packet(packet, arrival_time_ms):
        if packet.marker:
            arrived(packet.timestamp, time.monotonic())
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle_rtp_packet


def steady_rate(sender) -> None:
    """Keep the client's encoder at its starting bitrate: drop the server's bitrate estimates.

    aiortc's VP8 encoder restarts, with a keyframe, whenever the receiver's estimate moves by
    10%: nine times in the first 15 s of a 1280x720 call, each a slow encode and a burst of
    packets that lands in `to_server`. A browser adapts its rate without restarting, so the
    stand-in for it does not restart either (the server's own sender is left as it is)."""
    handle = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet):
        if not (isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP):
            await handle(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet


def fixed_rtp_origin() -> None:
    """Make aiortc's per-sender RTP timestamp origin 0, so pts survive both hops unchanged."""
    real = aiortc.rtcrtpsender.random32

    def random32() -> int:
        return 0 if sys._getframe(1).f_code.co_name == "_run_rtp" else real()

    aiortc.rtcrtpsender.random32 = random32
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class Camera:
    """The synthetic camera as a live source: `fps` frames a second for `duration` seconds."""

    def __init__(self, size, fps: float, duration: float, grain: float) -> None:
        self.pictures = [torch.from_numpy(p) for p in synthetic_frames(size, grain=grain)]
        self.count = int(duration * fps)
        self.fps = fps
        self.info = SourceInfo(size[0], size[1], fps, CLOCK, None, True, description="synthetic camera")
        self._stop = False

    def frames(self):
        step = round(1 / (self.fps * CLOCK))
        made = (
            Frame(self.pictures[n % len(self.pictures)], n * step, CLOCK, n, 0.0) for n in range(self.count)
        )
        for frame in paced(made):
            if self._stop:
                return
            yield frame  # stamped with its capture time by the pipeline as it reads it

    def close(self) -> None:
        self._stop = True


class VcamWork:
    """A sink doing the virtual camera's per-frame work (`streamer.sinks.vcam`: RGB, then I420)
    without a device; the pipeline times capture -> written."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.latencies: list[float] = []
        """Capture -> written, every frame (the pipeline keeps only a summary; drift needs the order)."""
        self.first: tuple[float, int] | None = None
        """(when, camera index) of the first frame written: the end of the start-up."""

    def write(self, frame: Frame) -> None:
        started = time.perf_counter()
        self.first = self.first or (time.monotonic(), frame.index)
        array = frame.output.numpy()
        encode(to_rgb(array if array.ndim == 3 else array[..., None], (0, 0, 0)), "i420")
        self.seconds.append(time.perf_counter() - started)
        self.latencies.append(time.monotonic() - frame.captured_at)

    def close(self) -> None:
        pass


def ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def pair(values: list[float]) -> str:
    return f"{ms(percentile(values, 50))}/{ms(percentile(values, 95))}"


def drift_ms(latencies: list[float]) -> int | None:
    """Median latency of the last third minus that of the first: > 0 when delay builds up."""
    third = len(latencies) // 3
    if third == 0:
        return None
    return round((percentile(latencies[-third:], 50) - percentile(latencies[:third], 50)) * 1000)


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


@dataclasses.dataclass
class Case:
    path: str
    size: tuple[int, int]
    model_size: tuple[int, int]
    keyframe_every: int
    mode: str


def make_config(args, weights: Path, case: Case):
    model = {"variant": args.variant, "weights": str(weights), "size": case.model_size, "device": args.device}
    overrides = {
        "model": model,
        "composite": {"mode": case.mode, "refine_foreground": False},
        "propagation": {"keyframe_every": case.keyframe_every},
    }
    for text in args.set:
        section, key, value = parse_assignment(text)
        overrides.setdefault(section, {})[key] = value
    return load_config(None, overrides)


def common(case: Case, duration: float, fps: float, delivered: int, lat: list[float], live) -> dict:
    """`duration`: from the first frame delivered (the first network result) to the end."""
    core, worker = live.core.stats, live.worker.stats
    return {
        "path": case.path,
        "frame": f"{case.size[0]}x{case.size[1]}",
        "model": "x".join(map(str, case.model_size)),
        "mode": case.mode,
        "k": case.keyframe_every,
        "s": round(duration),
        "cam_fps": fps,
        "fps": round(delivered / duration, 2),
        # Of the frames with a matte: the first frames, before the first result, go out without.
        "propagated": f"{core.propagated / max(1, core.delivered - core.unmatted):.1%}",
        "unmatted": core.unmatted,
        "key_hz": round(core.keyframes / duration, 2),
        "infer_ms": ms(worker.mean_infer_s),
        "lat_p50": ms(percentile(lat, 50)),
        "lat_p95": ms(percentile(lat, 95)),
        "drift": drift_ms(lat),
    }


async def bench_direct(args, weights: Path, case: Case) -> tuple[dict, list[float]]:
    config = make_config(args, weights, case)
    engine, smoother, compositor = build_processing(config)
    run_in_background(engine.predict, torch.zeros(case.size[1], case.size[0], 3, dtype=torch.uint8))
    camera = Camera(case.size, args.fps, args.duration, args.grain)
    sink = VcamWork()
    job = Job(camera, [sink], engine, smoother, compositor, True, 1, Settings(config.propagation))
    stages = job.stages()
    before = load()
    started = time.monotonic()
    stats = await Pipeline(camera, stages, [sink], live=True).run()
    ended = time.monotonic()
    stream = stages[0].stream
    first_at, first_index = sink.first
    delivered = stats.frames_out[0]
    row = common(case, ended - first_at, args.fps, delivered, sink.latencies, stream)
    row |= {
        "startup_s": round(first_at - started, 1),
        "camera": camera.count - first_index,
        "delivered": delivered,
        # From the first delivered frame on: frames dropped anywhere after it.
        "drops": camera.count - first_index - delivered,
        "frame_ms": "/".join(str(ms(stats.stage_seconds["live"].percentile(q))) for q in (50, 95)),
        "sink_ms": pair(sink.seconds),
        "server_ms": "-",
        "max_depth": f"{stats.max_queue_depth}/{stream.max_backlog}",
        "load": f"{before} -> {load()}",
    }
    return row, sink.latencies


async def bench_webrtc(args, weights: Path, case: Case) -> tuple[dict, list[float]]:
    config = make_config(args, weights, case)
    server = build_server(config)
    warm_up = torch.zeros(case.size[1], case.size[0], 3, dtype=torch.uint8)
    run_in_background(server.worker.engine.predict, warm_up)
    runner = web.AppRunner(server.build())
    await runner.setup()
    site = web.TCPSite(runner, args.host, 0)
    await site.start()
    base = f"http://{args.host}:{runner.addresses[0][1]}"
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    pc = RTCPeerConnection()
    track = StampedTrack(case.size, args.fps, sent_at, args.grain)
    transceiver = pc.addTransceiver(track, direction="sendrecv")
    steady_rate(transceiver.sender)

    first_back: list[int] = []  # the camera number of the first frame back

    def arrived(timestamp: int, now: float) -> None:
        number = track.number(timestamp)
        if not first_back:
            first_back.append(number)
        if (sent := sent_at.pop(number, None)) is not None:
            latencies.append(now - sent)

    on_frame_back(transceiver.receiver, arrived)
    received = 0

    first: list[float] = []  # when the first frame was decoded

    async def receive(remote) -> None:
        nonlocal received
        with contextlib.suppress(MediaStreamError):
            while True:
                await remote.recv()
                if not first:
                    first.append(time.monotonic())
                received += 1

    readers = []
    pc.on("track", lambda remote: readers.append(asyncio.ensure_future(receive(remote))))
    await pc.setLocalDescription(await pc.createOffer())
    before = load()
    async with aiohttp.ClientSession() as http:
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with http.post(f"{base}/offer", json=offer) as response:
            answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        peer = server.peers[answer["peer"]]
        max_backlog = 0
        started = time.monotonic()
        while (left := started + args.duration - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.01))
            max_backlog = max(max_backlog, len(peer.stream._frames))
        ended, sent = time.monotonic(), track.n
        async with http.get(f"{base}/stats", params={"peer": answer["peer"]}) as response:
            stats = await response.json()
        first_at = first[0] if first else ended
        # Counted from the first frame back: the frames sent before it never came back (start-up).
        first_n = first_back[0] if first_back else sent
        row = common(case, ended - first_at, args.fps, received, latencies, peer.stream)
    # From the first frame back on: frames sent but never returned (dropped by the server or
    # lost on the way; the frames in flight at the end count too).
    row |= {
        "startup_s": round(first_at - started, 1),
        "camera": sent - first_n,
        "delivered": received,
        "drops": f"{sent - first_n - received} ({stats['dropped']} server)",
        "frame_ms": f"-/{stats['frame_ms_p95']}",
        # The server's own share: frame received -> handed to its encoder (its last 120 frames).
        "server_ms": f"{stats['latency_ms_p50']}/{stats['latency_ms_p95']}",
        "sink_ms": "-",
        "max_depth": f"-/{max_backlog}",
        "load": f"{before} -> {load()}",
    }
    await pc.close()
    for reader in readers:
        reader.cancel()
    await runner.cleanup()
    return row, latencies


def print_table(rows: list[dict]) -> None:
    """A markdown table (what BENCHMARKS.md and scripts/gpu_check.sh take)."""
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "|".join("---" for _ in keys) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


async def main_async(args, weights: Path) -> list[dict]:
    rows = []
    cases = itertools.product(args.paths, args.frame_sizes, args.model_sizes, args.keyframe_every, args.modes)
    for path, size, model_size, every, mode in cases:
        case = Case(path, size, model_size, every, mode)
        bench = bench_direct if path == "direct" else bench_webrtc
        row, latencies = await bench(args, weights, case)
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
        if args.latencies:
            # Each delivered frame's latency in order: where a delay starts and whether it stays.
            name = f"{case.path}-{row['frame']}-{row['model']}-{case.mode}-k{case.keyframe_every}.json"
            args.latencies.mkdir(parents=True, exist_ok=True)
            (args.latencies / name).write_text(json.dumps([round(v, 4) for v in latencies]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frame-sizes",
        type=listed(frame_size),
        default="640x480,1280x720",
        help="camera sizes WxH, comma-separated",
    )
    parser.add_argument(
        "--model-size",
        dest="model_sizes",
        type=listed(network_size),
        default="256",
        help="model input sizes (HxW or N), comma-separated",
    )
    parser.add_argument("--variant", choices=tuple(VARIANTS), default="lite")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (skips cleanly without a GPU)")
    parser.add_argument(
        "--modes", type=listed(str), default="color", help="composite modes, comma-separated (color,blur)"
    )
    parser.add_argument(
        "--keyframe-every", type=listed(count), default="1", help="keyframe intervals, comma-separated (1,2)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any setting")
    parser.add_argument("--duration", type=positive, default=20.0, help="seconds per run")
    parser.add_argument("--fps", type=positive, default=30.0)
    parser.add_argument(
        "--paths", type=listed(str), default="direct,webrtc", help="comma-separated: direct, webrtc"
    )
    parser.add_argument("--latencies", type=Path, help="write each case's per-frame latencies (JSON) here")
    parser.add_argument(
        "--grain", type=non_negative, default=0.0, help="camera noise, std in levels (e.g. 4)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address of the server (in a private namespace: 10.77.0.1)"
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_live: skipped: --device cuda but no CUDA GPU is usable here")
        return
    if unknown := set(args.paths) - {"direct", "webrtc"}:
        raise SystemExit(f"bench_live: unknown path {sorted(unknown)[0]!r} (use direct, webrtc or both)")
    fixed_rtp_origin()
    try:
        print_table(run_with_recipe_weights(args.variant, lambda weights: main_async(args, weights)))
    except StreamerError as err:  # a setting the config refuses (--set, --modes, ...), a device
        raise SystemExit(f"bench_live: {err}") from None


def run_with_recipe_weights(variant: str, rows) -> list[dict]:
    """`asyncio.run(rows(weights))` with a file of the variant's recipe weights (removed after)."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"{variant}.safetensors"
        save_file(make_state_dict(variant), str(weights))
        return asyncio.run(rows(weights))


if __name__ == "__main__":
    main()
