"""Everything one `streamer run` needs, opened eagerly so a bad input fails before any work.

Order matters for the user: cheap checks first (source, sinks: a missing file or an existing
output is reported in a second), the model last (loading weights takes a while).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
from typing import Any

from streamer.config import JobConfig, default_unset, merge_params, update_params
from streamer.errors import ConfigError, StreamerError


@dataclasses.dataclass
class Job:
    source: Any
    sinks: list
    engine: Any
    smoother: Any
    compositor: Any
    live: bool
    batch_size: int
    propagation: Any = None
    """`streamer.live.core.Settings` of a live job: keyframe interval and propagation on/off."""

    def stages(self) -> list:
        """Live: one live core (keyframes, propagation, smoothing, compositing); files: the lossless
        batch chain, smoothing and compositing with the same `Finisher`."""
        if not self.live:
            return file_stages(self.engine, self.smoother, self.compositor)
        from streamer.live.core import LiveStage
        from streamer.pipeline.stages import Finisher

        return [LiveStage(self.engine, Finisher(self.smoother, self.compositor), self.propagation)]


def file_stages(engine, smoother, compositor) -> list:
    """The lossless chain of a file job (`run` and each `batch` clip): inference, then the same
    `Finisher` (smoothing, compositing) live streams use."""
    from streamer.pipeline.stages import Finisher, FinishStage, InferStage

    return [InferStage(engine), FinishStage(Finisher(smoother, compositor))]


def build_job(args: argparse.Namespace, config: JobConfig) -> Job:
    from streamer.sources.open import open_source

    source = open_source(args.source, live=args.live, fps=args.fps, width=args.width, height=args.height)
    live = source.info.live if args.live is None else args.live
    if live:
        config = with_live_defaults(config)
    config, flatten = with_default_mode(config, args)
    if live and is_file(args.source):
        from streamer.sources.pace import PacedSource

        source = PacedSource(source)  # `--live` plays a file at its own rate, as a camera would
    from streamer.sinks.paths import refuse_repeated_outputs

    sinks: list = []
    try:
        refuse_repeated_outputs(args.sink)
        for spec in args.sink:
            sinks.append(open_output(spec, source.info, config))
        if getattr(args, "preview", False):
            from streamer.sinks.preview import PreviewSink

            sinks.append(PreviewSink(port=args.preview_port, background=flatten or (0, 0, 0)))
            print(f"streamer: preview at {sinks[-1].url}", file=sys.stderr)
        engine, smoother, compositor = build_processing(config)
    except BaseException:
        for sink in sinks:
            sink.close()
        source.close()
        raise
    batch = 1 if live else config.model.batch_size
    from streamer.live.core import Settings

    return Job(source, sinks, engine, smoother, compositor, live, batch, Settings(config.propagation))


def is_file(spec: str) -> bool:
    """A video file, image or folder on disk (not a camera or a network stream)."""
    from streamer.sources.open import kind_of
    from streamer.sources.video import scheme_of

    return kind_of(spec) != "webcam" and scheme_of(spec) in (None, "file")


def carries_alpha(spec: str) -> bool:
    """Whether the output named by `spec` keeps transparency (.mov, .webm, .mkv, PNG; not .mp4 or vcam)."""
    from pathlib import Path

    from streamer.sinks.png_sequence import is_png_sequence
    from streamer.sinks.video_file import FORMATS

    if is_png_sequence(spec):
        return True
    fmt = FORMATS.get(Path(spec).suffix.lower())
    return fmt is not None and fmt.alpha


LIVE_SIZE = (512, 512)
"""Model size of a live job when none is configured: the native 1024 is too slow for live video."""
LIVE_PRESET = "veryfast"
"""Encoding preset of a live job's file outputs when none is configured: x264 veryfast (what OBS
records with), VP9 in realtime mode (`streamer.sinks.video_file.REALTIME_PRESETS`)."""


def with_live_defaults(config: JobConfig) -> JobConfig:
    """What every live job (`run` from a camera or with `--live`, each `serve` page) uses where
    no config file or option chose: the network at LIVE_SIZE; H.264 files written at LIVE_PRESET,
    as x264's default (medium) cannot keep up at 1280x720 beside the network on a 2-core CPU
    (21-24 of 30 fps delivered there, against 29.7 with veryfast); and on a CPU no foreground
    colour estimation, which takes a quarter to half of a 30 fps frame's interval there at
    640x480 to 1280x720 on the cores the network needs, and more on a soft matte (BENCHMARKS.md,
    "Live")."""
    from streamer.engine import engine_device

    config.sections["model"] = default_unset(config.model, "model", {"size": LIVE_SIZE})
    config.sections["output"] = default_unset(config.output, "output", {"preset": LIVE_PRESET})
    if engine_device(config.model).type == "cpu":
        config.sections["composite"] = default_unset(
            config.composite, "composite", {"refine_foreground": False}
        )
    return config


def with_default_mode(config: JobConfig, args: argparse.Namespace) -> tuple[JobConfig, tuple | None]:
    """No mode chosen: RGBA when an output keeps alpha; the others show the colour composite.

    The outputs without alpha (.mp4, the virtual camera) then lay the RGBA frames over the
    colour themselves (`output.flatten_color`, `vcam.flatten_color`; the colour is also returned,
    None when nothing changed), which gives the colour composite. With a mode chosen, nothing
    changes.
    """
    # A mode chosen by --mode, --set or the config file is in the fields set when loading.
    chosen = "mode" in config.composite.model_fields_set
    if chosen or not any(carries_alpha(spec) for spec in args.sink):
        return config, None
    color = config.composite.color
    composite = merge_params(config.composite, "composite", {"mode": "rgba"})
    vcam = merge_params(config.vcam, "vcam", {"flatten_color": color})
    output = merge_params(config.output, "output", {"flatten_color": color})
    return dataclasses.replace(
        config, sections={**config.sections, "composite": composite, "vcam": vcam, "output": output}
    ), color


def open_output(spec: str, info, config: JobConfig):
    if spec == "vcam":
        from streamer.sinks.vcam import open_vcam

        # A file played into the camera keeps every frame; a live source feeds the latest one.
        return open_vcam(
            config.vcam, width=info.width, height=info.height, fps=info.fps, every_frame=not info.live
        )
    from streamer.sinks.open import open_sink

    background = config.composite.background
    return open_sink(
        spec,
        info=info,
        params=config.output,
        inputs=[background] if background else (),
    )


def build_processing(config: JobConfig, engine=None):
    """The engine, smoother and compositor of one stream, on the engine's device.

    `engine`: one already loaded, reused across streams (batch workers load it once).
    """
    from streamer.compose.compositor import Compositor
    from streamer.engine import MattingEngine
    from streamer.smoothing import TemporalSmoother

    compositor = Compositor(config.composite)
    compositor.open_background()  # a bad background file fails now, not after the network loads
    engine = engine or MattingEngine.from_params(config.model)
    compositor.device = engine.device
    return engine, TemporalSmoother(config.smoothing, engine.device), compositor


class Progress:
    """A tqdm bar with fps and ETA when the length is known; silent when disabled."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="frame", dynamic_ncols=True, file=sys.stderr)

    def update(self, _frame) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# command word -> (which object's params, key)
