"""Load for `streamer serve`, run by tests/test_load.py inside a network namespace of its own.

Starts a real `streamer serve` (lite recipe weights at 32x32 to 64x64), then for `--duration` seconds
keeps `--peers` WebRTC peers connecting, receiving frames and hanging up (politely or by just
dropping the connection) at random, while one more peer stays connected and switches modes,
uploads and picks backgrounds, changes the shared size with the admin token and posts a few
bad requests. Writes a JSON report: every HTTP status seen, the server's descriptors, threads
and RSS after the first round and after the run, and the server log's error lines.

    python tests/load_serve.py --weights lite.safetensors --report out.json [--duration 120]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "load-test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ERROR_LINE = re.compile(r"ERROR|CRITICAL|Traceback|Exception|exception")


class Picture(VideoStreamTrack):
    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.picture = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(self.picture, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tally:
    def __init__(self) -> None:
        self.statuses: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []

    def note(self, what: str, status: int, expected: tuple[int, ...], text: str = "") -> None:
        self.statuses[f"{what} {status}"] += 1
        if status not in expected:
            self.unexpected.append(f"{what}: {status} {text[:200]}")


class Peer:
    def __init__(self, http: aiohttp.ClientSession, base: str, tally: Tally, seed: int) -> None:
        self.http, self.base, self.tally = http, base, tally
        self.pc = RTCPeerConnection()
        self.pc.addTrack(Picture(seed))
        self.frames = 0
        self.id: str | None = None
        self._reader: asyncio.Task | None = None
        self.pc.on("track", lambda track: self._start_reading(track))

    def _start_reading(self, track) -> None:
        self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames += 1

    async def post(self, path: str, body: dict, expected=(200,), headers=None, what=None) -> dict:
        headers = {"Content-Type": "application/json", "Origin": self.base, **(headers or {})}
        async with self.http.post(self.base + path, data=json.dumps(body), headers=headers) as response:
            text = await response.text()
        self.tally.note(what or path, response.status, expected, text)
        return json.loads(text) if text.startswith("{") else {}

    async def connect(self) -> bool:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await self.post("/offer", {"sdp": self.pc.localDescription.sdp, "type": "offer"})
        if "peer" not in answer:
            return False
        self.id = answer["peer"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return True

    async def wait_frames(self, count: int, timeout: float) -> bool:
        target, deadline = self.frames + count, time.monotonic() + timeout
        while self.frames < target and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.frames >= target

    async def close(self, politely: bool) -> None:
        if politely and self.id:
            await self.post("/close", {"peer": self.id})
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def png_bytes(colour) -> bytes:
    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(data, format="PNG")
    return data.getvalue()


async def churn(http, base, tally, rng: random.Random, until: float, index: int, stalls: list) -> int:
    """One of the peers that come and go; returns how many times it connected."""
    cycles = 0
    while time.monotonic() < until:
        peer = Peer(http, base, tally, seed=index * 1000 + cycles)
        try:
            if await peer.connect():
                cycles += 1
                # A new peer's first frames go out before its first keyframe (with no matte), but
                # on a loaded CPU its first connection can still take a while: a stall is a peer
                # that gets nothing before the run is over.
                patience = until - time.monotonic() + 60
                if not await peer.wait_frames(1, timeout=patience):
                    stalls.append(f"churn peer {index} cycle {cycles}: no frame in {patience:.0f} s")
                await asyncio.sleep(rng.uniform(0.2, 4.0))
        finally:
            await peer.close(politely=rng.random() < 0.5)
        await asyncio.sleep(rng.uniform(0.0, 1.0))
    return cycles


SIZES = [32, 64, [32, 64], [64, 32]]
"""What the control peer sets the shared model size to (the server starts at 32, --max-size 64)."""


async def control(
    peer: Peer, rng: random.Random, until: float, stalls: list, every_kind: bool = False
) -> int:
    """The peer that stays: switches modes and posts settings (and a few mistakes) all along;
    with `every_kind`, it makes each kind of change once first, the largest size included."""
    changes = 0
    kinds = list(range(10)) if every_kind else []
    while time.monotonic() < until or kinds:
        choice = kinds.pop(0) if kinds else rng.randrange(10)
        if choice == 0:
            headers = {"Content-Type": "image/png", "Origin": peer.base}
            colour = tuple(rng.randrange(256) for _ in range(3))
            url = f"{peer.base}/background?peer={peer.id}"
            async with peer.http.post(url, data=png_bytes(colour), headers=headers) as response:
                peer.tally.note("/background", response.status, (200,), await response.text())
        elif choice == 1:
            await peer.post(
                "/params", {"peer": peer.id, "composite": {"background": "studio.png", "mode": "image"}}
            )
        elif choice == 2:
            size = 64 if every_kind and changes < 10 else rng.choice(SIZES)
            await peer.post("/params", {"peer": peer.id, "size": size}, headers=ADMIN, what="/params size")
        elif choice == 3:  # mistakes: refused, and nothing else happens
            body = rng.choice(
                [
                    {"peer": peer.id, "composite": {"mode": "sepia"}},
                    {"peer": peer.id, "composite": {"color": [float("inf"), 0, 0]}},
                    {"peer": peer.id, "size": 1048576},
                    {"peer": "nobody", "composite": {"mode": "blur"}},
                ]
            )
            async with peer.http.post(
                peer.base + "/params", data=json.dumps(body), headers={"Content-Type": "application/json"}
            ) as response:
                peer.tally.note("/params bad", response.status, (400, 403), await response.text())
        else:
            mode = rng.choice(["matte", "color", "blur", "rgba", "color"])
            composite = {"mode": mode, "color": [rng.randrange(256) for _ in range(3)]}
            composite["blur_radius"] = rng.randrange(0, 40)
            smoothing = {"enabled": rng.random() < 0.5, "strength": round(rng.random(), 2)}
            await peer.post("/params", {"peer": peer.id, "composite": composite, "smoothing": smoothing})
        changes += 1
        if changes % 20 == 0 and not await peer.wait_frames(1, timeout=30):
            stalls.append(f"control peer: no frame in 30 s after {changes} changes")
        await asyncio.sleep(rng.uniform(0.1, 0.8))
    return changes


def process_figures(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "rss_mb": round(rss_kb / 1024, 1),
    }


async def settle(pid: int, target: dict | None, timeout: float) -> dict:
    """The server's figures once descriptors and threads are back to `target` (or after `timeout`);
    with no target, once they stop changing for two seconds."""
    deadline, last, steady_since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        now = process_figures(pid)
        key = (now["fds"], now["threads"])
        if target is not None and key[0] <= target["fds"] and key[1] <= target["threads"]:
            return now
        if target is None:
            if key != last:
                last, steady_since = key, time.monotonic()
            elif time.monotonic() - steady_since >= 2.0:
                return now
        if time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.25)


async def sample(pid: int, until: float, timeline: list[dict], every: float = 10.0) -> None:
    """The server's figures every `every` seconds until `until`: a leak grows all along, a pool
    or cache levels off."""
    started = time.monotonic()
    while (now := time.monotonic()) < until:
        timeline.append({"s": round(now - started), **process_figures(pid)})
        await asyncio.sleep(min(every, until - now))


async def load(base: str, pid: int, peers: int, duration: float, seed: int) -> dict:
    rng = random.Random(seed)
    tally, stalls = Tally(), []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        # First round: every kind of request once, with every peer at the same time, so that the
        # server's pools and caches have grown to what the run needs before the baseline is taken.
        stayer = Peer(http, base, tally, seed=10**6)
        assert await stayer.connect(), tally.unexpected
        await control(stayer, rng, time.monotonic() + 8, stalls, every_kind=True)
        first_until = time.monotonic() + 10
        await asyncio.gather(*(churn(http, base, tally, rng, first_until, i, stalls) for i in range(peers)))
        after_first = await settle(pid, None, 60)

        until = time.monotonic() + duration
        timeline: list[dict] = []
        sampler = asyncio.ensure_future(sample(pid, until, timeline))
        results = await asyncio.gather(
            control(stayer, rng, until, stalls),
            *(churn(http, base, tally, random.Random(seed + i), until, i, stalls) for i in range(peers)),
        )
        await sampler
        stayed = await stayer.wait_frames(5, timeout=30)
        async with http.get(f"{base}/stats", params={"peer": stayer.id}) as response:
            stayer_stats = await response.json()
        await stayer.close(politely=True)
    after_run = await settle(pid, after_first, 60)
    return {
        "statuses": dict(tally.statuses),
        "unexpected": tally.unexpected,
        "stalls": stalls,
        "control_changes": results[0],
        "connections": sum(results[1:]),
        "control_peer_frames": stayer.frames,
        "control_peer_still_receiving": stayed,
        "control_peer_stats": stayer_stats,
        "after_first_round": after_first,
        "after_run": after_run,
        "timeline": timeline,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def helper_parser(description: str) -> argparse.ArgumentParser:
    """The options every load helper takes: the weights file, and where the report goes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--report", required=True)
    return parser


