"""`streamer run --source SRC --sink SINK`: the whole pipeline, for files and live sources.

A sink is a path whose extension picks the format, `vcam` (virtual camera) or `webrtc`
(a preview page served by `streamer serve`'s machinery). Live sources (cameras, network
streams) drop stale frames; files keep every frame.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from streamer.commands import options
from streamer.config import OutputParams, load_config
from streamer.errors import EXIT_DAMAGED_INPUT, ConfigError
from streamer.pipeline.runner import Pipeline
from streamer.signals import exit_status, install_stop_handlers


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="matte a video file, folder or camera into files, a virtual camera or a browser",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--source",
        required=True,
        type=options.named,
        help="video file or URL, image folder or glob, webcam:N, /dev/videoN",
    )
    p.add_argument(
        "--sink",
        action="append",
        required=True,
        type=options.named,
        help="output: a path (.mp4 .mov .webm .mkv, frames/%%05d.png), 'vcam' or 'webrtc'; repeat for several",
    )
    options.add_config_options(p)
    options.add_model_options(p)
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model (CUDA; on a CPU: torch, minutes to compile)",
    )
    p.add_argument("--batch", type=int, help="frames per inference call for file jobs")
    options.add_look_options(p)
    out = p.add_argument_group("output")
    out.add_argument("--overwrite", action="store_true", default=None, help="replace existing output files")
    out.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    out.add_argument(
        "--preview",
        action="store_true",
        help="also show the output in a browser tab (MJPEG at http://127.0.0.1:PORT/)",
    )
    out.add_argument("--preview-port", type=int, default=8090, help="port of --preview (default %(default)s)")
    live = p.add_argument_group("live sources")
    live.add_argument("--fps", type=float, help="camera frame rate to request, or image-folder frame rate")
    live.add_argument("--width", type=int, help="camera width to request")
    live.add_argument("--height", type=int, help="camera height to request")
    live.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force the live policy (a file then plays at its own frame rate, as a camera) or the file policy",
    )
    live.add_argument(
        "--controls",
        choices=("auto", "stdin", "off"),
        default="auto",
        help="read live commands ('mode blur', 'blur 30', 'keyframes 3') from stdin (auto: live + terminal)",
    )
    p.set_defaults(handler=run)


RUN_OPTIONS = {
    "compile": ("model", "compile"),
    "batch": ("model", "batch_size"),
    "overwrite": ("output", "overwrite"),
    "progress": ("output", "progress"),
}


def config_from_args(args: argparse.Namespace):
    tables = options.MODEL_OPTIONS, options.LOOK_OPTIONS, RUN_OPTIONS
    return load_config(args.config, options.overrides_from_args(args, *tables))


def run(args: argparse.Namespace) -> int:
    from streamer.job import build_job

    config = config_from_args(args)
    if any(s == "webrtc" for s in args.sink):
        if len(args.sink) > 1:
            raise ConfigError("--sink webrtc cannot be combined with other sinks (run it as its own job)")
        from streamer.config import merge_params
        from streamer.job import with_live_defaults
        from streamer.live.serve import serve

        config = with_live_defaults(config)
        return serve(merge_params(config.serve, "serve", {"source": args.source}), config)
    job = build_job(args, config)
    return asyncio.run(_run_job(job, args, config.output))


async def _run_job(job, args: argparse.Namespace, output: OutputParams) -> int:
    from streamer.job import Controls, Progress

    stages = job.stages()
    pipeline = Pipeline(
        job.source,
        stages,
        job.sinks,
        live=job.live,
        batch_size=job.batch_size,
    )
    progress = Progress(job.source.info.frame_count, enabled=output.progress and not job.live)
    pipeline.on_frame = progress.update
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    interrupts: list[int] = []

    def on_signal(signum: int) -> None:
        interrupts.append(signum)
        if len(interrupts) == 1:
            print(
                f"\nstreamer: {signal.Signals(signum).name}: finishing the frames in flight "
                "(press Ctrl-C again to stop at once)",
                file=sys.stderr,
            )
            pipeline.stop()
        elif task is not None:
            task.cancel()

    remove_handlers = install_stop_handlers(loop, on_signal)
    controls = Controls(job) if _controls_wanted(args, job.live) else None
    if controls is not None:
        controls.start(loop)
    try:
        stats = await pipeline.run()
    except asyncio.CancelledError:
        print("streamer: stopped; outputs were closed with the frames written so far", file=sys.stderr)
        return exit_status(interrupts[0] if interrupts else signal.SIGINT)
    finally:
        progress.close()
        if controls is not None:
            controls.stop(loop)
        remove_handlers()
    print(stats.summary(), file=sys.stderr)
    for stage in stages:
        if summary := getattr(stage, "summary", None):
            print(summary(), file=sys.stderr)
    damage = getattr(job.source, "damage", None)
    if damage:
        print(f"streamer: warning: {damage.summary()}", file=sys.stderr)
    # Stopped by a signal: the shell's status for it (130 Ctrl-C, 143 SIGTERM), outputs complete.
    if interrupts:
        return exit_status(interrupts[0])
    return EXIT_DAMAGED_INPUT if damage else 0


def _controls_wanted(args: argparse.Namespace, live: bool) -> bool:
    if args.controls == "auto":
        return live and sys.stdin is not None and sys.stdin.isatty()
    return args.controls == "stdin"
