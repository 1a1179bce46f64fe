"""`streamer serve`: a local web page that mattes your browser camera (or previews a server-side
source) over WebRTC, with live controls.

    streamer serve                                 # http://127.0.0.1:8080, the browser's camera
    streamer serve --source clip.mp4 --size 256    # preview a file (or webcam:0, a folder) instead
"""

from __future__ import annotations

import argparse

from streamer.commands import options
from streamer.live.params import ServeParams

LIVE_SIZE = (512, 512)
"""Model size when none is configured: the native 1024 is too slow for live video."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a page that mattes your browser camera live over WebRTC",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ServeParams()
    parser.add_argument("--host", help=f"address to listen on (default: {defaults.host})")
    parser.add_argument("--port", help=f"port (default: {defaults.port})")
    parser.add_argument(
        "--source", help="preview this server-side input (FILE, webcam:N, image folder) instead of the camera"
    )
    parser.add_argument(
        "--backgrounds",
        metavar="FOLDER",
        help="a folder of pictures and videos the page may pick as backgrounds, by name (requests never name server files)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a host name the page may be opened by besides --host (repeatable; e.g. behind a proxy)",
    )
    parser.add_argument(
        "--admin-token",
        metavar="SECRET",
        help="lets a request carrying it (the page opened at /#admin=SECRET) change the shared model size",
    )
    parser.add_argument(
        "--max-size", metavar="HxW", help="largest model size an admin request may set (default: --size)"
    )
    options.add_config_options(parser)
    options.add_model_options(
        parser, "model (shared by every peer)", default_size="x".join(map(str, LIVE_SIZE))
    )
    options.add_look_options(parser, "starting look (each page can change its own)")
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace):
    from streamer.config import load_config

    tables = options.MODEL_OPTIONS, options.LOOK_OPTIONS, options.SERVE_OPTIONS
    return with_live_defaults(load_config(args.config, options.overrides_from_args(args, *tables)))


def with_live_defaults(config):
    """The live defaults of `serve` (also `run --sink webrtc`): unless a config file or an
    option sets the size, the model runs at LIVE_SIZE."""
    from streamer.config import default_unset

    config.sections["model"] = default_unset(config.model, "model", {"size": LIVE_SIZE})
    return config


def run(args: argparse.Namespace) -> int:
    from streamer.live.serve import serve

    config = config_from_args(args)
    return serve(config.serve, config)
