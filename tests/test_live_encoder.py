"""The server's VP8 encoder: bounded frames when they are rare, the frames' own RTP timing,
pictures that decode, keyframes on request, and the sender swap only when VP8 was chosen."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from aiortc import RTCPeerConnection, VideoStreamTrack
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from av import VideoFrame

from streamer.live.aiortc_compat import MAX_FRAME_GAP, LiveVp8Encoder, answered_video_codec, use_live_encoder

CLOCK = Fraction(1, 90000)
SIZE = (240, 320)


def camera_frames(count: int, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    """I420 pictures with a moving block and sensor grain: what costs a real encoder its bits."""
    rng = np.random.default_rng(0)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(count):
        rgb = np.stack([x * 200 / w, y * 160 / h + 40, np.full_like(x, 90)], -1).astype(np.float32)
        rgb[h // 4 : 3 * h // 4, w // 8 + 12 * i : w // 2 + 12 * i] = (220, 180, 150)
        rgb += rng.normal(0, 4, rgb.shape)
        picture = VideoFrame.from_ndarray(rgb.clip(0, 255).astype(np.uint8), format="rgb24")
        frames.append(picture.reformat(format="yuv420p").to_ndarray())
    return frames


def video(array: np.ndarray, pts: int) -> VideoFrame:
    frame = VideoFrame.from_ndarray(array, format="yuv420p")
    frame.pts, frame.time_base = pts, CLOCK
    return frame


def encode_all(encoder, frames, step: int, keyframe_at: int | None = None):
    out = []
    for i, array in enumerate(frames):
        frame = video(array, 1000 + i * step)
        payloads, timestamp = encoder.encode(frame, force_keyframe=i == keyframe_at)
        if isinstance(encoder, LiveVp8Encoder):  # the caller's frame keeps its timing (aiortc's does not)
            assert (frame.pts, frame.time_base) == (1000 + i * step, CLOCK)
        out.append((payloads, timestamp))
    return out


def is_keyframe(payloads: list[bytes]) -> bool:
    return vp8_depayload(payloads[0])[0] & 1 == 0  # VP8 frame tag: bit 0 clear on a keyframe


def test_rare_frames_get_a_bounded_budget_and_keep_their_rtp_timestamps():
    frames = camera_frames(8)
    one_second = 90000
    ours = encode_all(LiveVp8Encoder(), frames, one_second)
    stock = encode_all(Vp8Encoder(), frames, one_second)
    assert [t for _, t in ours] == [1000 + i * one_second for i in range(8)]
    ours_bytes = [sum(map(len, p)) for p, _ in ours[1:]]
    stock_bytes = [sum(map(len, p)) for p, _ in stock[1:]]
    # aiortc's encoder spends a second's bitrate on each frame; ours at most MAX_FRAME_GAP's, with
    # libvpx's overshoot allowance on top.
    budget = LiveVp8Encoder().target_bitrate * MAX_FRAME_GAP / 8
    assert max(ours_bytes) <= 1.5 * budget, (ours_bytes, float(budget))
    assert np.median(stock_bytes) >= 3 * np.median(ours_bytes), (stock_bytes, ours_bytes)


def test_frames_at_camera_rate_are_budgeted_as_before():
    frames = camera_frames(12)
    ours = [sum(map(len, p)) for p, _ in encode_all(LiveVp8Encoder(), frames, 3000)[2:]]
    stock = [sum(map(len, p)) for p, _ in encode_all(Vp8Encoder(), frames, 3000)[2:]]
    assert 0.5 <= np.median(ours) / np.median(stock) <= 2, (ours, stock)


def test_the_pictures_decode_and_a_keyframe_comes_on_request():
    frames = camera_frames(6)
    encoded = encode_all(LiveVp8Encoder(), frames, 45000, keyframe_at=4)
    assert [is_keyframe(p) for p, _ in encoded] == [True, False, False, False, True, False]
    decoder = Vp8Decoder()
    for (payloads, timestamp), array in zip(encoded, frames, strict=True):
        data = b"".join(vp8_depayload(p) for p in payloads)
        (decoded,) = decoder.decode(JitterFrame(data=data, timestamp=timestamp))
        assert decoded.to_ndarray().shape == array.shape
        error = np.abs(decoded.to_ndarray()[: SIZE[0]].astype(int) - array[: SIZE[0]].astype(int))
        assert error.mean() < 6


def test_a_new_size_or_bitrate_reopens_the_codec_with_a_keyframe():
    encoder = LiveVp8Encoder()
    frames = camera_frames(3)
    encoder.encode(video(frames[0], 0))
    assert not is_keyframe(encoder.encode(video(frames[1], 3000))[0])
    encoder.target_bitrate = encoder.target_bitrate * 2
    assert is_keyframe(encoder.encode(video(frames[2], 6000))[0])
    assert encoder.codec.bit_rate == encoder.target_bitrate
    (small,) = camera_frames(1, (120, 160))
    payloads, _ = encoder.encode(video(small, 9000))
    assert is_keyframe(payloads) and (encoder.codec.width, encoder.codec.height) == (160, 120)


def test_rgb_frames_are_taken_too():
    rgb = VideoFrame.from_ndarray(np.full((*SIZE, 3), 120, np.uint8), format="rgb24")
    rgb.pts, rgb.time_base = 0, CLOCK
    payloads, timestamp = LiveVp8Encoder().encode(rgb)
    assert payloads and timestamp == 0 and rgb.format.name == "rgb24"


async def negotiated(codec: str) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    """A client offering `codec` first, and a server that answered with a sending video track."""
    from aiortc.rtcrtpsender import RTCRtpSender

    client, server = RTCPeerConnection(), RTCPeerConnection()
    transceiver = client.addTransceiver("video", direction="recvonly")
    codecs = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in codecs if c.mimeType == codec])
    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(client.localDescription)
    server.addTrack(VideoStreamTrack())
    await server.setLocalDescription(await server.createAnswer())
    return client, server


@pytest.mark.parametrize(("codec", "swapped"), [("video/VP8", True), ("video/H264", False)])
async def test_the_sender_gets_our_encoder_only_for_vp8(codec, swapped):
    client, server = await negotiated(codec)
    try:
        answer = server.localDescription.sdp
        assert answered_video_codec(answer) == codec
        (sender,) = server.getSenders()
        assert use_live_encoder(sender, codec) is swapped
        encoder = sender._RTCRtpSender__encoder
        assert isinstance(encoder, LiveVp8Encoder) if swapped else encoder is None
        assert use_live_encoder(sender, codec) is False  # never replaces an encoder in use
    finally:
        await client.close()
        await server.close()


async def test_an_aiortc_without_the_packetizer_keeps_its_own_encoder(monkeypatch):
    client, server = await negotiated("video/VP8")
    try:
        monkeypatch.delattr(Vp8Encoder, "_packetize")
        (sender,) = server.getSenders()
        assert use_live_encoder(sender, "video/VP8") is False
        assert sender._RTCRtpSender__encoder is None
    finally:
        await client.close()
        await server.close()


def test_a_description_that_sends_no_video_names_no_codec():
    sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    assert answered_video_codec(sdp) is None
