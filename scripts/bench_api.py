"""The image API (`POST /v1/matte`, `streamer.live.api`): images/s and latency, alone and with live peers.

`streamer serve`'s app runs in this process (recipe weights; speed does not depend on their
values) with the model at `--model-size`; `--clients` concurrent HTTP clients send `--requests`
pictures of each size (multipart, format cutout: matte, foreground estimation, RGBA PNG) and
time each answer. With `--peers N`, N in-process aiortc peers (the stand-in for a browser from
scripts/bench_live.py: a paced synthetic camera over loopback) stay connected during the run,
and their delivered fps and keyframe rate are reported too, first without image requests
(`--live-alone` seconds) then during them (`alone -> with images`), so that what images cost the
live video shows. Each row reports the load average before and after. Usage:

    flock /tmp/bench.lock python scripts/bench_api.py --sizes 512,1024 --peers 0,1 --requests 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import sys
import time
from pathlib import Path

import aiohttp
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiohttp import web  # noqa: E402
from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402
from bench_live import (  # noqa: E402  (it puts the repository on sys.path)
    StampedTrack,
    fixed_rtp_origin,
    load,
    print_table,
    run_with_recipe_weights,
    steady_rate,
    synthetic_frames,
)
from script_args import count, frame_size, listed, network_size, positive, whole  # noqa: E402

from streamer.config import load_config  # noqa: E402
from streamer.live.serve import build_server  # noqa: E402
from streamer.live.stats import percentile  # noqa: E402
from streamer.priority import run_in_background  # noqa: E402


def picture(side: int) -> bytes:
    """The synthetic camera's room and person at side x side, as a PNG file."""
    data = io.BytesIO()
    Image.fromarray(synthetic_frames((side, side), count=1)[0]).save(data, format="PNG")
    return data.getvalue()


