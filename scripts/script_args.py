"""argparse types shared by the scripts: a bad value stops a script with argparse's error line
(naming the option, with an example; exit 2), never with a traceback."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.config import MAX_SIDE, build_params  # noqa: E402
from streamer.errors import ConfigError  # noqa: E402

T = TypeVar("T")


def frame_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480): a picture's WIDTHxHEIGHT, even sides (4:2:0 video) up to MAX_SIDE."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 640x480") from None
    if not all(2 <= v <= MAX_SIDE and v % 2 == 0 for v in (width, height)):
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be even, from 2 to {MAX_SIDE}")
    return width, height


def network_size(text: str) -> tuple[int, int]:
    """'512x288' or '512' -> (512, 288): the network's input, HEIGHTxWIDTH, checked by the config
    model itself (as `--size` in streamer: multiples of 32)."""
    from streamer.engine import EngineParams  # torch: only for the scripts that run the network

    try:
        return build_params(EngineParams, {"size": text}, "model").size
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _fail(text: str, expected: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{text!r}: expected {expected}")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    return value


def positive(text: str) -> float:
    """A finite number above 0."""
    value = _float(text)
    if not (math.isfinite(value) and value > 0):
        raise _fail(text, "a number above 0, e.g. 1.5")
    return value


def non_negative(text: str) -> float:
    """A finite number, 0 or more."""
    value = _float(text)
    if not (math.isfinite(value) and value >= 0):
        raise _fail(text, "a number, 0 or more, e.g. 0.5")
    return value


def fraction(text: str) -> float:
    """A number from 0 to 1."""
    value = _float(text)
    if not (0.0 <= value <= 1.0):
        raise _fail(text, "a number from 0 to 1, e.g. 0.5")
    return value


def _whole(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise _fail(text, f"a whole number, {low} or more, e.g. 4")
    return value


def count(text: str) -> int:
    """A whole number, 1 or more."""
    return _whole(text, 1)


def whole(text: str) -> int:
    """A whole number, 0 or more."""
    return _whole(text, 0)


def listed(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    """A comma-separated list of `kind`, at least one."""

    def parse(text: str) -> list[T]:
        items = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r}: expected one value or more, comma-separated")
        return items

    return parse
