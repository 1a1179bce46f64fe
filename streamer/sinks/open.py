"""`open_sink(path, info=...)`: the output format follows the path.

out.mp4   H.264 (alpha composited over black)     out.mov   ProRes 4444 (alpha) / 422 HQ
out.webm  VP9, with alpha                           out.mkv   FFV1, lossless, with alpha
out/frame_%05d.png or out/   numbered PNGs (RGBA when the frames have alpha)
"""

from __future__ import annotations

from pathlib import Path

from streamer.errors import MediaError
from streamer.sinks.base import Sink
from streamer.sinks.png_sequence import PngSequenceSink, is_png_sequence
from streamer.sinks.video_file import FORMATS, FileSinkParams, VideoFileSink
from streamer.sources.base import SourceInfo

SUPPORTED = f"{', '.join(FORMATS)}, out/frame_%05d.png or a folder ending in /"


def open_sink(
    path: str | Path,
    *,
    info: SourceInfo,
    overwrite: bool = False,
    params: FileSinkParams | None = None,
    **options,
) -> Sink:
    """Check the output (format, existing file, writable folder) and return its sink.

    `options` are FileSinkParams fields (crf, preset, audio) when `params` is not given.
    """
    spec = str(path)
    if is_png_sequence(spec):
        return PngSequenceSink(spec, overwrite=overwrite)
    if Path(spec).suffix.lower() not in FORMATS:
        raise MediaError(f"unsupported output format: {spec} (use {SUPPORTED})")
    return VideoFileSink(spec, info=info, overwrite=overwrite, params=params or FileSinkParams(**options))
