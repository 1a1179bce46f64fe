"""A video file or network stream decoded with PyAV (whatever FFmpeg opens).

Files yield every frame with the pts stored in the file (variable frame rate kept); the
decoder is flushed at the end so the last frames are not lost. A damaged file is read past
the damage (packets that do not decode are skipped) and a truncated one up to the cut; what was
lost is counted in `damage` (frames, and the expected vs decoded duration), for the job's final
warning. Only a file of which nothing decodes is an error.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from streamer.config import Maybe, Number, Params
from streamer.errors import MediaError
from streamer.frame import Frame
from streamer.sources.base import InputDamage, SourceInfo

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp")
NETWORK_TIMEOUT_S = 10.0


class VideoSourceParams(Params):
    prefix = "video"
    live: Maybe(bool) = None
    """None: decide from the URL (rtsp/udp/... and http streams without a duration are live)."""
    timeout: Number(above=0, hi=3600) = NETWORK_TIMEOUT_S
    """Seconds to wait for a network stream to open or deliver data."""


def scheme_of(url: str) -> str | None:
    head, sep, _ = url.partition("://")
    return head.lower() if sep and head.isalnum() else None


def rotation_of(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """Counter-clockwise quarter turns that make the picture upright.

    The display matrix (side data) is read as FFmpeg's counter-clockwise angle; the old
    `rotate` tag, still written by some muxers, is clockwise. Flips in the matrix are ignored.
    """
    degrees = frame.rotation
    if not degrees:
        tag = stream.metadata.get("rotate")
        degrees = -float(tag) if tag else 0
    return int(round(degrees / 90.0)) % 4


def tag_seconds(text: str) -> float | None:
    """'00:01:02.500000000' (Matroska's DURATION tag) -> 62.5; None when absent or malformed."""
    parts = text.split(":")
    try:
        return float(int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])) if len(parts) == 3 else None
    except ValueError:
        return None


