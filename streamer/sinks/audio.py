"""Carries the source's audio into a file sink, in step with the video being written.

The sink calls `advance(t)` after each video frame: audio is demuxed from the source file
and muxed up to time `t` only, so memory stays flat and an interrupted job has the audio up
to its last frame. Packets are copied when the container takes the codec, else decoded and
re-encoded (AAC -> Opus for WebM). `origin` (seconds) is the source time the sink made 0:
audio moves back with the video, and packets that end before it are dropped.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator

import av
import av.bitstream

from streamer.errors import MediaError

log = logging.getLogger(__name__)

TRANSCODE_TO = {"webm": "libopus", "mp4": "aac", "mov": "aac", "matroska": "libopus"}
"""Audio codec used when the source's codec does not fit the container."""


def muxer_takes(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream) -> bool:
    """Whether `out`'s muxer takes a copy of `stream`. `supported_codecs` also lists codecs that a
    muxer refuses in some of its modes (Opus and FLAC are MP4-only, not MOV), and the refusal would
    come at the header, failing the whole job; so a throwaway muxer of the same format writes one."""
    if stream.codec_context.name not in out.supported_codecs:
        return False
    probe = av.open(io.BytesIO(), "w", format=out.format.name)
    try:
        probe.add_stream_from_template(stream)
        probe.start_encoding()
        return True
    except (av.error.FFmpegError, ValueError):
        return False
    finally:
        with contextlib.suppress(av.error.FFmpegError, ValueError):
            probe.close()


class AudioCarrier:
    def __init__(
        self,
        source: str,
        out: av.container.OutputContainer,
        origin: float = 0.0,
        mux: Callable[[av.Packet | list[av.Packet]], None] | None = None,
    ) -> None:
        """`mux` writes packets into `out` (default `out.mux`): a sink passes its own, so that a
        full disk reads the same whether a video or an audio packet met it."""
        try:
            self._input = av.open(source)
        except (av.error.FFmpegError, OSError) as err:
            raise MediaError(
                f"cannot read the audio of {source}: {err} (check the input file, or turn audio off for this output)"
            ) from err
        self._in_stream = self._input.streams.audio[0]
        self._shift = round(origin / self._in_stream.time_base)
        """`origin` in the source's audio time base."""
        self._write = mux or out.mux
        codec = self._in_stream.codec_context.name
        self.copy = muxer_takes(out, self._in_stream)
        self._bsf = None
        if self.copy:
            self._out_stream = out.add_stream_from_template(self._in_stream)
            if codec == "aac" and out.format.name.startswith(("mov", "mp4")):
                # ADTS AAC (MPEG-TS) needs its headers moved into the stream's config; the muxer
                # only does this itself when not writing fragments, so do it here. Raw AAC passes.
                self._bsf = av.bitstream.BitStreamFilterContext("aac_adtstoasc", self._in_stream)
        else:
            target = TRANSCODE_TO.get(out.format.name.split(",")[0], out.default_audio_codec)
            rate = self._in_stream.codec_context.sample_rate
            if target == "libopus" and rate not in av.codec.Codec("libopus", "w").audio_rates:
                rate = 48000
            self._out_stream = out.add_stream(target, rate=rate)
            self._out_stream.layout = self._in_stream.codec_context.layout
            log.info("transcoding audio %s -> %s for %s", codec, target, out.name)
        self._packets = self._demux()
        self._pending: av.Packet | None = None
        self._done = False

    def _demux(self) -> Iterator[av.Packet]:
        for packet in self._input.demux(self._in_stream):
            if packet.dts is None or packet.pts is None:  # the last one is an empty flush packet
                continue
            if self._shift and packet.pts + packet.duration <= self._shift:
                continue  # audio from before the first video frame
            packet.pts -= self._shift
            packet.dts -= self._shift
            yield packet

    def advance(self, until: float) -> None:
        """Mux every audio packet that starts before `until` seconds (source timeline)."""
        while not self._done:
            if self._pending is None:
                try:
                    self._pending = next(self._packets)
                except (StopIteration, av.error.FFmpegError):
                    self._done = True
                    return
            if float(self._pending.pts * self._in_stream.time_base) >= until:
                return
            packet, self._pending = self._pending, None
            self._mux(packet)

    def _mux(self, packet: av.Packet) -> None:
        if self.copy:
            for out_packet in self._bsf.filter(packet) if self._bsf is not None else [packet]:
                out_packet.stream = self._out_stream
                self._write(out_packet)
            return
        for frame in packet.decode():
            self._write(self._out_stream.encode(frame))

    def finish(self, until: float) -> None:
        """Mux the audio up to the end of the last video frame, flush, and close the source."""
        try:
            self.advance(until)
            if not self.copy:
                self._write(self._out_stream.encode(None))
        finally:
            self._done = True
            self._input.close()
