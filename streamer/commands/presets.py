"""`streamer presets`: the configurations that ship with streamer, for `--config NAME`."""

from __future__ import annotations

import argparse

from streamer.config import list_presets


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "presets",
        help="list the presets that --config NAME takes",
        description="List the presets shipped with streamer; use one with --config NAME.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    presets = list_presets()
    width = max(map(len, presets), default=0)
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")
    return 0
