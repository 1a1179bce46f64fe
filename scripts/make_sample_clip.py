"""Write a short synthetic clip with sound, to try `streamer run` before pointing it at your own video.

python scripts/make_sample_clip.py clip.mp4 [--seconds 1] [--size 640x360] [--fps 25]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from script_args import count, frame_size, positive  # noqa: E402

from tests.media import DEFAULT_VIDEO_CODEC, make_clip  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="output " + "/".join(DEFAULT_VIDEO_CODEC))
    parser.add_argument("--seconds", type=positive, default=1.0)
    parser.add_argument("--size", type=frame_size, default="640x360", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=count, default=25)
    args = parser.parse_args()
    path: Path = args.path
    if path.suffix.lower() not in DEFAULT_VIDEO_CODEC:
        parser.error(f"{path}: the name must end in one of {', '.join(DEFAULT_VIDEO_CODEC)}")
    if path.exists():
        print(f"{path} exists: kept as it is")  # never overwrite what the user has
        return 0
    width, height = args.size
    frames = max(1, round(args.seconds * args.fps))
    try:
        make_clip(path, frames=frames, size=(width, height), fps=args.fps, audio=True)
    except (OSError, av.FFmpegError) as err:
        path.unlink(missing_ok=True)  # ours, half written: the next try must not find it "kept"
        parser.exit(1, f"{parser.prog}: error: cannot write {path}: {err.strerror or err}\n")
    print(f"wrote {path}: {frames} frames {width}x{height} at {args.fps} fps with a tone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
