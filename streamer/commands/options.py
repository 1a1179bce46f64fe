"""Command-line options shared by `run`, `serve` and `image`, and how they map onto config keys.

Every option defaults to None ("not given"), so a config file's value survives unless the
option is on the command line: defaults < config file < options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streamer.config import parse_assignment

# option dest -> (config section, key)
MODEL_OPTIONS = {
    "variant": ("model", "variant"),
    "weights": ("model", "weights"),
    "size": ("model", "size"),
    "device": ("model", "device"),
    "dtype": ("model", "dtype"),
    "backend": ("model", "backend"),
    "threads": ("model", "threads"),
}
SERVE_OPTIONS = {
    "host": ("serve", "host"),
    "port": ("serve", "port"),
    "source": ("serve", "source"),
    "backgrounds": ("serve", "backgrounds"),
    "allowed_host": ("serve", "allowed_hosts"),
    "admin_token": ("serve", "admin_token"),
    "max_size": ("serve", "max_size"),
    "webrtc": ("serve", "webrtc"),
    "api_key": ("serve", "api_key"),
    "allow_local_urls": ("serve", "allow_local_urls"),
    "url_timeout": ("serve", "url_timeout"),
}
LOOK_OPTIONS = {
    "mode": ("composite", "mode"),
    "color": ("composite", "color"),
    "background": ("composite", "background"),
    "blur": ("composite", "blur_radius"),
    "mirror": ("composite", "mirror"),
    "smoothing": ("smoothing", "enabled"),
    "strength": ("smoothing", "strength"),
}


def named(text: str) -> str:
    """argparse type of a file, folder or URL argument: an empty one (an unset shell variable in
    `--source "$CAM"`) is refused, where a path library would read it as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?): name a file, folder or URL")
    return text


def named_path(text: str) -> Path:
    return Path(named(text))


def add_inputs(parser: argparse.ArgumentParser, help: str) -> None:
    """The positional INPUT... of the commands that take many files, folders or globs."""
    parser.add_argument("inputs", nargs="+", type=named, metavar="INPUT", help=help)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=named, help="YAML file or preset name (see `streamer presets`; options override it)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any config value"
    )


def add_model_options(
    parser: argparse.ArgumentParser,
    title: str = "model",
    default_size: str = "1024x1024",
    size_help: str | None = None,
) -> None:
    group = parser.add_argument_group(title)
    from streamer.model import VARIANTS

    group.add_argument("--variant", choices=tuple(VARIANTS), help="network (default portrait)")
    group.add_argument("--weights", type=named, help="local .safetensors/.pth file or Hugging Face repo id")
    group.add_argument(
        "--size", help=size_help or f"network input size HxW, multiples of 32 (default {default_size})"
    )
    group.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"))
    add_backend_options(group)


def add_backend_options(group) -> None:
    group.add_argument(
        "--backend",
        choices=("auto", "torch", "openvino"),
        help="network runtime: auto = OpenVINO on the CPU, torch on a GPU (default auto)",
    )
    group.add_argument("--threads", help="CPU threads for the network (default: every core)")


def add_look_options(parser: argparse.ArgumentParser, title: str = "compositing and smoothing") -> None:
    group = parser.add_argument_group(title)
    group.add_argument("--mode", help="matte, rgba, color, image, video or blur")
    group.add_argument("--color", help="background colour for --mode color, e.g. green or '#00ff00'")
    group.add_argument("--background", type=named, help="background image or video for --mode image/video")
    group.add_argument("--blur", help="background blur radius in pixels for --mode blur")
    group.add_argument("--mirror", action="store_true", default=None, help="flip horizontally (webcams)")
    group.add_argument("--smoothing", choices=("on", "off"), help="temporal smoothing of the matte")
    group.add_argument("--strength", help="smoothing strength 0..1")


def overrides_from_args(args: argparse.Namespace, *tables: dict[str, tuple[str, str]]) -> dict[str, dict]:
    """The options given on the command line (and every --set), by config section."""
    result: dict[str, dict] = {}
    for table in tables:
        for dest, (section, key) in table.items():
            value = getattr(args, dest, None)
            if dest == "smoothing" and value is not None:
                value = value == "on"
            result.setdefault(section, {})[key] = value
    for text in getattr(args, "set", []):
        section, key, value = parse_assignment(text)
        result.setdefault(section, {})[key] = value
    return result
