"""Write a short synthetic clip with sound, to try `streamer run` before pointing it at your own video.

python scripts/make_sample_clip.py clip.mp4 [--seconds 1] [--size 640x360]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.media import make_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="output .mp4/.mov/.webm/.mkv")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--size", default="640x360", help="WxH")
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()
    if Path(args.path).exists():
        print(f"{args.path} exists: kept as it is")  # never overwrite what the user has
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    frames = max(1, round(args.seconds * args.fps))
    make_clip(args.path, frames=frames, size=(width, height), fps=args.fps, audio=True)
    print(f"wrote {args.path}: {frames} frames {width}x{height} at {args.fps} fps with a tone")


if __name__ == "__main__":
    main()
