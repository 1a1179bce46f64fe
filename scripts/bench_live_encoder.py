"""The server's VP8 encoder against aiortc's own, on camera-like 720p and 480p frames.

Frames are bench_live's synthetic room with sensor grain (std 4 levels, as webcams show), handed
over I420 the way the compositing pool does, at two output rates: one frame a second (a CPU
running the network) and 30 fps (a GPU). Per encoder: bytes and RTP packets per frame, encode
time p50/p95 (one thread, as both use on two cores) and the luma PSNR of the decoded picture.

    python scripts/bench_live_encoder.py                 # 1280x720 and 640x480, 40 frames each
    python scripts/bench_live_encoder.py --sizes 1280x720 --frames 100
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from av import VideoFrame

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_live import synthetic_frames  # noqa: E402
from script_args import count, frame_size, listed, non_negative  # noqa: E402

from streamer.live.aiortc_compat import LiveVp8Encoder  # noqa: E402

CLOCK = Fraction(1, 90000)
RATES = {"1 fps": 90000, "30 fps": 3000}
"""Output rates as RTP ticks between frames."""


def measure(encoder, pictures: list[np.ndarray], step: int, count: int) -> dict:
    decoder = Vp8Decoder()
    times, sizes, packets, psnr = [], [], [], []
    for i in range(count):
        picture = pictures[i % len(pictures)]
        frame = VideoFrame.from_ndarray(picture, format="yuv420p")
        frame.pts, frame.time_base = i * step, CLOCK
        started = time.perf_counter()
        payloads, timestamp = encoder.encode(frame)
        times.append(time.perf_counter() - started)
        sizes.append(sum(map(len, payloads)))
        packets.append(len(payloads))
        data = b"".join(vp8_depayload(p) for p in payloads)
        (decoded,) = decoder.decode(JitterFrame(data=data, timestamp=timestamp))
        height = decoded.height
        error = decoded.to_ndarray()[:height].astype(np.float64) - picture[:height]
        psnr.append(10 * np.log10(255**2 / max(np.mean(error**2), 1e-9)))
    warm = slice(3, None)  # the first frames open the codec and make the keyframe
    return {
        "kB/frame": round(float(np.median(sizes[warm])) / 1000, 1),
        "packets": int(np.median(packets[warm])),
        "encode ms p50": round(float(np.percentile(times[warm], 50)) * 1000, 1),
        "encode ms p95": round(float(np.percentile(times[warm], 95)) * 1000, 1),
        "PSNR Y dB": round(float(np.median(psnr[warm])), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=listed(frame_size), default="1280x720,640x480", help="WxH, comma-separated"
    )
    parser.add_argument("--frames", type=count, default=40, help="frames per encoder and rate")
    parser.add_argument("--grain", type=non_negative, default=4.0, help="camera noise, std in levels")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        text = f"{size[0]}x{size[1]}"
        pictures = [
            VideoFrame.from_ndarray(p, format="rgb24").reformat(format="yuv420p").to_ndarray()
            for p in synthetic_frames(size, grain=args.grain)
        ]
        for rate, step in RATES.items():
            for name, make in (("aiortc", Vp8Encoder), ("streamer", LiveVp8Encoder)):
                row = {"frame": text, "rate": rate, "encoder": name}
                rows.append(row | measure(make(), pictures, step, args.frames))
                print(rows[-1], file=sys.stderr, flush=True)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
