"""`streamer serve`: a local web page that mattes your browser camera (or previews a server-side
source) over WebRTC, with live controls.

    streamer serve                                 # http://127.0.0.1:8080, the browser's camera
    streamer serve --source clip.mp4 --size 256    # preview a file (or webcam:0, a folder) instead
"""

from __future__ import annotations

import argparse
import dataclasses

from streamer.live.serve import ServeParams

LIVE_SIZE = (512, 512)
"""Model size when none is configured: the native 1024 is too slow for live video."""

# option -> (config section, key); unset options leave the config file or default in place.
OPTIONS = {
    "variant": ("model", "variant"),
    "weights": ("model", "weights"),
    "size": ("model", "size"),
    "device": ("model", "device"),
    "dtype": ("model", "dtype"),
    "mode": ("composite", "mode"),
    "color": ("composite", "color"),
    "background": ("composite", "background"),
    "blur": ("composite", "blur_radius"),
    "mirror": ("composite", "mirror"),
    "smoothing": ("smoothing", "enabled"),
    "strength": ("smoothing", "strength"),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a page that mattes your browser camera live over WebRTC",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default=ServeParams.host, help="address to listen on (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=ServeParams.port, help="port (default: %(default)s)")
    parser.add_argument(
        "--source", help="preview this server-side input (FILE, webcam:N, image folder) instead of the camera"
    )
    parser.add_argument("--config", help="YAML file or preset name from configs/ (options override it)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any setting")
    model = parser.add_argument_group("model (shared by every peer)")
    model.add_argument("--variant", choices=("portrait", "lite", "general"))
    model.add_argument("--weights", help="local .safetensors/.pth file or Hugging Face repo id")
    model.add_argument("--size", help="network input size HxW, multiples of 32 (default 512x512 here)")
    model.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    model.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"))
    look = parser.add_argument_group("starting look (each page can change its own)")
    look.add_argument("--mode", help="matte, rgba, color, image, video or blur")
    look.add_argument("--color", help="background colour for --mode color, e.g. green or '#00ff00'")
    look.add_argument("--background", help="background image or video for --mode image/video")
    look.add_argument("--blur", help="background blur strength for --mode blur")
    look.add_argument("--mirror", action="store_true", default=None, help="flip horizontally")
    look.add_argument("--smoothing", choices=("on", "off"), help="temporal smoothing of the matte")
    look.add_argument("--strength", help="smoothing strength 0..1")
    parser.set_defaults(handler=run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, dict]:
    result: dict[str, dict] = {}
    for option, (section, key) in OPTIONS.items():
        value = getattr(args, option)
        if option == "smoothing" and value is not None:
            value = value == "on"
        result.setdefault(section, {})[key] = value
    from streamer.config import parse_assignment

    for text in args.set:
        section, key, value = parse_assignment(text)
        result.setdefault(section, {})[key] = value
    return result


def config_from_args(args: argparse.Namespace):
    from streamer.config import load_config

    overrides = overrides_from_args(args)
    config = load_config(args.config, overrides)
    if not args.config and overrides["model"]["size"] is None:
        config.sections["model"] = dataclasses.replace(config.model, size=LIVE_SIZE)
    return config


def run(args: argparse.Namespace) -> int:
    from streamer.live.serve import serve

    params = ServeParams(host=args.host, port=args.port, source=args.source)
    return serve(params, config_from_args(args))
