"""The two ends of a segment, and the lossless join of a clip's segments.

A segment is read by `SegmentSource` (the usual video source, started at a keyframe and
stopped at the segment's end) and written through `WindowSink` (the usual file sink, given
only the frames from the segment's first pts on: the warm-up frames before it only
prime the temporal smoother). `join` then copies the segments' packets, without decoding,
into one file with the source's timestamps, and carries the source's audio once with the
same `AudioCarrier` a whole-clip output uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av

from streamer.errors import MediaError
from streamer.frame import Frame
from streamer.sinks.audio import AudioCarrier
from streamer.sinks.video_file import FORMATS
from streamer.sources.video import VideoSource, VideoSourceParams

log = logging.getLogger(__name__)


class SegmentSource(VideoSource):
    """`url` from the keyframe at `seek_pts` (None: the start) up to, not including, `end_pts`."""

    def __init__(self, url: str, seek_pts: int | None, end_pts: int | None) -> None:
        self._seek_pts = seek_pts
        self._end_pts = end_pts
        super().__init__(url, VideoSourceParams(live=False))

    def _open(self, network: bool) -> av.container.InputContainer:
        container = super()._open(network)
        if self._seek_pts is not None:
            # Backward: the keyframe at or before seek_pts (an earlier one only adds warm-up).
            container.seek(self._seek_pts, stream=container.streams.video[0], backward=True, any_frame=False)
        return container

    def frames(self) -> Iterator[Frame]:
        frames = super().frames()
        try:
            for frame in frames:
                if self._end_pts is not None and frame.pts is not None and frame.pts >= self._end_pts:
                    return
                yield frame
        finally:
            frames.close()  # releases the decoder now, not when the generator is collected


class WindowSink:
    """Passes on the frames from pts `start_pts` on; checks that none before it was missed."""

    def __init__(self, sink, start_pts: int) -> None:
        self.sink = sink
        self.start_pts = start_pts
        self.skipped = 0
        self._seen_start = False

    def write(self, frame: Frame) -> None:
        if frame.pts < self.start_pts:
            self.skipped += 1
            return
        if not self._seen_start:
            if frame.pts != self.start_pts:
                raise MediaError(
                    f"segment should start at pts {self.start_pts} but decoding began at {frame.pts} "
                    "(the file's index is inconsistent; run it with a larger --segment-frames)"
                )
            self._seen_start = True
        self.sink.write(frame)

    def close(self) -> None:
        self.sink.close()


def join(
    segments: list[Path],
    offsets: list[int],
    time_base: Fraction,
    out: Path,
    audio_source: str | None = None,
    audio_origin: float = 0.0,
) -> int:
    """Copy `segments` into `out`, segment i moved later by `offsets[i]` (source time base).

    Each segment file starts at 0, as the file sink writes it; `offsets` put every frame back
    at its source pts minus the clip's first pts, which is where an unsplit run puts it.
    The audio starts at `audio_origin` seconds of the source and ends with the last frame,
    measured as the file sink does (last pts plus the step before it). Returns the number of
    video packets written.
    """
    written = 0
    # The container options of the file sink's format (fragmented MP4/MOV): the same kind of file
    # as an unsplit run writes.
    fmt = FORMATS.get(Path(out).suffix.lower())
    options = fmt.container if fmt is not None else {}
    with av.open(str(segments[0])) as first, av.open(str(out), "w", container_options=options) as container:
        template = first.streams.video[0]
        video = container.add_stream_from_template(template)
        # Matroska needs the alpha_mode tag to keep VP9's alpha plane (BlockAdditional).
        video.metadata.update({k: v for k, v in template.metadata.items() if k.lower() == "alpha_mode"})
        audio = AudioCarrier(audio_source, container, origin=audio_origin) if audio_source else None
        times: list[Fraction] = []
        for path, offset in zip(segments, offsets, strict=True):
            with av.open(str(path)) as part:
                stream = part.streams.video[0]
                shift = offset * time_base
                for packet in part.demux(stream):
                    if packet.dts is None and packet.pts is None:
                        continue  # the demuxer's empty flush packet
                    step = round(shift / stream.time_base)
                    if shift != step * stream.time_base:
                        raise MediaError(
                            f"cannot join {path}: its time base {stream.time_base} cannot hold "
                            "the source's timestamps (use an output format that keeps them: mov or mkv)"
                        )
                    if packet.pts is not None:
                        packet.pts += step
                        times.append(packet.pts * stream.time_base)
                    if packet.dts is not None:
                        packet.dts += step
                    packet.stream = video
                    container.mux(packet)
                    written += 1
                    if audio is not None and packet.pts is not None:
                        audio.advance(float(packet.pts * stream.time_base))
        if audio is not None and times:
            times.sort()
            last_step = times[-1] - times[-2] if len(times) > 1 else Fraction(0)
            audio.finish(float(times[-1] + last_step))
    return written