def upright(image: np.ndarray, quarter_turns: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


class VideoSource:
    """Decodes one video stream; `frames()` is a blocking iterator for the source thread."""

    def __init__(self, url: str, params: VideoSourceParams | None = None) -> None:
        self.url = url
        self.params = params or VideoSourceParams()
        scheme = scheme_of(url)
        network = scheme is not None and scheme != "file"
        if scheme is None and not Path(url).exists():
            raise MediaError(f"input not found: {url} (check the path)")
        self._container = self._open(network)
        if not self._container.streams.video:
            self._container.close()
            raise MediaError(f"no video stream in {url} (pass a video file, an image folder or webcam:0)")
        self._stream = self._container.streams.video[0]
        live = self.params.live
        if live is None:
            live = scheme in LIVE_SCHEMES or (network and self._container.duration is None)
        if not live:
            # Frame threads decode several frames at once: faster for files, but adds latency.
            self._stream.thread_type = "AUTO"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._iterating = False
        self._closed = False
        self.damage = InputDamage(url)
        self._read_error: str | None = None
        # Decoding the first frame now makes a damaged file fail before any work starts, and
        # gives the rotation, which may live only in the frames' side data.
        self._decoded = self._decode()
        try:
            self._first = next(self._decoded, None)
        except MediaError:
            self._release()
            raise
        if self._first is None:
            self._release()
            raise MediaError(f"no frame could be decoded from {url} (the file is corrupt or truncated)")
        self._turns = rotation_of(self._first, self._stream)
        self.info = self._describe(live)

    def _open(self, network: bool) -> av.container.InputContainer:
        timeout = self.params.timeout if network else None
        try:
            return av.open(self.url, "r", timeout=timeout)
        except FileNotFoundError as err:
            raise MediaError(f"input not found: {self.url} (check the path or URL)") from err
        except PermissionError as err:
            raise MediaError(
                f"cannot read {self.url}: permission denied (check the file's permissions)"
            ) from err
        except IsADirectoryError as err:
            raise MediaError(
                f"{self.url} is a folder of no images (pass a video file or an image folder)"
            ) from err
        except av.error.InvalidDataError as err:
            raise MediaError(
                f"cannot read {self.url}: not a video, or corrupt or truncated (re-export or re-download it)"
            ) from err
        except (av.error.FFmpegError, OSError) as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise MediaError(
                f"cannot open {self.url}: {reason} (check the path or URL and your network)"
            ) from err

    def _describe(self, live: bool) -> SourceInfo:
        stream = self._stream
        rate = stream.average_rate or stream.guessed_rate
        width, height = stream.codec_context.width, stream.codec_context.height
        if self._turns % 2:
            width, height = height, width
        local = scheme_of(self.url) in (None, "file")
        return SourceInfo(
            width=width,
            height=height,
            fps=float(rate) if rate else None,
            time_base=stream.time_base or Fraction(1, 90000),
            frame_count=(stream.frames or None) if not live else None,
            live=live,
            # A live stream cannot be opened a second time in step for its audio; a file played
            # as a camera (`--live`) can.
            audio_path=self.url if self._container.streams.audio and (local or not live) else None,
            files=(self.url,) if local else (),
            description=f"{self.url} ({stream.codec_context.name} {width}x{height}"
            + (f" @ {float(rate):.3g} fps" if rate else "")
            + (", live)" if live else ")"),
        )

    def frames(self) -> Iterator[Frame]:
        with self._lock:
            if self._closed:
                return
            self._iterating = True
        index = 0
        last: av.VideoFrame | None = None
        try:
            for frame in itertools.chain([self._first], self._decoded):
                if self._stop.is_set():
                    break
                yield self._to_frame(frame, index)
                last = frame
                index += 1
            else:
                if not self.info.live and last is not None:
                    self._account(index, last)
        finally:
            with self._lock:
                self._iterating = False
                self._closed = True
                self._release()

    def _decode(self) -> Iterator[av.VideoFrame]:
        """Every frame, the decoder flush included; damaged packets are skipped and counted."""
        demuxed = self._container.demux(self._stream)
        decoded_any = False
        while True:
            try:
                packet = next(demuxed)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError) as err:
                # The container cannot be read further: keep what decoded before (a truncated
                # download is still useful); `_account` reports the loss.
                if decoded_any:
                    self._read_error = str(err)
                    return
                raise MediaError(
                    f"cannot decode {self.url}: {err} (the file is corrupt or truncated)"
                ) from err
            try:
                frames = packet.decode()  # the last, empty packet flushes the decoder
            except (av.error.FFmpegError, OSError) as err:
                self.damage.frames_lost += 1
                log.info("%s: skipped a frame that does not decode: %s", self.url, err)
                continue
            for frame in frames:
                decoded_any = True
                yield frame

    def _account(self, decoded: int, last: av.VideoFrame) -> None:
        """At the natural end of a file: frames missing against its own count and duration."""
        stream, damage = self._stream, self.damage
        expected_frames = stream.frames or None
        damage.frames_expected = expected_frames
        if expected_frames and decoded < expected_frames:
            damage.frames_lost = max(damage.frames_lost, expected_frames - decoded)
        fps = self.info.fps
        step = 1 / fps if fps else 0.0
        start = stream.start_time or 0
        tolerance = 2 * step
        tagged = tag_seconds(stream.metadata.get("DURATION", ""))
        if stream.duration:
            expected_s = float(stream.duration * stream.time_base)
        elif tagged:  # Matroska keeps each track's duration in a tag
            expected_s = tagged - float(start * stream.time_base)
        elif self._container.duration:
            # The container's duration spans every stream (audio may run longer): be lenient.
            expected_s = self._container.duration / av.time_base - float(start * stream.time_base)
            tolerance = max(tolerance, 1.0)
        else:
            expected_s = None
        if last.pts is not None and expected_s:
            decoded_s = float((last.pts - start) * last.time_base) + step
            if expected_s - decoded_s > max(tolerance, 0.05):
                damage.truncated = (expected_s, decoded_s)
                if not expected_frames and fps:
                    damage.frames_lost = max(damage.frames_lost, round((expected_s - decoded_s) * fps))
        if self._read_error and not damage:
            damage.unreadable_after = float((last.pts or 0) * last.time_base) if last.time_base else 0.0
        if damage:
            log.info("%s: %s (read error: %s)", self.url, damage.summary(), self._read_error)

    def _to_frame(self, frame: av.VideoFrame, index: int) -> Frame:
        image = upright(frame.to_ndarray(format="rgb24"), self._turns)
        pts = frame.pts
        if pts is None:
            # Only streams without timestamps (raw elementary streams) get synthesised ones.
            pts = self._synth_pts(index)
        return Frame(
            image=torch.from_numpy(image),
            pts=pts,
            time_base=frame.time_base or self.info.time_base,
            index=index,
            captured_at=time.monotonic(),
        )

    def _synth_pts(self, index: int) -> int | None:
        if not self.info.fps:
            return None
        return int(round(index / self.info.fps / self.info.time_base))

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._closed = True
            if not self._iterating:
                self._release()

    def _release(self) -> None:
        # Closing while another thread decodes would crash FFmpeg: the decoding thread
        # releases on its way out instead.
        self._decoded = iter(())
        if self._container is not None:
            self._container.close()
            self._container = None
