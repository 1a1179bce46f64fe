"""The server's VP8 encoder: libvpx at its fastest speed, with a bit budget that rare frames cannot inflate.

aiortc's encoder runs libvpx at constant bitrate against the frames' own timestamps, so a frame
may spend all the bits of the time since the previous one. When the network delivers a frame a
second (a CPU), each one gets a whole second's bits: at 720p of camera content 57 kB at aiortc's
starting rate and ~150 kB at its top rate (1.5 Mbit/s), 17-25 ms to encode and 45-115 RTP packets
that aiortc sends one by one in Python, all of it on the way to the viewer. Here libvpx sees a
clock that advances at most `MAX_FRAME_GAP` per frame, which changes nothing at camera rates and
caps each frame at a tenth of a second's bits otherwise; the RTP timestamps stay the frames' own,
which the browser's jitter buffer relies on. The speed is fixed at libvpx's fastest (`cpu-used` 16): aiortc's -6
lets libvpx aim at a share of the frame interval, which is slower when frames are rare.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction

from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase
from aiortc.sdp import SessionDescription
from av import CodecContext, VideoFrame
from av.video.frame import PictureType

log = logging.getLogger(__name__)

MAX_FRAME_GAP = Fraction(1, 10)
"""The most time one frame's bit budget covers (seconds)."""
_MAX_STEP = int(MAX_FRAME_GAP / VIDEO_TIME_BASE)
"""The same in RTP ticks."""
SPEED = 16
"""libvpx `cpu-used` in realtime mode: 16 is its fastest (same PSNR within 0.2 dB at 720p here)."""
KEYFRAME_EVERY = 300
"""Frames between unrequested keyframes, so a viewer whose keyframe request was lost recovers."""
RESTART_AT = 0.1
"""A change of the target bitrate by more than this share reopens the codec (libvpx keeps the rate it
was opened with), which costs a keyframe."""


class LiveVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder interface (`encode`, `target_bitrate`, packetizer) with our settings."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = 0
        """libvpx's timeline, in RTP ticks: the frames' own, with each step capped."""
        self._last: int | None = None
        """The RTP timestamp of the previous frame."""

    def encode(self, frame: VideoFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        timestamp = convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)
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
        frame.pts, frame.time_base = self._clock, VIDEO_TIME_BASE
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
        codec.time_base = VIDEO_TIME_BASE
        codec.bit_rate = bitrate
        codec.gop_size = KEYFRAME_EVERY
        codec.qmin, codec.qmax = 2, 56  # libwebrtc's VP8 range: never the blockiest quantisers
        codec.thread_count = number_of_threads(width * height, os.cpu_count() or 1)
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


def answered_video_codec(sdp: str) -> str | None:
    """The codec (e.g. "video/VP8") a session description sends its video with, if it sends any."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind == "video" and media.direction in ("sendrecv", "sendonly") and media.rtp.codecs:
            return media.rtp.codecs[0].mimeType
    return None


def use_live_encoder(sender, codec: str | None) -> bool:
    """Give the server's video `RTCRtpSender` a `LiveVp8Encoder` when the answer chose VP8.

    `codec` is what `answered_video_codec` read from the answer. Call after
    `setLocalDescription(answer)` and before the first frame is sent. The encoder is a private
    attribute of aiortc's sender, created on its first frame, and the packetizer is aiortc's too:
    when a new aiortc renames either, or another codec was chosen, the sender keeps aiortc's own
    encoder and this returns False."""
    name = "_RTCRtpSender__encoder"
    if getattr(sender, name, ...) is not None or not hasattr(Vp8Encoder, "_packetize"):
        log.debug("aiortc's sender encoder or VP8 packetizer not found; the sender keeps its own")
        return False
    if codec != "video/VP8":
        return False
    setattr(sender, name, LiveVp8Encoder())
    return True