def main() -> int:
    parser = helper_parser(__doc__)
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="streamer-load-"))
    (work / "backgrounds").mkdir()
    (work / "backgrounds" / "studio.png").write_bytes(png_bytes((40, 90, 200)))
    report: dict = {}
    with running_server(
        [
            "--mode",
            "matte",
            "--max-size",
            "64",
            "--admin-token",
            TOKEN,
            "--backgrounds",
            str(work / "backgrounds"),
        ],
        args.weights,
        report,
        args.report,
    ) as (base, pid):
        report.update(asyncio.run(load(base, pid, args.peers, args.duration, args.seed)))
    return 0


@contextlib.contextmanager
def running_server(options: list[str], weights: str, report: dict, report_path: str, env: dict | None = None):
    """`streamer serve` (lite weights at 32x32, plus `options`) on a free loopback port: yields its
    (base URL, pid) once it accepts connections; then stops it with SIGTERM and writes `report`,
    with the interfaces, the exit code and the log's error lines, to `report_path`."""
    port = free_port()
    command = [sys.executable, "-m", "streamer", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--variant", "lite", "--weights", weights, "--size", "32", "--device", "cpu", *options]
    log_path = Path(tempfile.mkdtemp(prefix="streamer-serve-log-")) / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
    report["interfaces"] = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    try:
        wait_for_port(port, server, log_path)
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            report["exit_code"] = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            report["exit_code"] = "killed"
        log_text = log_path.read_text()
        report["error_lines"] = [line for line in log_text.splitlines() if ERROR_LINE.search(line)][:50]
        report["log_tail"] = log_text[-3000:]
        Path(report_path).write_text(json.dumps(report, indent=1))


def wait_for_port(port: int, server: subprocess.Popen, log_path: Path, timeout: float = 90) -> None:
    """Returns once `server` accepts connections on `port` (it may load a model first)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"streamer serve did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