_COMMANDS = {
    "mode": ("compositor", "composite", "mode"),
    "color": ("compositor", "composite", "color"),
    "colour": ("compositor", "composite", "color"),
    "background": ("compositor", "composite", "background"),
    "blur": ("compositor", "composite", "blur_radius"),
    "mirror": ("compositor", "composite", "mirror"),
    "smoothing": ("smoother", "smoothing", "enabled"),
    "strength": ("smoother", "smoothing", "strength"),
    "propagation": ("propagation", "propagation", "enabled"),
    "keyframes": ("propagation", "propagation", "keyframe_every"),
}


class Controls:
    """Live changes typed on stdin, e.g. `mode blur`, `blur 30`, `smoothing off`, `keyframes 3`.

    The pipeline keeps running: the new Params object replaces the old one between frames
    (an attribute assignment, atomic for the stage threads that read it).
    """

    def __init__(self, job: Job, out=sys.stderr) -> None:
        self.job = job
        self.out = out

    def apply(self, line: str) -> str:
        words = line.split(maxsplit=1)
        if not words:
            return ""
        if words[0] in ("help", "?"):
            return "commands: " + ", ".join(f"{c} VALUE" for c in _COMMANDS)
        if words[0] not in _COMMANDS or len(words) < 2:
            return f"unknown command {line.strip()!r} (type 'help')"
        target_name, section, key = _COMMANDS[words[0]]
        target = getattr(self.job, target_name)
        if target is None:
            return f"not changed: {section}.{key} applies to live jobs only"
        try:
            params = update_params(target.params, section, key, words[1].strip())
            if section == "composite":
                from streamer.compose.compositor import check_background

                check_background(params, target.params)
            target.params = params
        except (ConfigError, StreamerError) as err:
            return f"not changed: {err}"
        return f"{section}.{key} = {getattr(target.params, key)}"

    def start(self, loop) -> None:
        print("live controls: type 'help' for commands", file=self.out)
        try:
            loop.add_reader(sys.stdin.fileno(), self._on_input, loop)
        except NotImplementedError:
            # Windows' event loop cannot watch stdin: a daemon thread reads it instead and hands
            # each line to the loop (it ends with the process).
            threading.Thread(
                target=self._read_lines, args=(loop,), name="streamer-controls", daemon=True
            ).start()
            self._threaded = True

    def stop(self, loop) -> None:
        if not getattr(self, "_threaded", False):
            loop.remove_reader(sys.stdin.fileno())

    def _read_lines(self, loop) -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(self._reply, line)

    def _reply(self, line: str) -> None:
        reply = self.apply(line)
        if reply:
            print(f"streamer: {reply}", file=self.out)

    def _on_input(self, loop) -> None:
        line = sys.stdin.readline()
        if not line:  # end of input: stop listening instead of spinning on EOF
            self.stop(loop)
        else:
            self._reply(line)
