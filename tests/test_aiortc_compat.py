"""aiortc's private names are checked before each patch; a missing one falls back with a WARNING."""

from __future__ import annotations

import logging

import pytest
from aiortc import RTCPeerConnection, jitterbuffer, mediastreams
from aiortc.codecs import vpx

from streamer.live import aiortc_compat
from streamer.live.aiortc_compat import (
    RECEIVER_BUFFER,
    SENDER_ENCODER,
    LiveVp8Encoder,
    MarkerJitterBuffer,
    release_on_marker,
    status,
    use_live_encoder,
)


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(aiortc_compat, "_fallbacks", {})


async def transceiver():
    pc = RTCPeerConnection()
    return pc, pc.addTransceiver("video")


def without_picture_id(monkeypatch):
    init = vpx.Vp8Encoder.__init__

    def renamed(self):
        init(self)
        del self.picture_id

    monkeypatch.setattr(vpx.Vp8Encoder, "__init__", renamed)


class OtherFrame:
    def __init__(self, payload: bytes, timestamp: int) -> None:
        pass


def remove_frame_without_data(self, sequence_number):
    return None


ENCODER_NAMES = {
    "aiortc.codecs.vpx.number_of_threads": lambda mp: mp.delattr(vpx, "number_of_threads"),
    "aiortc.mediastreams.convert_timebase": lambda mp: mp.delattr(mediastreams, "convert_timebase"),
    "Vp8Encoder._packetize": lambda mp: mp.delattr(vpx.Vp8Encoder, "_packetize"),
    "Vp8Encoder().picture_id": without_picture_id,
}
BUFFER_NAMES = {
    "JitterBuffer._remove_frame": lambda mp: mp.delattr(jitterbuffer.JitterBuffer, "_remove_frame"),
    "JitterBuffer.remove": lambda mp: mp.delattr(jitterbuffer.JitterBuffer, "remove"),
    "JitterFrame(data, timestamp)": lambda mp: mp.setattr(jitterbuffer, "JitterFrame", OtherFrame),
    "RtpPacket._data": lambda mp: mp.setattr(
        jitterbuffer.JitterBuffer, "_remove_frame", remove_frame_without_data
    ),
}


def assert_fell_back(caplog, patch: str, name: str) -> None:
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and name in warnings[0] and "aiortc's own" in warnings[0], warnings
    assert status()[patch] == f"fallback: missing {name}"


async def test_this_aiortc_has_every_name(fresh, caplog):
    pc, t = await transceiver()
    try:
        assert aiortc_compat.missing_for_encoder(t.sender) == []
        assert aiortc_compat.missing_for_jitter_buffer(t.receiver) == []
        assert use_live_encoder(t.sender, "video/VP8") and release_on_marker(t.receiver)
        assert isinstance(getattr(t.sender, SENDER_ENCODER), LiveVp8Encoder)
        assert isinstance(getattr(t.receiver, RECEIVER_BUFFER), MarkerJitterBuffer)
        assert status() == {
            "aiortc": status()["aiortc"],
            "tested": "1.16.x",
            "tested_version": True,
            "encoder": "ok",
            "jitter_buffer": "ok",
        }
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await pc.close()


@pytest.mark.parametrize("name", list(ENCODER_NAMES))
async def test_a_missing_encoder_name_keeps_aiortc_s_encoder(fresh, monkeypatch, caplog, name):
    pc, t = await transceiver()
    try:
        ENCODER_NAMES[name](monkeypatch)
        for _ in range(3):  # one warning per process, not one per peer
            assert use_live_encoder(t.sender, "video/VP8") is False
        assert getattr(t.sender, SENDER_ENCODER) is None
        assert_fell_back(caplog, "encoder", name)
        monkeypatch.undo()
        assert use_live_encoder(t.sender, "video/VP8") is True
        assert status()["encoder"] == "ok"
    finally:
        await pc.close()


@pytest.mark.parametrize("name", list(BUFFER_NAMES))
async def test_a_missing_buffer_name_keeps_aiortc_s_buffer(fresh, monkeypatch, caplog, name):
    pc, t = await transceiver()
    try:
        own = getattr(t.receiver, RECEIVER_BUFFER)
        BUFFER_NAMES[name](monkeypatch)
        for _ in range(3):
            assert release_on_marker(t.receiver) is False
        assert getattr(t.receiver, RECEIVER_BUFFER) is own
        assert_fell_back(caplog, "jitter_buffer", name)
    finally:
        await pc.close()


async def test_renamed_private_attributes_of_sender_and_receiver(fresh, caplog):
    pc, t = await transceiver()
    try:
        delattr(t.sender, SENDER_ENCODER)
        delattr(t.receiver, RECEIVER_BUFFER)
        assert use_live_encoder(t.sender, "video/VP8") is False
        assert release_on_marker(t.receiver) is False
        assert status()["encoder"] == f"fallback: missing RTCRtpSender.{SENDER_ENCODER}"
        assert status()["jitter_buffer"] == f"fallback: missing RTCRtpReceiver.{RECEIVER_BUFFER}"
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    finally:
        await pc.close()


def test_another_aiortc_version_is_reported(monkeypatch):
    monkeypatch.setattr(aiortc_compat.aiortc, "__version__", "1.17.0")
    assert status()["tested_version"] is False and status()["aiortc"] == "1.17.0"
