"""`open_sink(path, info=...)`: the output format follows the path.

out.mp4   H.264 (alpha composited over black)     out.mov   ProRes 4444 (alpha) / 422 HQ
out.webm  VP9, with alpha                           out.mkv   FFV1, lossless, with alpha
out/frame_%05d.png or out/   numbered PNGs (RGBA when the frames have alpha)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from streamer.config import OutputParams
from streamer.errors import MediaError
from streamer.sinks.base import Sink
from streamer.sinks.paths import refuse_input_as_output
from streamer.sinks.png_sequence import PngSequenceSink, existing_frames, is_png_sequence, pattern_of
from streamer.sinks.video_file import FORMATS, VideoFileSink
from streamer.sources.base import SourceInfo

SUPPORTED = f"{', '.join(FORMATS)}, out/frame_%05d.png or a folder ending in /"


def open_sink(
    path: str | Path,
    *,
    info: SourceInfo,
    params: OutputParams | None = None,
    inputs: Iterable[str] = (),
    **options,
) -> Sink:
    """Check the output (format, not an input, existing file, writable folder) and return its sink.

    The source's files (`info.files`) and any other `inputs` (a background video) are never
    overwritten. `options` are OutputParams fields (overwrite, crf, preset, audio, flatten_color)
    when `params` is not given.
    """
    if params is not None and options:
        raise TypeError("open_sink takes params or OutputParams fields, not both")
    params = params or OutputParams(**options)
    overwrite = params.overwrite
    spec = str(path)
    inputs = [*info.files, *inputs]
    if is_png_sequence(spec):
        refuse_input_as_output(existing_frames(pattern_of(spec)), inputs)
        return PngSequenceSink(spec, overwrite=overwrite)
    refuse_input_as_output([spec], inputs)
    if Path(spec).suffix.lower() not in FORMATS:
        raise MediaError(f"unsupported output format: {spec} (use {SUPPORTED})")
    return VideoFileSink(spec, info=info, params=params)