class LivePeer:
    """An in-process WebRTC peer sending a paced synthetic camera and counting what comes back."""

    def __init__(self, size: tuple[int, int], fps: float) -> None:
        self.pc = RTCPeerConnection()
        self.track = StampedTrack(size, fps, {}, 0.0)
        transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        steady_rate(transceiver.sender)
        self.received = 0
        self.id: str | None = None
        self._readers: list[asyncio.Task] = []
        self.pc.on("track", lambda remote: self._readers.append(asyncio.ensure_future(self._read(remote))))

    async def _read(self, remote) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await remote.recv()
                self.received += 1

    async def connect(self, http: aiohttp.ClientSession, base: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        async with http.post(f"{base}/offer", json=offer) as response:
            answer = await response.json()
        self.id = answer["peer"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        deadline = time.monotonic() + 120
        while self.received < 5:  # the first network results are back
            if time.monotonic() > deadline:
                raise SystemExit("bench_api: the live peer received no video in 120 s")
            await asyncio.sleep(0.05)

    async def stats(self, http: aiohttp.ClientSession, base: str) -> dict:
        async with http.get(f"{base}/stats", params={"peer": self.id}) as response:
            return await response.json()

    async def close(self) -> None:
        await self.pc.close()
        for reader in self._readers:
            reader.cancel()


async def matte(http: aiohttp.ClientSession, base: str, data: bytes) -> float:
    form = aiohttp.FormData()
    form.add_field("image", data, filename="picture.png", content_type="image/png")
    form.add_field("format", "cutout")
    started = time.monotonic()
    async with http.post(f"{base}/v1/matte", data=form) as response:
        body = await response.read()
        if response.status != 200:
            raise SystemExit(f"bench_api: {response.status} {body[:200]!r}")
    return time.monotonic() - started


async def live_counts(http, base: str, live: list[LivePeer]) -> list[tuple[int, int]]:
    """Each peer's frames received back and keyframes so far."""
    return [(peer.received, (await peer.stats(http, base))["keyframes"]) for peer in live]


def rates(before: list[tuple[int, int]], after: list[tuple[int, int]], seconds: float) -> tuple[str, str]:
    """Delivered fps and keyframe rate of each peer between two `live_counts`."""
    fps = "/".join(f"{(b[0] - a[0]) / seconds:.1f}" for a, b in zip(before, after, strict=True))
    key_hz = "/".join(f"{(b[1] - a[1]) / seconds:.2f}" for a, b in zip(before, after, strict=True))
    return fps, key_hz


async def bench_row(args, http, base: str, server, side: int, peers: int) -> dict:
    data = picture(side)
    live = [LivePeer(args.camera, args.fps) for _ in range(peers)]
    for peer in live:
        await peer.connect(http, base)
    for _ in range(2):  # warm up: the first answers at this size
        await matte(http, base, data)
    before = load()
    if live:  # the peers without image requests first
        counts = await live_counts(http, base, live)
        await asyncio.sleep(args.live_alone)
        alone = rates(counts, await live_counts(http, base, live), args.live_alone)
    counts = await live_counts(http, base, live)
    images, image_s = server.worker.stats.images, server.worker.stats.image_infer_s
    latencies: list[float] = []
    todo = iter(range(args.requests))

    async def client() -> None:
        for _ in todo:
            latencies.append(await matte(http, base, data))

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    seconds = time.monotonic() - started
    row = {
        "picture": f"{side}x{side}",
        "model": "x".join(map(str, args.model_size)),
        "peers": peers,
        "clients": args.clients,
        "requests": len(latencies),
        "images_s": round(len(latencies) / seconds, 2),
        "lat_p50_ms": round(percentile(latencies, 50) * 1000),
        "lat_p95_ms": round(percentile(latencies, 95) * 1000),
        "image_pass_ms": round((server.worker.stats.image_infer_s - image_s) / args.requests * 1000),
        "live_fps": "-",
        "live_key_hz": "-",
    }
    assert server.worker.stats.images - images == args.requests
    if live:
        fps, key_hz = rates(counts, await live_counts(http, base, live), seconds)
        row["live_fps"] = f"{alone[0]} -> {fps}"
        row["live_key_hz"] = f"{alone[1]} -> {key_hz}"
    row["load"] = f"{before} -> {load()}"
    for peer in live:
        await peer.close()
    return row


async def main_async(args, weights: Path) -> list[dict]:
    model = {"variant": args.variant, "weights": str(weights), "size": args.model_size, "device": "cpu"}
    if args.backend:
        model["backend"] = args.backend
    config = load_config(None, {"model": model, "composite": {"mode": "color", "refine_foreground": False}})
    server = build_server(config)
    # Converted and warmed up at the inference thread's priority, as in a live job.
    run_in_background(server.worker.engine.predict, torch.zeros(64, 64, 3, dtype=torch.uint8))
    runner = web.AppRunner(server.build())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    rows = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            for peers, side in itertools.product(args.peers, args.sizes):
                rows.append(await bench_row(args, http, base, server, side, peers))
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        await runner.cleanup()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=listed(count), default="512,1024", help="picture sides, comma-separated"
    )
    parser.add_argument(
        "--peers", type=listed(whole), default="0,1", help="live peers during each row, comma-separated"
    )
    parser.add_argument("--requests", type=count, default=20, help="requests per row")
    parser.add_argument("--clients", type=count, default=2, help="concurrent HTTP clients")
    parser.add_argument("--variant", default="lite")
    parser.add_argument(
        "--model-size", type=network_size, default="256", help="the network's input (HxW or N)"
    )
    parser.add_argument("--backend", choices=("auto", "torch", "openvino"), help="default: serve's (auto)")
    parser.add_argument("--camera", type=frame_size, default="640x480", help="the live peers' camera WxH")
    parser.add_argument("--fps", type=positive, default=30.0, help="the live peers' camera rate")
    parser.add_argument(
        "--live-alone",
        type=positive,
        default=10.0,
        help="seconds the peers are measured without images first",
    )
    args = parser.parse_args()
    fixed_rtp_origin()  # also keeps the peers' traffic on loopback
    print_table(run_with_recipe_weights(args.variant, lambda weights: main_async(args, weights)))


if __name__ == "__main__":
    main()
