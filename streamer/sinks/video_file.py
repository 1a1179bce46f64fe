"""Video files written with PyAV: .mp4 (H.264), .mov (ProRes), .webm (VP9), .mkv (FFV1).

The container and encoder are created at the first frame, when its size and channel count
(1 matte, 3 RGB, 4 RGBA) are known. Frames keep their timing: the encoder's time base is
the source's, pts pass through unchanged (variable frame rate kept) and the muxer rescales
them to the container's own time base. Only a late start is removed: when the first frame's
pts is above 0 (an RTSP camera, an MPEG-TS file) video and audio are both moved back by it,
as FFmpeg does, so players do not show a long empty lead-in. RGBA into .mp4 is composited over black (H.264 has
no alpha) with a warning.

Crash safety: the file is written as `out.partial.mp4` beside `out.mp4` and renamed when
`close()` has flushed the encoder and written the trailer, so the final name only ever holds a
complete file. MP4/MOV are written fragmented (a fragment at each keyframe and at least every
second) and Matroska/WebM in clusters of at most a second, so even a job killed outright (SIGKILL,
power cut, out of memory) leaves a partial that plays up to its last fragment. A re-run keeps
such a leftover as `out.interrupted.mp4` and starts afresh (see `paths.keep_interrupted`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamer.config import OutputParams
from streamer.errors import MediaError
from streamer.frame import Frame
from streamer.sinks.audio import AudioCarrier
from streamer.sinks.paths import (
    check_output_file,
    keep_interrupted,
    output_array,
    partial_path,
    remove_quietly,
    try_lock,
)
from streamer.sources.base import SourceInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoFormat:
    codec: str
    pix_fmts: dict[int, str]
    """Encoder pixel format per channel count of the frames."""
    options: dict[str, str] = field(default_factory=dict)
    alpha: bool = True
    """False: RGBA frames are composited over black first."""
    even: bool = True
    """Chroma subsampling or the codec needs even width and height."""
    yuv: bool = True
    container: dict[str, str] = field(default_factory=dict)
    """Muxer options (crash safety: what is written stays playable)."""
    keep_up: str = "use a smaller camera size"
    """What lets a live recording in this format keep up with the camera when its encoder cannot."""


# Fragments: self-contained moof+mdat pairs, a new one at each keyframe and at least every second
# (the moov, with the edit list that keeps B-frame timing, is written with the first one).
# flush_packets hands each finished fragment to the OS at once instead of holding it in
# FFmpeg's 32 KiB write buffer, so what a kill leaves is every fragment finished so far.
FRAGMENTED = {
    "movflags": "frag_keyframe+delay_moov+default_base_moof",
    "frag_duration": "1000000",
    "flush_packets": "1",
}
# Matroska holds a cluster in memory until it ends: short clusters, flushed, lose at most a second.
SHORT_CLUSTERS = {"cluster_time_limit": "1000", "flush_packets": "1"}

FORMATS: dict[str, VideoFormat] = {
    ".mp4": VideoFormat(
        "libx264",
        {1: "yuv420p", 3: "yuv420p", 4: "yuv420p"},
        alpha=False,
        container=FRAGMENTED,
        keep_up="set output.preset=ultrafast, or use a smaller camera size",
    ),
    # ProRes 4444 keeps alpha; 422 HQ otherwise (profile 3), half the size.
    ".mov": VideoFormat(
        "prores_ks",
        {1: "yuv422p10le", 3: "yuv422p10le", 4: "yuva444p10le"},
        {"vendor": "apl0"},
        container=FRAGMENTED,
        # 37-68 ms a 1280x720 frame on a 2-core CPU (BENCHMARKS.md, "A recording beside the live core").
        keep_up="ProRes is too slow to record live on a small CPU: record .mp4, or .webm or .mkv for alpha",
    ),
    ".webm": VideoFormat(
        "libvpx-vp9",
        {1: "yuv420p", 3: "yuv420p", 4: "yuva420p"},
        {"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"},
        container=SHORT_CLUSTERS,
    ),
    # Lossless: RGB stays RGB, so no colour matrix and no chroma subsampling.
    ".mkv": VideoFormat(
        "ffv1",
        {1: "gray", 3: "bgr0", 4: "bgra"},
        {"level": "3", "slicecrc": "1"},
        even=False,
        yuv=False,
        container=SHORT_CLUSTERS,
    ),
}
INPUT_FORMATS = {1: "gray", 3: "rgb24", 4: "rgba"}


REALTIME_PRESETS = frozenset({"ultrafast", "superfast", "veryfast"})
"""`output.preset`s at which VP9 encodes in realtime mode too (live jobs default to veryfast)."""


def codec_options(fmt: VideoFormat, channels: int, params: OutputParams) -> dict[str, str]:
    options = dict(fmt.options)
    if fmt.codec == "libx264":
        options.update(crf=str(params.crf), preset=params.preset)
    elif fmt.codec == "libvpx-vp9":
        options["crf"] = str(params.crf)
        if params.preset in REALTIME_PRESETS:
            # libvpx's own realtime mode: at "good" a live 1280x720 recording on a 2-core CPU kept
            # 15-18 of 30 fps, 2-3 s behind; realtime at its fastest speed 28 (BENCHMARKS.md).
            options.update(deadline="realtime", **{"cpu-used": "8"})
    elif fmt.codec == "prores_ks":
        options["profile"] = "4" if channels == 4 else "3"
    return options


def flatten(rgba: np.ndarray, color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """RGBA laid over a solid colour (straight alpha), rounded to the nearest value."""
    alpha = rgba[:, :, 3:].astype(np.uint16)
    under = np.array(color, np.uint16) * (255 - alpha)
    return ((rgba[:, :, :3].astype(np.uint16) * alpha + under + 127) // 255).astype(np.uint8)


class VideoFileSink:
    realtime = False

    @property
    def keep_up(self) -> str:
        return self.format.keep_up

    def __init__(self, path: str | Path, *, info: SourceInfo, params: OutputParams | None = None) -> None:
        self.path = Path(path)
        self.info = info
        self.params = params or OutputParams()
        suffix = self.path.suffix.lower()
        if suffix not in FORMATS:
            raise MediaError(f"unsupported output format: {self.path} (use {', '.join(FORMATS)})")
        self.format = FORMATS[suffix]
        check_output_file(self.path, self.params.overwrite)
        self.partial = partial_path(self.path)
        kept = keep_interrupted(self.path)
        if kept is not None:
            log.warning(
                "an earlier run writing %s was interrupted: what it wrote is kept as %s", self.path, kept
            )
        self._held: int | None = None
        """Open descriptor locking the partial file while this sink writes it."""
        self._lock = threading.Lock()
        self._out: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._audio: AudioCarrier | None = None
        self._channels = 0
        self._time_base = Fraction(1, 1)
        self._origin = 0
        """Source pts (encoder time base) that becomes 0 in the output."""
        self._last_pts: int | None = None
        self._last_step = 0
        self._closed = False
        self.frames_written = 0

    def write(self, frame: Frame) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"write after close on {self.path}")
            array = output_array(frame)
            if self._out is None:
                self._start(frame, array)
            pts = self._next_pts(frame)
            encoded = self._to_av(array)
            encoded.pts, encoded.time_base = pts, self._time_base
            self._mux(self._stream.encode(encoded))
            self.frames_written += 1
            if self._audio is not None:
                self._audio.advance(self._seconds(pts + self._last_step))

    def _start(self, frame: Frame, array: np.ndarray) -> None:
        height, width, channels = array.shape
        if self.format.even:
            width, height = width - width % 2, height - height % 2
        if channels == 4 and not self.format.alpha and self.params.flatten_color is None:
            log.warning(
                "%s cannot hold alpha: compositing over black (use .mov, .webm or .mkv to keep it)", self.path
            )
        self._channels = channels
        self._time_base = frame.time_base or self.info.time_base
        self._origin = max(0, frame.pts or 0)
        try:
            self._held = os.open(self.partial, os.O_WRONLY | os.O_CREAT, 0o666)
            if not try_lock(self._held):
                raise MediaError(
                    f"{self.path} is being written by another streamer job (choose another output name)"
                )
            self._out = av.open(str(self.partial), "w", container_options=self.format.container)
        except (av.error.FFmpegError, OSError) as err:
            self._release()
            raise MediaError(f"cannot create {self.path}: {err} (choose another output path)") from err
        except MediaError:
            self._release()
            raise
        try:
            self._stream = self._add_video(width, height, channels)
            if self.params.audio and self.info.audio_path:
                self._audio = AudioCarrier(
                    self.info.audio_path, self._out, origin=self._seconds(self._origin), mux=self._mux
                )
        except BaseException:
            # Nothing was written yet: leave no header-less file behind.
            self._out.close()
            self._out = None
            remove_quietly(self.partial)
            self._release()
            raise

    def _add_video(self, width: int, height: int, channels: int) -> av.video.stream.VideoStream:
        stream = self._out.add_stream(self.format.codec)
        stream.width, stream.height = width, height
        stream.pix_fmt = self.format.pix_fmts[channels]
        stream.time_base = self._time_base
        ctx = stream.codec_context
        ctx.time_base = self._time_base
        if self.info.fps:
            ctx.framerate = Fraction(self.info.fps).limit_denominator(1001)
        if self.format.yuv:
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1  # BT.709, as converted in _to_av
            ctx.color_range = 1  # limited ("MPEG") range
        stream.options = codec_options(self.format, channels, self.params)
        return stream

    def _next_pts(self, frame: Frame) -> int:
        """The frame's pts in the encoder's time base, strictly increasing (encoders refuse repeats)."""
        if frame.pts is None:
            step = self._last_step or self._default_step()
            pts = 0 if self._last_pts is None else self._last_pts + step
        else:
            pts = round(frame.pts * frame.time_base / self._time_base) if frame.time_base else frame.pts
            pts -= self._origin
        if self._last_pts is not None:
            if pts <= self._last_pts:
                log.warning(
                    "%s: frame %d repeats a timestamp; shifting it by one tick", self.path, frame.index
                )
                pts = self._last_pts + 1
            self._last_step = pts - self._last_pts
        else:
            self._last_step = self._default_step()
        self._last_pts = pts
        return pts

    def _default_step(self) -> int:
        fps = self.info.fps or 30.0
        return max(1, round(1 / (fps * self._time_base)))

    def _seconds(self, pts: int) -> float:
        return float(pts * self._time_base)

    def _to_av(self, array: np.ndarray) -> av.VideoFrame:
        if array.shape[2] != self._channels:
            raise ValueError(
                f"{self.path}: frames changed from {self._channels} to {array.shape[2]} channels"
            )
        if self._channels == 4 and not self.format.alpha:
            array = flatten(array, self.params.flatten_color or (0, 0, 0))
        ctx = self._stream.codec_context
        array = np.ascontiguousarray(array[: ctx.height, : ctx.width])
        image = av.VideoFrame.from_ndarray(
            array[:, :, 0] if array.shape[2] == 1 else array, INPUT_FORMATS[array.shape[2]]
        )
        if image.width != ctx.width or image.height != ctx.height or self.format.yuv:
            image = image.reformat(
                width=ctx.width,
                height=ctx.height,
                format=ctx.pix_fmt,
                dst_colorspace="ITU709" if self.format.yuv else None,
                dst_color_range="MPEG" if self.format.yuv else None,
            )
        return image

    def _mux(self, packets: list[av.Packet]) -> None:
        try:
            self._out.mux(packets)
        except (av.error.FFmpegError, OSError) as err:
            raise MediaError(f"cannot write {self.path}: {err} (check the free disk space)") from err

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._out is None:
                return
            try:
                try:
                    self._mux(self._stream.encode(None))
                    if self._audio is not None and self._last_pts is not None:
                        self._audio.finish(self._seconds(self._last_pts + self._last_step))
                except BaseException:
                    # The trailer will fail the same way (a full disk): report the first error.
                    with contextlib.suppress(av.error.FFmpegError, OSError):
                        self._out.close()
                    raise
                try:
                    self._out.close()
                except (av.error.FFmpegError, OSError) as err:
                    raise MediaError(f"cannot finish {self.path}: {err} (check the free disk space)") from err
                # Complete: only now does the output take its name (replacing an old one
                # only with --overwrite, checked when the sink was opened).
                os.replace(self.partial, self.path)
            finally:
                self._release()

    def _release(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None
