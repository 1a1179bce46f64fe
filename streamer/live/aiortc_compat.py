"""Everything that reaches into aiortc's private parts, in one place, each name checked before use.

Two patches make live video faster, each by replacing a private attribute of an aiortc object:

* the sender's encoder becomes `LiveVp8Encoder`, our VP8 settings;
* the receiver's jitter buffer becomes `MarkerJitterBuffer`, which releases frames one interval earlier.

Both rely on names aiortc does not promise to keep. Before patching, every such name is checked
(`missing_for_encoder`, `missing_for_jitter_buffer`); when one is gone (a newer aiortc renamed
it), the object keeps aiortc's own part, which works, only slower, a WARNING names what is missing
(once per process), and `status()` (the "compat" field of `/stats`) says which patches are in use.
Tested with aiortc `TESTED` (pyproject.toml pins that range). The public classes subclassed here
(`Vp8Encoder`, `JitterBuffer`) are imported plainly: without them nothing would work anyway.

The encoder: libvpx at its fastest speed, with a bit budget that rare frames cannot inflate.

aiortc's encoder runs libvpx at constant bitrate against the frames' own timestamps, so a frame
may spend all the bits of the time since the previous one. When the network delivers a frame a
second (a CPU), each one gets a whole second's bits: at 720p of camera content 57 kB at aiortc's
starting rate and ~150 kB at its top rate (1.5 Mbit/s), 17-25 ms to encode and 45-115 RTP packets
that aiortc sends one by one in Python, all of it on the way to the viewer. Here libvpx sees a
clock that advances at most `MAX_FRAME_GAP` per frame, which changes nothing at camera rates and
caps each frame at a tenth of a second's bits otherwise; the RTP timestamps stay the frames' own,
which the browser's jitter buffer relies on. The speed is fixed at libvpx's fastest (`cpu-used` 16): aiortc's -6
lets libvpx aim at a share of the frame interval, which is slower when frames are rare.

The jitter buffer hands a frame to the decoder as soon as its last packet is in.

aiortc's buffer knows a frame is complete only when the first packet of the *next* frame
arrives, so every incoming frame waits one whole frame interval (33 ms at 30 fps) before
it is decoded. Senders (browsers and aiortc alike) set the RTP marker bit on the last
packet of each frame, so a frame whose packets run without a gap from the buffer's start
to a marked packet is complete already. Anything else (a gap, a lost marker) falls back to
aiortc's own rule, so a damaged stream behaves exactly as before.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from fractions import Fraction

import aiortc
from aiortc import jitterbuffer, mediastreams
from aiortc.codecs import vpx
from aiortc.sdp import SessionDescription
from av import CodecContext, VideoFrame
from av.video.frame import PictureType

log = logging.getLogger(__name__)

TESTED = "1.16"
"""The aiortc minor version these patches were written and tested against."""
SENDER_ENCODER = "_RTCRtpSender__encoder"
RECEIVER_BUFFER = "_RTCRtpReceiver__jitter_buffer"

MAX_FRAME_GAP = Fraction(1, 10)
"""The most time one frame's bit budget covers (seconds)."""
_MAX_STEP = int(MAX_FRAME_GAP * 90000)
"""The same in RTP ticks."""
SPEED = 16
"""libvpx `cpu-used` in realtime mode: 16 is its fastest (same PSNR within 0.2 dB at 720p here)."""
KEYFRAME_EVERY = 300
"""Frames between unrequested keyframes, so a viewer whose keyframe request was lost recovers."""
RESTART_AT = 0.1
"""A change of the target bitrate by more than this share reopens the codec (libvpx keeps the rate it
was opened with), which costs a keyframe."""


class LiveVp8Encoder(vpx.Vp8Encoder):
    """aiortc's VP8 encoder interface (`encode`, `target_bitrate`, packetizer) with our settings."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = 0
        """libvpx's timeline, in RTP ticks: the frames' own, with each step capped."""
        self._last: int | None = None
        """The RTP timestamp of the previous frame."""

    def encode(self, frame: VideoFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        timestamp = mediastreams.convert_timebase(frame.pts, frame.time_base, mediastreams.VIDEO_TIME_BASE)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        if self.codec is not None and self._must_reopen(frame):
            self.codec = None
        if self.codec is None:
            self.codec = self._open(frame.width, frame.height)
            self._last = None
        if self._last is not None:
            self._clock += min(max(timestamp - self._last, 1), _MAX_STEP)
        self._last = timestamp
        if force_keyframe:
            frame.pict_type = PictureType.I
        pts, time_base = frame.pts, frame.time_base
        frame.pts, frame.time_base = self._clock, mediastreams.VIDEO_TIME_BASE
        try:
            data = b"".join(bytes(packet) for packet in self.codec.encode(frame))
        finally:  # the caller's frame keeps its own timing
            frame.pts, frame.time_base = pts, time_base
        if not data:
            return [], timestamp
        payloads = self._packetize(data, self.picture_id)
        self.picture_id = (self.picture_id + 1) % (1 << 15)
        return payloads, timestamp

    def _must_reopen(self, frame: VideoFrame) -> bool:
        opened_at = self.codec.bit_rate
        return (frame.width, frame.height) != (self.codec.width, self.codec.height) or (
            abs(self.target_bitrate - opened_at) > RESTART_AT * opened_at
        )

    def _open(self, width: int, height: int) -> CodecContext:
        bitrate = self.target_bitrate
        codec = CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.time_base = mediastreams.VIDEO_TIME_BASE
        codec.bit_rate = bitrate
        codec.gop_size = KEYFRAME_EVERY
        codec.qmin, codec.qmax = 2, 56  # libwebrtc's VP8 range: never the blockiest quantisers
        codec.thread_count = vpx.number_of_threads(width * height, os.cpu_count() or 1)
        codec.options = {
            "deadline": "realtime",
            "cpu-used": str(SPEED),
            "lag-in-frames": "0",  # no look-ahead: each frame comes out as it goes in
            # Constant bitrate over a one-second buffer (FFmpeg: buffer ms = bufsize * 1000 / rate).
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
        }
        return codec


class MarkerJitterBuffer(jitterbuffer.JitterBuffer):
    def _remove_frame(self, sequence_number: int) -> jitterbuffer.JitterFrame | None:
        packets = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:  # a gap: aiortc's rule would not release anything either
                return None
            if packets and packet.timestamp != packets[0].timestamp:
                break
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return jitterbuffer.JitterFrame(
                    data=b"".join(p._data for p in packets), timestamp=packet.timestamp
                )
        return super()._remove_frame(sequence_number)


def answered_video_codec(sdp: str) -> str | None:
    """The codec (e.g. "video/VP8") a session description sends its video with, if it sends any."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind == "video" and media.direction in ("sendrecv", "sendonly") and media.rtp.codecs:
            return media.rtp.codecs[0].mimeType
    return None


