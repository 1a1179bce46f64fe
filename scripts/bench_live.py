"""Live latency of `streamer serve`: a paced synthetic camera through the shared worker.

Two paths, each at every frame size asked for:

- direct: frames go straight into a peer (worker slot -> smoothing + compositing -> the
  latest-frame output track), and the track is pulled the way aiortc's sender pulls it;
  latency = capture -> pulled from the track.
- webrtc: an in-process aiortc client sends the synthetic track (VP8) to the real aiohttp app
  over loopback and receives the composited video back; latency = handed to the client's
  sender -> the last RTP packet of that frame back at the client. The client keeps a map
  pts -> send time and reads the pts the server copied onto the returned frame (aiortc adds a
  random RTP timestamp origin per sender; the benchmark fixes it at 0 so the pts comes back
  unchanged). Arrival, not decode, ends the measure because the client's (stock aiortc)
  jitter buffer releases a frame only when the *next* frame's first packet arrives: at the
  low frame rates of a CPU that would add a whole output interval that a browser (and the
  server, see streamer.live.aiortc_compat) never waits. Decoding one frame adds a few ms.

Both report latency p50/p95, delivered fps, drops, mean inference time, the share of time the
worker waited for fresher frames (`fresh_wait`) and for results to be sent (`quiet`; both in
streamer.live.worker) and the largest depth seen of each hand-over point (slot waiting/in
flight/result, output track), whose bounds are 1.
Target: p95 latency <= inference time + 2 frame intervals, judged per frame: `over` is a frame's
latency minus the time its own batch spent in the engine (so a busy machine's slow inference
does not hide or excuse the overhead), and `met` says whether over_p95 <= 2 frame intervals.
`over` is split into four hops, each as p50/p95 ms: to_server (client encode, network, server
decode), wait (for the worker, plus the hand-overs around the engine), compose (smoothing and
compositing) and back (server encode, network). Weights: the deterministic recipe (speed does
not depend on weight values). Usage:
    python scripts/bench_live.py --frame-sizes 640x480,1280x720 --model-size 256 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
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

import streamer.live.app  # noqa: E402
from streamer.config import load_config, parse_assignment, parse_size  # noqa: E402
from streamer.frame import Frame  # noqa: E402
from streamer.live.peer import PeerSession  # noqa: E402
from streamer.live.serve import build_server  # noqa: E402
from streamer.live.stats import percentile  # noqa: E402
from streamer.model.recipe import make_state_dict  # noqa: E402

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


class Depths:
    """Largest depth seen at each hand-over point of a peer, sampled every few ms."""

    def __init__(self) -> None:
        self.max = {"waiting": 0, "in_flight": 0, "result": 0, "track": 0}

    def sample(self, peer: PeerSession) -> None:
        slot = peer.slot
        now = {
            "waiting": int(slot._waiting is not None),
            "in_flight": int(slot.busy),
            "result": int(slot._result is not None),
            "track": int(peer.track._fresh.is_set()),
        }
        for key, value in now.items():
            self.max[key] = max(self.max[key], value)

    async def watch(self, peers) -> None:
        while True:
            for peer in list(peers()):
                self.sample(peer)
            await asyncio.sleep(0.005)


class Measures:
    """Per returned frame: end-to-end latency and the inference time of that very frame."""

    def __init__(self) -> None:
        self.sent_at: dict[int, float] = {}
        """pts -> capture (or send) time."""
        self.infer_s: dict[int, float] = {}
        """pts -> seconds its batch spent in the engine (recorded by the server's finisher)."""
        self.server_times: dict[int, tuple[float, float, float]] = {}
        """pts -> (reached the server, compositing started, compositing done), server side."""
        self.latencies: list[float] = []
        self.overheads: list[float] = []
        self.hops: list[tuple[float, float, float, float]] = []

    def returned(self, pts: int, at: float) -> None:
        sent = self.sent_at.pop(pts, None)
        if sent is None:
            return
        infer = self.infer_s.pop(pts, 0.0)
        self.latencies.append(at - sent)
        self.overheads.append(at - sent - infer)
        if (times := self.server_times.pop(pts, None)) is not None:
            reached, composing, composed = times
            self.hops.append(
                (reached - sent, composing - reached - infer, composed - composing, at - composed)
            )


class RecordingFinisher:
    """The server's finisher, noting each frame's inference time by pts."""

    def __init__(self, inner, measures: Measures) -> None:
        self.inner, self.measures = inner, measures
        self.compositor, self.smoother = inner.compositor, inner.smoother

    def __call__(self, frame):
        self.measures.infer_s[frame.pts] = frame.meta["infer_s"]
        started = time.monotonic()
        result = self.inner(frame)
        # captured_at is when the frame reached the server: decoded (webrtc) or made (direct).
        self.measures.server_times[frame.pts] = (frame.captured_at, started, time.monotonic())
        return result


def ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def row(path, size, duration, measures: Measures, delivered, dropped, server, fps, depths) -> dict:
    lat, over = measures.latencies, measures.overheads
    infer = [a - b for a, b in zip(lat, over, strict=True)]
    budget = 2 / fps
    p95_over = percentile(over, 95)
    stats = server.worker.stats

    def share(seconds: float) -> str:  # of the worker's engine time
        return f"{seconds / max(stats.total_infer_s, 1e-9):.1%}"

    return {
        "path": path,
        "frame": f"{size[0]}x{size[1]}",
        "s": round(duration),
        "lat_p50": ms(percentile(lat, 50)),
        "lat_p95": ms(percentile(lat, 95)),
        "infer_p50": ms(percentile(infer, 50)),
        "infer_p95": ms(percentile(infer, 95)),
        "over_p50": ms(percentile(over, 50)),
        "over_p95": ms(p95_over),
        "met": "yes" if p95_over is not None and p95_over <= budget else "no",
        "fps_out": round(delivered / duration, 2),
        "drops": dropped,
        "batches": stats.batches,
        # Time the worker waited for fresher frames, then for results to be sent before the next batch.
        "fresh_wait": share(stats.fresh_wait_s),
        "quiet": share(stats.quiet_wait_s),
        "max_depth": "/".join(str(v) for v in depths.max.values()),
        **hop_columns(measures.hops),
        "drift": drift_ms(lat),
    }


HOPS = ("to_server", "wait", "compose", "back")


def hop_columns(hops: list[tuple[float, ...]]) -> dict[str, str]:
    """p50/p95 ms of each part of `over`: capture -> server (encode, send, decode), waiting for the
    worker (plus the hand-overs around the engine), compositing, server -> client (encode, send)."""
    columns = {}
    for name, values in zip(HOPS, zip(*hops, strict=True) if hops else [[]] * len(HOPS), strict=True):
        columns[name] = f"{ms(percentile(list(values), 50))}/{ms(percentile(list(values), 95))}"
    return columns


def drift_ms(latencies: list[float]) -> int | None:
    """Median latency of the last third minus that of the first: > 0 when delay builds up."""
    third = len(latencies) // 3
    if third == 0:
        return None
    return round((percentile(latencies[-third:], 50) - percentile(latencies[:third], 50)) * 1000)


async def paced(fps: float, duration: float):
    """Yield frame numbers on a 1/fps grid for `duration` seconds (skipping none)."""
    start = time.monotonic()
    n = 0
    while (due := start + n / fps) < start + duration:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        yield n
        n += 1


async def bench_direct(server, measures, size, duration, fps, grain) -> dict:
    pictures = [torch.from_numpy(p) for p in synthetic_frames(size, grain=grain)]
    await server._startup(None)
    peer = PeerSession(RTCPeerConnection(), server.worker, server.make_finisher(), server.executor)

    async def camera():
        async for n in paced(fps, duration):
            measures.sent_at[n * 3000] = now = time.monotonic()
            yield Frame(pictures[n % len(pictures)], n * 3000, CLOCK, n, now)

    async def sender():  # pulls like aiortc's RTCRtpSender
        with contextlib.suppress(MediaStreamError):
            while True:
                measures.returned((await peer.track.recv()).pts, time.monotonic())

    depths = Depths()
    watcher = asyncio.ensure_future(depths.watch(lambda: [peer]))
    pull = asyncio.ensure_future(sender())
    started = time.monotonic()
    await peer._read_frames(camera())
    elapsed = time.monotonic() - started
    watcher.cancel()
    delivered, dropped = peer.track.sent, peer.slot.dropped + peer.track.dropped
    await peer.close()
    pull.cancel()
    await server._cleanup(None)
    return row("direct", size, elapsed, measures, delivered, dropped, server, fps, depths)


class StampedTrack(VideoStreamTrack):
    """The synthetic camera as a WebRTC track; remembers when each pts was handed over."""

    def __init__(self, size, fps: float, sent_at: dict[int, float], grain: float) -> None:
        super().__init__()
        # Cameras deliver YUV: convert once here, so the client's encoder does not pay an RGB
        # conversion per frame on the two cores the server needs.
        self.pictures = [
            VideoFrame.from_ndarray(p, format="rgb24").reformat(format="yuv420p").to_ndarray()
            for p in synthetic_frames(size, grain=grain)
        ]
        self.fps = fps
        self.sent_at = sent_at
        self.n = 0
        self.start: float | None = None

    async def recv(self) -> VideoFrame:
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.n / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = VideoFrame.from_ndarray(self.pictures[self.n % len(self.pictures)], format="yuv420p")
        frame.pts, frame.time_base = self.n * 3000, CLOCK
        self.sent_at[frame.pts] = time.monotonic()
        self.n += 1
        return frame


def arrival_times(receiver) -> dict[int, float]:
    """RTP timestamp -> when the last packet (marker bit) of that frame reached `receiver`."""
    arrivals: dict[int, float] = {}
    handle = receiver._handle_rtp_packet

    async def handle_rtp_packet(packet, arrival_time_ms):
        if packet.marker:
            arrivals[packet.timestamp] = time.monotonic()
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle_rtp_packet
    return arrivals


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


async def bench_webrtc(server, measures, size, duration, fps, grain) -> dict:
    runner = web.AppRunner(server.build())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    pc = RTCPeerConnection()
    track = StampedTrack(size, fps, measures.sent_at, grain)
    transceiver = pc.addTransceiver(track, direction="sendrecv")
    steady_rate(transceiver.sender)
    arrivals = arrival_times(transceiver.receiver)
    received = 0

    async def receive(remote) -> None:
        nonlocal received
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await remote.recv()
                received += 1
                measures.returned(frame.pts, arrivals.pop(frame.pts, time.monotonic()))

    readers = []
    pc.on("track", lambda remote: readers.append(asyncio.ensure_future(receive(remote))))
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with http.post(f"{base}/offer", json=offer) as response:
            answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        depths = Depths()
        watcher = asyncio.ensure_future(depths.watch(server.peers.values))
        await asyncio.sleep(duration)
        watcher.cancel()
        async with http.get(f"{base}/stats", params={"peer": answer["peer"]}) as response:
            stats = await response.json()
    # Frames sent but never returned: dropped by the server (newest wins) or lost on the way.
    lost = track.n - received
    await pc.close()
    for reader in readers:
        reader.cancel()
    await runner.cleanup()
    result = row("webrtc", size, duration, measures, received, lost, server, fps, depths)
    result["drops"] = f"{lost} ({stats['dropped']} server)"
    return result


def make_server(args, weights: Path, measures: Measures):
    model = {"variant": args.variant, "weights": str(weights), "size": args.model_size, "device": args.device}
    overrides = {"model": model, "composite": {"mode": args.mode}}
    for text in args.set:
        section, key, value = parse_assignment(text)
        overrides.setdefault(section, {})[key] = value
    config = load_config(None, overrides)
    server = build_server(config)
    make = server.make_finisher
    server.make_finisher = lambda: RecordingFinisher(make(), measures)
    return server


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print(" | ".join(k.ljust(widths[k]) for k in keys))
    print("-|-".join("-" * widths[k] for k in keys))
    for r in rows:
        print(" | ".join(str(r[k]).ljust(widths[k]) for k in keys))


async def main_async(args, weights: Path) -> list[dict]:
    rows = []
    for path in args.paths.split(","):
        if path not in ("direct", "webrtc"):
            raise SystemExit(f"bench_live: unknown path {path!r} (use direct, webrtc or direct,webrtc)")
        for size in args.frame_sizes:
            measures = Measures()
            server = make_server(args, weights, measures)
            bench = bench_direct if path == "direct" else bench_webrtc
            # Warm the model first so the first batch's start-up cost is not in the figures.
            server.worker.engine.predict(torch.zeros(size[1], size[0], 3, dtype=torch.uint8))
            rows.append(await bench(server, measures, size, args.duration, args.fps, args.grain))
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frame-sizes", default="640x480,1280x720", help="camera sizes WxH, comma-separated")
    parser.add_argument("--model-size", default="256", help="model input size (HxW or N)")
    parser.add_argument("--variant", default="lite")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="color", help="composite mode")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any setting")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--paths", default="direct,webrtc", help="comma-separated: direct, webrtc")
    parser.add_argument("--grain", type=float, default=0.0, help="camera noise, std in levels (e.g. 4)")
    parser.add_argument(
        "--stock-encoder",
        action="store_true",
        help="the server sends with aiortc's own VP8 encoder (streamer.live.aiortc_compat's baseline)",
    )
    args = parser.parse_args()
    args.frame_sizes = [tuple(int(v) for v in s.split("x")) for s in args.frame_sizes.split(",")]
    args.model_size = parse_size(args.model_size)
    fixed_rtp_origin()
    if args.stock_encoder:
        streamer.live.app.use_live_encoder = lambda sender, codec: False
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"{args.variant}.safetensors"
        save_file(make_state_dict(args.variant), str(weights))
        rows = asyncio.run(main_async(args, weights))
    print_table(rows)


if __name__ == "__main__":
    main()
