"""The marker-bit jitter buffer: a frame goes to the decoder when its last packet is in."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from streamer.live.aiortc_compat import MarkerJitterBuffer, release_on_marker


def packet(seq: int, timestamp: int, data: bytes, marker: bool = False) -> RtpPacket:
    p = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq, timestamp=timestamp)
    p._data = data  # what aiortc's receiver sets after depayloading
    return p


def feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, int, bytes]]:
    """(index of the packet that released it, timestamp, data) of every frame released."""
    released = []
    for i, p in enumerate(packets):
        _, frame = buffer.add(p)
        if frame is not None:
            released.append((i, frame.timestamp, frame.data))
    return released


# Three frames of 3, 1 and 2 packets, the last packet of each marked.
STREAM = [
    packet(100, 3000, b"a1"),
    packet(101, 3000, b"a2"),
    packet(102, 3000, b"a3", marker=True),
    packet(103, 6000, b"b", marker=True),
    packet(104, 9000, b"c1"),
    packet(105, 9000, b"c2", marker=True),
]


def test_a_frame_is_released_with_its_last_packet():
    released = feed(MarkerJitterBuffer(capacity=128, is_video=True), STREAM)
    assert released == [(2, 3000, b"a1a2a3"), (3, 6000, b"b"), (5, 9000, b"c1c2")]


def test_aiortc_s_own_buffer_waits_for_the_next_frame():
    # What the marker buffer saves: each frame a whole frame interval (the last one forever).
    released = feed(JitterBuffer(capacity=128, is_video=True), STREAM)
    assert released == [(3, 3000, b"a1a2a3"), (4, 6000, b"b")]


def test_a_gap_holds_the_frame_until_the_missing_packet_arrives():
    reordered = [STREAM[0], STREAM[2], STREAM[1], STREAM[3]]
    released = feed(MarkerJitterBuffer(capacity=128, is_video=True), reordered)
    assert released == [(2, 3000, b"a1a2a3"), (3, 6000, b"b")]


def test_a_lost_marker_falls_back_to_the_next_frame_s_start():
    unmarked = [packet(100, 3000, b"a1"), packet(101, 3000, b"a2"), packet(102, 6000, b"b", marker=True)]
    released = feed(MarkerJitterBuffer(capacity=128, is_video=True), unmarked)
    assert released[0] == (2, 3000, b"a1a2")


def test_sequence_numbers_wrap_around():
    wrapping = [
        packet(65534, 3000, b"a1"),
        packet(65535, 3000, b"a2", marker=True),
        packet(0, 6000, b"b", marker=True),
    ]
    released = feed(MarkerJitterBuffer(capacity=128, is_video=True), wrapping)
    assert released == [(1, 3000, b"a1a2"), (2, 6000, b"b")]


@pytest.mark.parametrize(("kind", "swapped"), [("video", True), ("audio", False)])
async def test_only_video_receivers_get_the_marker_buffer(kind, swapped):
    pc = RTCPeerConnection()
    receiver = pc.addTransceiver(kind).receiver
    assert release_on_marker(receiver) is swapped
    buffer = receiver._RTCRtpReceiver__jitter_buffer
    assert isinstance(buffer, MarkerJitterBuffer) is swapped
    assert buffer.capacity == (512 if kind == "video" else 16)
    await pc.close()
