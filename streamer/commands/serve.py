"""`streamer serve`: a local web page that mattes your browser camera (or previews a server-side
source) over WebRTC, with live controls, and an HTTP image API on the same model.

    streamer serve                                 # http://127.0.0.1:8080, the browser's camera
    streamer serve --source clip.mp4 --size 256    # preview a file (or webcam:0, a folder) instead
    streamer serve --no-webrtc --api-key KEY       # only the image API (POST /v1/images/edits, /v1/matte)
"""

from __future__ import annotations

import argparse
import os

from streamer.commands import options
from streamer.job import LIVE_SIZE, with_live_defaults
from streamer.live.params import ServeParams

API_KEY_ENV = "STREAMER_API_KEY"


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
        "--source",
        type=options.named,
        help="preview this server-side input (FILE, webcam:N, image folder) instead of the camera",
    )
    parser.add_argument(
        "--backgrounds",
        metavar="FOLDER",
        type=options.named,
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
    api = parser.add_argument_group("image API (POST /v1/images/edits, /v1/matte)")
    api.add_argument(
        "--no-webrtc",
        dest="webrtc",
        action="store_false",
        default=None,
        help="serve only the image API (no page, no WebRTC)",
    )
    api.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require Authorization: Bearer KEY on API requests (default: ${API_KEY_ENV}; none: no key)",
    )
    api.add_argument(
        "--allow-local-urls",
        action="store_true",
        default=None,
        help="let requests name local and private addresses in 'url' (refused by default)",
    )
    api.add_argument(
        "--url-timeout",
        metavar="SECONDS",
        help=f"time limit of a 'url' fetch (default: {defaults.url_timeout:g})",
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
    overrides = options.overrides_from_args(args, *tables)
    if overrides["serve"].get("api_key") is None and os.environ.get(API_KEY_ENV):
        overrides["serve"]["api_key"] = os.environ[API_KEY_ENV]  # a config file's key still wins
    return with_live_defaults(load_config(args.config, overrides))


def run(args: argparse.Namespace) -> int:
    from streamer.live.serve import serve

    config = config_from_args(args)
    return serve(config.serve, config)