def _absent(owner, names: tuple[str, ...], label: str) -> list[str]:
    return [f"{label}.{name}" for name in names if not hasattr(owner, name)]


def missing_for_encoder(sender=None) -> list[str]:
    """The private aiortc names `LiveVp8Encoder` and its swap use that this aiortc lacks."""
    missing = _absent(vpx, ("number_of_threads",), "aiortc.codecs.vpx")
    missing += _absent(mediastreams, ("convert_timebase", "VIDEO_TIME_BASE"), "aiortc.mediastreams")
    missing += _absent(vpx.Vp8Encoder, ("_packetize", "target_bitrate"), "Vp8Encoder")
    missing += _absent(vpx.Vp8Encoder(), ("codec", "picture_id"), "Vp8Encoder()")
    if sender is not None:
        missing += _absent(sender, (SENDER_ENCODER,), "RTCRtpSender")
    return missing


def missing_for_jitter_buffer(receiver=None) -> list[str]:
    """The private aiortc names `MarkerJitterBuffer` and its swap use that this aiortc lacks."""
    jb = jitterbuffer.JitterBuffer
    missing = _absent(jb, ("_remove_frame", "remove", "capacity"), "JitterBuffer")
    missing += _absent(jb(capacity=2, is_video=True), ("_packets", "_origin", "_is_video"), "JitterBuffer()")
    if set(inspect.signature(jitterbuffer.JitterFrame).parameters) != {"data", "timestamp"}:
        missing.append("JitterFrame(data, timestamp)")
    if not missing and not _reads_packet_data(jb._remove_frame):
        missing.append("RtpPacket._data")
    if receiver is not None:
        buffer = getattr(receiver, RECEIVER_BUFFER, None)
        if type(buffer) is not jb:
            missing.append(f"RTCRtpReceiver.{RECEIVER_BUFFER}")
    return missing


@functools.cache
def _reads_packet_data(remove_frame) -> bool:
    """Packets carry their depayloaded bytes in a private attribute that aiortc's receiver sets at
    run time, so no object can be asked; the name aiortc's own buffer reads is the one to trust."""
    try:
        return "._data" in inspect.getsource(remove_frame)
    except (OSError, TypeError):
        return False


_fallbacks: dict[str, list[str]] = {}
"""Patch name -> the missing names that made it fall back (in this process)."""


def _usable(patch: str, missing: list[str]) -> bool:
    if not missing:
        _fallbacks.pop(patch, None)
        return True
    if _fallbacks.get(patch) != missing:
        log.warning(
            "aiortc %s lacks %s: the %s stays aiortc's own (slower); streamer was tested with aiortc %s.x",
            aiortc.__version__,
            ", ".join(missing),
            patch.replace("_", " "),
            TESTED,
        )
    _fallbacks[patch] = missing
    return False


def status() -> dict:
    """What `/stats` shows as "compat": the aiortc version, and which patches fell back and why."""
    version = aiortc.__version__
    out = {"aiortc": version, "tested": f"{TESTED}.x", "tested_version": version.startswith(TESTED + ".")}
    for patch in ("encoder", "jitter_buffer"):
        missing = _fallbacks.get(patch)
        out[patch] = "fallback: missing " + ", ".join(missing) if missing else "ok"
    return out


def use_live_encoder(sender, codec: str | None) -> bool:
    """Give the server's video `RTCRtpSender` a `LiveVp8Encoder` when the answer chose VP8.

    `codec` is what `answered_video_codec` read from the answer. Call after
    `setLocalDescription(answer)` and before the first frame is sent (aiortc creates its encoder on
    the first frame and never replaces one). Returns False, and the sender keeps aiortc's encoder,
    for another codec, an encoder already in use, or an aiortc that lacks a name this relies on."""
    if codec != "video/VP8" or not _usable("encoder", missing_for_encoder(sender)):
        return False
    if getattr(sender, SENDER_ENCODER) is not None:
        return False
    setattr(sender, SENDER_ENCODER, LiveVp8Encoder())
    return True


def release_on_marker(receiver) -> bool:
    """Give a video `RTCRtpReceiver` the marker-bit buffer; call before any packet arrives.

    Returns False, and the receiver keeps aiortc's buffer (one frame interval slower), for an audio
    receiver or an aiortc that lacks a name this relies on."""
    if not _usable("jitter_buffer", missing_for_jitter_buffer(receiver)):
        return False
    current = getattr(receiver, RECEIVER_BUFFER)
    if not current._is_video:
        return False
    setattr(receiver, RECEIVER_BUFFER, MarkerJitterBuffer(capacity=current.capacity, is_video=True))
    return True
