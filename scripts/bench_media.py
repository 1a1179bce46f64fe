"""Decode and encode speed of the PyAV sources and file sinks; prints a Markdown table.

    python scripts/bench_media.py [--size 1280x720] [--frames 60]

Decode: VideoSource with frame threads (files) against slice threads (live). Encode: each
file sink with RGB and RGBA frames (`frame.output`), audio off, default quality settings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from media import make_clip  # noqa: E402
from script_args import count, frame_size  # noqa: E402

from streamer.sinks.open import open_sink  # noqa: E402
from streamer.sources.video import VideoSource, VideoSourceParams  # noqa: E402


def decode_fps(clip: Path, live: bool) -> float:
    source = VideoSource(str(clip), VideoSourceParams(live=live))
    start = time.perf_counter()
    count = sum(1 for _ in source.frames())
    return count / (time.perf_counter() - start)


def encode_fps(frames: list, info, out: str, channels: int) -> float:
    sink = open_sink(out, info=info, overwrite=True, audio=False)
    start = time.perf_counter()
    for frame in frames:
        if channels == 4:
            alpha = torch.full(frame.image.shape[:2] + (1,), 200, dtype=torch.uint8)
            frame.output = torch.cat([frame.image, alpha], dim=2)
        else:
            frame.output = frame.image
        sink.write(frame)
    sink.close()
    return len(frames) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=frame_size, default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=count, default=60)
    args = parser.parse_args()
    width, height = args.size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip = make_clip(root / "src.mp4", frames=args.frames, size=(width, height), audio=False, options={})
        print(f"{args.frames} frames {width}x{height}, torch threads {torch.get_num_threads()}\n")
        print("| step | fps |\n| --- | ---: |")
        for live in (False, True):
            label = "slice threads (live)" if live else "frame threads (file)"
            print(f"| decode H.264, {label} | {decode_fps(clip, live):.1f} |")
        source = VideoSource(str(clip))
        info, frames = source.info, list(source.frames())
        for name in ("out.mp4", "out.mov", "out.webm", "out.mkv", "png/"):
            for channels in (3, 4):
                fps = encode_fps(frames, info, f"{root}/{name}", channels)
                print(f"| encode {name} {'RGBA' if channels == 4 else 'RGB'} | {fps:.1f} |")


if __name__ == "__main__":
    main()
