"""A video jitter buffer that hands a frame to the decoder as soon as its last packet is in.

aiortc's buffer knows a frame is complete only when the first packet of the *next* frame
arrives, so every incoming frame waits one whole frame interval (33 ms at 30 fps) before
it is decoded. Senders (browsers and aiortc alike) set the RTP marker bit on the last
packet of each frame, so a frame whose packets run without a gap from the buffer's start
to a marked packet is complete already. Anything else (a gap, a lost marker) falls back to
aiortc's own rule, so a damaged stream behaves exactly as before.
"""

from __future__ import annotations

import logging

from aiortc.jitterbuffer import JitterBuffer, JitterFrame

log = logging.getLogger(__name__)


class MarkerJitterBuffer(JitterBuffer):
    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
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
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=packet.timestamp)
        return super()._remove_frame(sequence_number)


def release_on_marker(receiver) -> bool:
    """Give a video `RTCRtpReceiver` the marker-bit buffer; call before any packet arrives.

    The buffer is a private attribute of aiortc's receiver: when a new aiortc renames it, the
    receiver keeps its own buffer (one frame interval slower) and this returns False."""
    name = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, name, None)
    if type(current) is not JitterBuffer or not current._is_video:
        log.debug("aiortc's jitter buffer not found; frames are released one interval late")
        return False
    setattr(receiver, name, MarkerJitterBuffer(capacity=current.capacity, is_video=True))
    return True
