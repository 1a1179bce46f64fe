"""Media that tests write and read back with PyAV (nothing is committed).

`make_clip` writes a small clip whose frame `i` shows a bright square at a position that
depends on `i` (so order and loss are visible) and, optionally, a sine tone of the same
length. `read_video` and `count_audio` read any output back, VP9 alpha included.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

DEFAULT_VIDEO_CODEC = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".ts": "libx264",
    ".webm": "libvpx-vp9",
}
DEFAULT_AUDIO_CODEC = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".ts": "aac", ".webm": "libopus"}
SAMPLE_RATE = 48000


def pattern(index: int, size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """Frame `index` of the moving pattern: a gradient with a white square that walks along."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, channels), np.uint8)
    image[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    if channels > 1:
        image[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
        image[..., 2] = 64
    side = max(4, min(width, height) // 4)
    left = (index * 3) % max(width - side, 1)
    image[height // 4 : height // 4 + side, left : left + side, :3] = 255
    if channels == 4:
        image[..., 3] = 0
        image[:, width // 2 :, 3] = 255
    return image


def vfr_pts(frames: int, fps: float) -> list[int]:
    """Irregular timestamps in units of 1/(4*fps): gaps of 1, 1, 2, 1, 3 frame periods, repeating."""
    gaps = (4, 4, 8, 4, 12)
    pts, now = [], 0
    for i in range(frames):
        pts.append(now)
        now += gaps[i % len(gaps)]
    return pts


def make_clip(
    path: str | Path,
    frames: int = 30,
    size: tuple[int, int] = (64, 48),
    fps: int = 25,
    audio: bool = True,
    vfr: bool = False,
    codec: str | None = None,
    rotate: int | None = None,
    audio_codec: str | None = None,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Write a clip of `frames` frames (`size` is width, height) and a sine tone as long as the video.

    H.264 is encoded with preset ultrafast (no B-frames) unless `options` say otherwise.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    codec = codec or DEFAULT_VIDEO_CODEC[suffix]
    time_base = Fraction(1, fps * 4) if vfr else Fraction(1, fps)
    pts = vfr_pts(frames, fps) if vfr else list(range(frames))
    duration = float((pts[-1] + (time_base.denominator // fps if vfr else 1)) * time_base) if frames else 0.0
    with av.open(str(path), "w", container_options=container_options or {}) as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height = size
        video.pix_fmt = pix_fmt
        video.codec_context.time_base = time_base
        if options is not None:
            video.options = options
        elif codec == "libx264":
            video.options = {"preset": "ultrafast"}
        if rotate is not None:
            video.set_display_rotation(rotate)
        sound = None
        if audio:
            sound = out.add_stream(audio_codec or DEFAULT_AUDIO_CODEC[suffix], rate=SAMPLE_RATE)
            sound.layout = "mono"
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(pattern(i, size), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            _write_tone(out, sound, duration)
    return path


def _write_tone(
    out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float
) -> None:
    total = int(round(seconds * SAMPLE_RATE))
    chunk = 1024
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / SAMPLE_RATE).astype(np.float32)
        samples = (0.3 * np.sin(2 * math.pi * 440.0 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts, frame.time_base = start, Fraction(1, SAMPLE_RATE)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _decoder(stream: av.video.stream.VideoStream) -> av.codec.context.CodecContext | None:
    """libvpx for VP9, because FFmpeg's native vp9 decoder drops the alpha plane."""
    if stream.codec_context.name != "vp9":
        return None
    decoder = av.codec.CodecContext.create("libvpx-vp9", "r")
    decoder.extradata = stream.codec_context.extradata
    return decoder


def read_video(path: str | Path, format: str = "rgb24") -> tuple[list[np.ndarray], list[int], Fraction]:
    """Every decoded frame (as `format`: rgb24, rgba or gray), its pts and the stream time base."""
    frames, pts = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoder = _decoder(stream)
        for packet in container.demux(stream):
            decoded = decoder.decode(packet if packet.size else None) if decoder else packet.decode()
            for frame in decoded:
                frames.append(frame.to_ndarray(format=format))
                pts.append(frame.pts if frame.pts is not None else packet.pts)
        return frames, pts, stream.time_base


def pix_fmt_of(path: str | Path) -> str:
    """Pixel format as stored (the encoder's, before any decoding)."""
    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.pix_fmt


def codec_of(path: str | Path, kind: str = "video") -> str | None:
    with av.open(str(path)) as container:
        streams = getattr(container.streams, kind)
        return streams[0].codec_context.name if streams else None


def count_audio(path: str | Path) -> tuple[int, float]:
    """(audio packets, seconds from the first packet's start to the last packet's end); (0, 0.0) if none."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return 0, 0.0
        stream = container.streams.audio[0]
        packets = [p for p in container.demux(stream) if p.dts is not None]
    if not packets:
        return 0, 0.0
    start = min(p.pts for p in packets)
    end = max(p.pts + p.duration for p in packets)
    return len(packets), float((end - start) * stream.time_base)


def truncate(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """Copy the first `fraction` of `src`'s bytes to `dst` (an interrupted download)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def damage_png_frames(path: str | Path, indices: list[int]) -> Path:
    """Break the PNG signature of the given frames of a PNG-in-MOV clip: they no longer decode."""
    data = bytearray(Path(path).read_bytes())
    signature = b"\x89PNG\r\n\x1a\n"
    starts, at = [], data.find(signature)
    while at >= 0:
        starts.append(at)
        at = data.find(signature, at + 1)
    for i in indices:
        data[starts[i] : starts[i] + len(signature)] = bytes(len(signature))
    Path(path).write_bytes(bytes(data))
    return Path(path)


def square_position(image: np.ndarray) -> int:
    """Column of the white square's left edge (to identify which pattern frame an image shows)."""
    height = image.shape[0]
    row = image[height // 4 + 1, :, :3].astype(int).sum(axis=1)
    return int(np.argmax(row > 600))


def one_line_error(excinfo) -> str:
    """The message of a `pytest.raises` result, checked to be the one line a user sees."""
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message
