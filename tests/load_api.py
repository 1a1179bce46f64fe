"""Load for the image API, run by tests/test_api_load.py inside a network namespace of its own.

Starts a real `streamer serve --no-webrtc` (lite recipe weights at 32x32), asks once for the
answer to each of a few pictures and formats (the references), runs a warm-up round, takes the
server's descriptors, threads and RSS, then sends `--requests` requests from `--clients`
concurrent clients, each answer compared with its reference byte for byte (no answer may go to
the wrong request), and takes the figures again once the server is idle. Writes a JSON report.

    python tests/load_api.py --weights lite.safetensors --report out.json [--requests 200]
"""

from __future__ import annotations

import asyncio
import collections
import io
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
from load_serve import helper_parser, running_server, settle
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
KEY = "load-test-api-key-0123456789"
FORMATS = ("mask", "cutout", "composite")


def pictures(count: int) -> list[bytes]:
    out = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        height, width = 48 + 8 * seed, 64 - 4 * seed
        data = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(data, format="PNG")
        out.append(data.getvalue())
    return out


async def ask(http: aiohttp.ClientSession, base: str, picture: bytes, fmt: str) -> tuple[int, bytes]:
    form = aiohttp.FormData()
    form.add_field("image", picture, filename="p.png", content_type="image/png")
    form.add_field("format", fmt)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with http.post(f"{base}/v1/matte", data=form, headers=headers) as response:
        return response.status, await response.read()


async def load(base: str, pid: int, requests: int, clients: int) -> dict:
    work = [(picture, fmt) for picture in pictures(4) for fmt in FORMATS]
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        references = {}
        for picture, fmt in work:
            status, body = await ask(http, base, picture, fmt)
            assert status == 200, body[:300]
            references[picture, fmt] = body
        statuses: collections.Counter[int] = collections.Counter()
        wrong: list[str] = []

        async def client(index: int, count: int) -> None:
            for n in range(count):
                picture, fmt = work[(index * 7 + n) % len(work)]
                status, body = await ask(http, base, picture, fmt)
                statuses[status] += 1
                if status != 200 or body != references[picture, fmt]:
                    wrong.append(f"client {index} request {n}: {status} {body[:120]!r}")

        await asyncio.gather(*(client(i, 2) for i in range(clients)))  # pools grow to what the run needs
        baseline = await settle(pid, None, 30)
        started = time.monotonic()
        shares = [requests // clients + (i < requests % clients) for i in range(clients)]
        await asyncio.gather(*(client(i, share) for i, share in enumerate(shares)))
        seconds = time.monotonic() - started
        warm_up = 2 * clients
    after = await settle(pid, baseline, 30)
    return {
        "requests": sum(statuses.values()) - warm_up,
        "statuses": {str(k): v for k, v in statuses.items()},
        "wrong": wrong[:20],
        "seconds": round(seconds, 2),
        "baseline": baseline,
        "after": after,
    }


def main() -> int:
    parser = helper_parser(__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    report: dict = {}
    options = ["--no-webrtc", "--threads", "1"]
    with running_server(options, args.weights, report, args.report, env={"STREAMER_API_KEY": KEY}) as (
        base,
        pid,
    ):
        report.update(asyncio.run(load(base, pid, args.requests, args.clients)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
