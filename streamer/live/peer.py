"""One browser connection: its frames in, its own live stream, its video out.

Two tasks per peer. The reader pulls every incoming frame as soon as it arrives (aiortc's
remote track buffers without limit otherwise) and offers it to the peer's `LiveStream`
(`streamer.live.core`, the same core as `streamer run`'s live jobs): every frame is
propagated, smoothed and composited in the shared compositing pool (blocking work stays off
the event loop), the network runs on keyframes in the shared worker, and each finished frame
is published to the outgoing track, which aiortc pulls at its own pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from streamer.compose.compositor import check_background
from streamer.config import merge_params
from streamer.frame import Frame
from streamer.live.core import LiveStream, Settings
from streamer.live.stats import LatencyWindow, RateMeter
from streamer.live.tracks import LatestFrameTrack
from streamer.live.worker import InferenceWorker
from streamer.pipeline.stages import Finisher

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Arrival:
    """A decoded WebRTC frame as it reached us, before the RGB conversion."""

    video: VideoFrame
    index: int
    received_at: float


def frame_from_video(arrival: Arrival) -> Frame:
    """A pipeline `Frame`; run in the worker thread, so dropped frames are never converted."""
    video = arrival.video
    image = torch.from_numpy(video.to_ndarray(format="rgb24"))
    return Frame(image, video.pts, video.time_base, arrival.index, arrival.received_at)


def video_from_output(output: torch.Tensor, frame: Frame) -> VideoFrame:
    """A WebRTC frame from compositor output (matte, RGB or RGBA), keeping the input's timing."""
    array = output.numpy() if isinstance(output, torch.Tensor) else np.asarray(output)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    # A browser <video> has no alpha: RGBA output is shown by its colour channels.
    array = np.ascontiguousarray(array[..., :3])
    h, w = array.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        # The encoders take I420; OpenCV's conversion (same BT.601 matrix) is ~6x quicker than
        # the one the encoder would do, and runs here, in the compositing pool.
        video = VideoFrame.from_ndarray(cv2.cvtColor(array, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    else:
        video = VideoFrame.from_ndarray(array, format="rgb24")
    video.pts = frame.pts
    video.time_base = frame.time_base
    return video


def _as_frame(item: Frame | Arrival) -> Frame:
    return frame_from_video(item) if isinstance(item, Arrival) else item


class PeerSession:
    def __init__(
        self,
        pc: RTCPeerConnection,
        worker: InferenceWorker,
        finisher: Finisher,
        executor: Executor,
        on_closed: Callable[[PeerSession], Awaitable[None] | None] | None = None,
        settings: Settings | None = None,
    ) -> None:
        # 128 random bits: knowing a peer's id is what lets a request change or close it.
        self.id = secrets.token_urlsafe(16)
        self.pc = pc
        self.worker = worker
        self._on_closed = on_closed
        # The same live core as `streamer run`: every frame out, the network on keyframes.
        self.stream = LiveStream(
            worker,
            finisher,
            settings,
            name=self.id,
            executor=executor,
            tolerate_errors=True,
            prepare=_as_frame,
            present=lambda frame: video_from_output(frame.output, frame),
        )
        self.latency = LatencyWindow()
        self.fps = RateMeter()
        self.track = LatestFrameTrack(on_sent=self._sent)
        self.received = 0
        self.video_out: str | None = None
        """The outgoing codec and whose encoder runs it, once negotiated (e.g. "VP8 (streamer encoder)")."""
        self._inputs: list[MediaStreamTrack] = []
        self._tasks: set[asyncio.Task] = set()
        self._closing: asyncio.Task | None = None
        self._spawn(self.stream.run(self._publish), "finish")

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.close_soon()

    @property
    def finisher(self) -> Finisher:
        return self.stream.finisher

    @property
    def slot(self):
        return self.stream.slot

    @property
    def errors(self) -> int:
        return self.stream.errors

    # -- inputs ---------------------------------------------------------------------------------
    def attach_track(self, track: MediaStreamTrack) -> None:
        """Matte a browser camera track; the peer closes when the track ends."""
        self._inputs.append(track)
        track.on("ended", self.close_soon)
        self._spawn(self._read_track(track), "read")

    def attach_frames(self, frames: Callable[[], AsyncIterator[Frame]]) -> None:
        """Matte frames from a server-side source (each yielded `Frame` is this peer's own copy)."""
        self._spawn(self._read_frames(frames()), "read")

    async def _read_track(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                self._offer(Arrival(await track.recv(), self.received, time.monotonic()))
        self.close_soon()

    async def _read_frames(self, frames: AsyncIterator[Frame]) -> None:
        async for frame in frames:
            self._offer(frame)

    def _offer(self, frame: Frame | Arrival) -> None:
        self.received += 1
        self.stream.offer(frame)

    # -- output ---------------------------------------------------------------------------------
    def _publish(self, frame: Frame) -> None:
        self.track.publish(frame.meta["presented"], frame.captured_at)

    def _sent(self, latency_s: float) -> None:
        self.latency.add(latency_s)
        self.fps.tick()

    # -- controls and stats ---------------------------------------------------------------------
    def update(
        self, composite: dict | None = None, smoothing: dict | None = None, propagation: dict | None = None
    ) -> None:
        """Replace this peer's parameters without reconnecting; loose values (JSON, form strings)
        are validated like the config file, each section merged and checked as a whole (key order
        never matters), and a bad one raises ConfigError and changes nothing."""
        compositor, smoother = self.finisher.compositor, self.finisher.smoother
        settings = self.stream.settings
        new_composite = merge_params(compositor.params, "composite", composite or {})
        new_smoothing = (
            merge_params(smoother.params, "smoothing", smoothing or {}) if smoother is not None else None
        )
        new_propagation = merge_params(settings.params, "propagation", propagation or {})
        check_background(new_composite, compositor.params)
        compositor.params = new_composite
        if smoother is not None:
            smoother.params = new_smoothing
        if new_propagation != settings.params:
            settings.params = new_propagation

    def stats(self) -> dict:
        p50, p95 = self.latency.percentile(50), self.latency.percentile(95)
        live = self.stream.stats()
        return {
            "peer": self.id,
            "state": self.pc.connectionState,
            "received": self.received,
            "sent": self.track.sent,
            "dropped": self.stream.dropped + self.track.dropped,
            "errors": self.errors,
            "fps": round(self.fps.rate(), 2),
            "latency_ms_p50": None if p50 is None else round(p50 * 1000, 1),
            "latency_ms_p95": None if p95 is None else round(p95 * 1000, 1),
            "keyframe_hz": live["keyframe_hz"],
            "keyframes": live["keyframes"],
            "propagated": live["propagated"],
            "frame_ms_p95": live["frame_ms_p95"],
            "infer_ms": live["infer_ms"],
            "batch": self.worker.stats.last_batch_size,
            "peers": self.worker.peers,
            "size": list(self.worker.size) if self.worker.size else None,
            "video": self.video_out,
        }

    # -- lifetime -------------------------------------------------------------------------------
    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close_soon(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close(), name=f"{self.id}-close")

    async def close(self) -> None:
        """Free everything this peer holds; safe to call more than once and from its own tasks."""
        self.close_soon()
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.stream.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.track.stop()
        for track in self._inputs:
            track.stop()
        await self.pc.close()
        if self._on_closed is not None:
            result = self._on_closed(self)
            if asyncio.iscoroutine(result):
                await result
