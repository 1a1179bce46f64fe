"""What each clip becomes: one whole-clip task, or segments cut at keyframes.

`probe` reads a clip's packet index (demuxing only, no decoding): every frame's pts and
which frames are keyframes. A clip longer than `segment_frames` is cut at the first keyframe
after each `segment_frames` frames. A segment writes the frames with pts in
[start_pts, end_pts) but starts decoding at an earlier keyframe, so that at least
`warmup_frames` frames go through the temporal smoother first (processed, not written): its
matte then matches the one an unsplit run would have at that frame.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction

WARMUP_TIME_CONSTANTS = 6
"""The smoother's memory decays as exp(-t / tau): after 6 tau what is left is 0.25%, under
one 8-bit level of the output."""


@dataclass(frozen=True)
class Probe:
    source: str
    pts: tuple[int, ...] = ()
    """Every frame's pts in presentation order (stream time base)."""
    keyframes: tuple[int, ...] = ()
    """Indices (into `pts`) of the keyframes."""
    time_base: Fraction = Fraction(1, 1)
    fps: float | None = None
    audio: bool = False
    error: str | None = None

    @property
    def frames(self) -> int:
        return len(self.pts)


def probe(source: str) -> Probe:
    """The packet index of `source`'s first video stream; a one-line `error` when unreadable."""
    import av

    try:
        with av.open(source, "r", timeout=10.0) as container:
            if not container.streams.video:
                return Probe(source, error=f"no video stream in {source} (pass a video file)")
            stream = container.streams.video[0]
            entries = []
            timed = True
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    timed = False
                entries.append((packet.pts if packet.pts is not None else len(entries), packet.is_keyframe))
            rate = stream.average_rate or stream.guessed_rate
            time_base = stream.time_base or Fraction(1, 90000)
            audio = bool(container.streams.audio)
    except (av.error.FFmpegError, OSError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        return Probe(source, error=f"cannot read {source}: {reason} (the file is corrupt or truncated)")
    if not entries:
        return Probe(source, error=f"no frames in {source} (the file is corrupt or truncated)")
    entries.sort()
    pts = tuple(p for p, _ in entries)
    # Without timestamps a segment cannot be found again by seeking: such clips are not split.
    keys = tuple(i for i, (_, key) in enumerate(entries) if key) if timed else (0,)
    return Probe(source, pts, keys, time_base, float(rate) if rate else None, audio)


@dataclass(frozen=True)
class Segment:
    index: int
    first: int
    """Index of the first frame written."""
    end: int
    """Index after the last frame written."""
    start_pts: int
    end_pts: int | None
    seek_pts: int | None
    """pts of the keyframe to start decoding at (None: from the start of the file)."""
    warmup: int
    """Frames decoded before `first` (processed, not written)."""

    @property
    def frames(self) -> int:
        return self.end - self.first


@dataclass(frozen=True)
class Task:
    """One unit of work for a worker: a whole clip (segment None) or one segment of it."""

    source: str
    name: str
    output: str
    """The file (or PNG folder) the worker writes; renamed into place when complete."""
    frames: int
    segment: Segment | None = None
    key: str = field(default="")

    def to_dict(self) -> dict:
        return asdict(self)


def warmup_frames(time_constant: float, fps: float | None) -> int:
    """Frames that cover WARMUP_TIME_CONSTANTS time constants of the smoother (0 when it is off)."""
    if time_constant <= 0:
        return 0
    return math.ceil(WARMUP_TIME_CONSTANTS * time_constant * (fps or 30.0)) + 1


def split(info: Probe, segment_frames: int, warmup: int) -> list[Segment]:
    """Segments of about `segment_frames` frames, each starting at a keyframe; one if the clip is short."""
    n = info.frames
    cuts = [0]
    for k in info.keyframes:
        # A cut only where a full segment lies behind it and at least half of one ahead.
        if k - cuts[-1] >= segment_frames and n - k >= max(1, segment_frames // 2):
            cuts.append(k)
    bounds = [*cuts, n]
    segments = []
    for i, (first, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        seek = None
        if first > 0:
            # The last keyframe at least `warmup` frames before the cut.
            at = bisect.bisect_right(info.keyframes, max(0, first - warmup)) - 1
            seek = info.keyframes[max(at, 0)]
        segments.append(
            Segment(
                index=i,
                first=first,
                end=end,
                start_pts=info.pts[first],
                end_pts=info.pts[end] if end < n else None,
                seek_pts=info.pts[seek] if seek is not None else None,
                warmup=first - seek if seek is not None else 0,
            )
        )
    return segments


def plan_key(config_sections: dict, weights: str, fmt: str, segments: list[Segment]) -> str:
    """A short hash of everything that shapes a segment's pixels: stale segments are never joined."""
    text = json.dumps(
        {"config": config_sections, "weights": weights, "format": fmt, "cuts": [s.first for s in segments]},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:8]
