"""`streamer batch INPUTS... -o OUT_DIR`: many clips over a Ray cluster, one output per input.

Inputs are video files or URLs, folders, globs or a .txt list. Without --address a local Ray
instance runs on this machine; with it, the job runs on an existing cluster whose nodes all
see the inputs and OUT_DIR at the same paths. Finished outputs are skipped on a re-run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streamer.commands import options
from streamer.config import load_config
from streamer.errors import ConfigError

INSTALL_HINT = (
    "streamer batch needs Ray: pip install 'streamer[cluster]' (or pip install -e '.[cluster]' in a clone)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="matte many clips on a Ray cluster (or this machine), one output each",
        description=__doc__.split("\n\n")[0],
    )
    options.add_inputs(p, "video files or URLs, folders, globs, .txt lists")
    p.add_argument(
        "-o", "--out-dir", required=True, type=options.named_path, help="folder for the outputs (created)"
    )
    p.add_argument(
        "--sink-format",
        choices=("mov", "webm", "mp4", "png"),
        default="mov",
        help="output format: mov (ProRes, alpha), webm (VP9, alpha), mp4 (H.264), png (a folder of frames)",
    )
    options.add_config_options(p)
    options.add_model_options(p)
    p.add_argument("--batch", type=int, help="frames per inference call")
    options.add_look_options(p)
    p.add_argument("--overwrite", action="store_true", default=None, help="redo outputs that already exist")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    cluster = p.add_argument_group("cluster")
    cluster.add_argument(
        "--address", help="Ray cluster to run on: auto (the one started here by 'ray start') or HOST:PORT"
    )
    cluster.add_argument(
        "--workers", type=int, help="workers (default: as many as the cluster's CPUs or GPUs allow)"
    )
    cluster.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs (and torch threads) per worker"
    )
    cluster.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (0.5: two per GPU)"
    )
    cluster.add_argument(
        "--segment-frames",
        type=int,
        default=1000,
        help="clips longer than this are split at keyframes into segments of about this many frames",
    )
    cluster.add_argument(
        "--report", type=options.named_path, help="also write the summary as JSON to this file"
    )
    p.set_defaults(handler=run)


BATCH_OPTIONS = {
    "batch": ("model", "batch_size"),
    "overwrite": ("output", "overwrite"),
    "progress": ("output", "progress"),
}


def is_batch_report(path: Path) -> bool:
    try:
        if path.stat().st_size > 64 << 20:
            return False
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and isinstance(report.get("clips"), list)


def run(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    for name in ("workers", "segment_frames"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: {value} must be at least 1")
    if args.cpus_per_worker <= 0 or args.gpus_per_worker < 0:
        raise ConfigError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
    config = load_config(
        args.config,
        options.overrides_from_args(args, options.MODEL_OPTIONS, options.LOOK_OPTIONS, BATCH_OPTIONS),
    )
    from streamer.batch.inputs import expand_inputs, name_clips
    from streamer.model.weights import check_architecture, read_state_dict, resolve_weights

    clips = name_clips(expand_inputs(args.inputs))
    from streamer.batch.driver import refuse_inputs_as_outputs

    refuse_inputs_as_outputs(clips, args.out_dir, args.sink_format)  # before any work
    if args.report:
        from streamer.sinks.paths import check_end_outputs

        # A list of clips (.txt) is an input too. An earlier run's report is replaced by a re-run
        # (resuming it must not take --overwrite, which redoes every clip); any other file is not.
        replace = config.output.overwrite or is_batch_report(args.report)
        check_end_outputs([args.report], [*args.inputs, *(c.source for c in clips)], replace)
    # Resolved and read once, here: workers get the tensors through Ray's object store.
    weights = resolve_weights(config.model.weights, config.model.variant)
    state = read_state_dict(weights)
    check_architecture(state, config.model.variant, str(weights))

    from streamer.batch.driver import BatchOptions, run_batch

    batch = BatchOptions(
        out_dir=args.out_dir,
        fmt=args.sink_format,
        address=args.address,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        segment_frames=args.segment_frames,
        progress=config.output.progress,
        report=args.report,
    )
    return run_batch(clips, config, state, str(weights), batch)
