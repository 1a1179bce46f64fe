"""`streamer` command line: sub-commands live in `streamer.commands.*`.

User mistakes surface as one line on stderr and a non-zero exit; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from streamer import __version__
from streamer.errors import StreamerError

COMMANDS = ("image", "eval", "run", "batch", "serve", "doctor", "presets")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer",
        description="Real-time video matting with BiRefNet: replace or blur backgrounds live and in files.",
    )
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"streamer.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="streamer: %(levelname)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except StreamerError as err:
        if err.__cause__ is not None:
            # The "run with -v for details" that a wrapped error promises.
            logging.getLogger("streamer").debug("what led to the error:", exc_info=err)
        print(f"streamer: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("streamer: interrupted", file=sys.stderr)
        return 130
