"""Job configuration: YAML presets plus command-line overrides, validated once, here.

Each section is the `...Params` dataclass of the module that uses it; this file only knows
how to turn loose values (YAML scalars, `--set key=value` strings) into those dataclasses and
how to report a bad one in a single line. Precedence: defaults < config file < options.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamer.errors import ConfigError

# section name -> (module, Params class)
SECTIONS: dict[str, tuple[str, str]] = {
    "model": ("streamer.engine", "EngineParams"),
    "propagation": ("streamer.propagation", "PropagationParams"),
    "smoothing": ("streamer.smoothing", "SmoothingParams"),
    "composite": ("streamer.compose.compositor", "CompositeParams"),
    "output": ("streamer.config", "OutputParams"),
    "vcam": ("streamer.sinks.vcam", "VcamParams"),
}

CONFIG_DIR = Path(__file__).resolve().parent / "presets"
"""Presets shipped inside the package (package data), so `--config NAME` works from a wheel."""

_COLOURS = {
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "red": (255, 0, 0),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "magenta": (255, 0, 255),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}


@dataclasses.dataclass(frozen=True)
class OutputParams:
    overwrite: bool = False
    """Replace existing outputs (never done silently)."""
    crf: int = 18
    """H.264/VP9 quality (lower is better; 18 is visually lossless for most footage)."""
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 63:
            raise ConfigError(f"output.crf: {self.crf} is out of range (use 0..63; 18 is a good default)")


def params_class(section: str) -> type:
    module, name = SECTIONS[section]
    return getattr(importlib.import_module(module), name)


def parse_colour(value: Any) -> tuple[int, int, int]:
    """'#00ff00', '0,255,0', 'green' or [0, 255, 0] -> (0, 255, 0)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _COLOURS:
            return _COLOURS[text]
        if re.fullmatch(r"#?[0-9a-f]{6}", text):
            text = text.lstrip("#")
            return tuple(int(text[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
        value = [p for p in re.split(r"[,\s]+", text) if p]
    try:
        rgb = tuple(_whole(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError("expected a colour like '#00ff00', '0,255,0' or a name (green, blue, black, ...)")
    return rgb  # type: ignore[return-value]


def parse_size(value: Any) -> tuple[int, int]:
    """'512x288' (height x width), '512' or [512, 288] -> (512, 288)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    elif isinstance(value, str):
        parts = [p for p in re.split(r"[x,\s]+", value.strip().lower()) if p]
        value = parts * 2 if len(parts) == 1 else parts
    try:
        size = tuple(_whole(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise ValueError("expected a size like 512x512 (height x width)")
    return size  # type: ignore[return-value]


def _whole(value: Any) -> int:
    """A whole number from an int, an integral finite float or its text; ValueError otherwise.

    `int()` alone would truncate 2.5, raise OverflowError on inf and accept True."""
    if isinstance(value, bool):
        raise ValueError("not a number")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError("not a whole number")
    return int(value)


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def shorten(value: Any, limit: int = 60) -> str:
    """repr(value) cut to about `limit` characters: messages quote what they refuse, never all of it."""
    brief = reprlib.Repr()
    brief.maxstring = brief.maxother = brief.maxlong = limit
    text = brief.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))
        if is_none and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            return _coerce(value, arg, name)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if hint is int:
        try:
            return _whole(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError("expected a whole number") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return _finite(value)
    if hint is str:
        return str(value)
    if origin is tuple:
        if "colo" in name:
            return parse_colour(value)
        if len(args) == 2 and args[1] is not Ellipsis:
            return parse_size(value)
        if isinstance(value, str):
            value = [p for p in re.split(r"[,\s]+", value) if p]
        return tuple(_coerce(v, args[0], name) for v in value)
    return value


def build_params(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """Build a Params dataclass from loose values, with one-line errors naming the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, raw in values.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{section}.{key}: unknown option (known: {known})")
        try:
            kwargs[key] = _coerce(raw, hints[key], key)
        except (TypeError, ValueError, OverflowError) as err:
            raise ConfigError(f"{section}.{key}: bad value {shorten(raw)}: {err}") from None
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError) as err:
        raise ConfigError(f"{section}: {err}") from None


def resolve_config_path(name: str) -> Path:
    """A path, or the name of a preset in streamer/presets/ (with or without .yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))) or "none installed"
    raise ConfigError(f"config not found: {name} (give a YAML path or a preset: {presets})")


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description: the first sentence of the file's header comment."""
    presets = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        lines = []
        for line in path.read_text().splitlines():
            # The header ends at the first non-comment line or an indented usage example.
            if not line.startswith("#") or line.startswith("#  "):
                break
            lines.append(line.lstrip("#").strip())
        text = " ".join(lines)
        presets[path.stem] = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return presets


def load_yaml(path: Path) -> dict[str, dict[str, Any]]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML (check indentation and colons)") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected sections like 'composite:' each holding 'key: value' lines")
    return data


def parse_assignment(text: str) -> tuple[str, str, str]:
    """'composite.mode=blur' -> ('composite', 'mode', 'blur')."""
    key, sep, value = text.partition("=")
    section, dot, option = key.strip().partition(".")
    if not sep or not dot or not option:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. composite.mode=blur")
    return section, option, value


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Every section's Params, built once at the edge."""

    sections: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.sections[name]
        except KeyError:
            raise AttributeError(name) from None


def load_config(
    path: str | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> JobConfig:
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    if path:
        for section, values in load_yaml(resolve_config_path(path)).items():
            if section not in SECTIONS:
                raise ConfigError(f"{path}: unknown section '{section}' (known: {', '.join(SECTIONS)})")
            merged[section].update(values)
    for section, values in (overrides or {}).items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section '{section}' (known: {', '.join(SECTIONS)})")
        merged[section].update({k: v for k, v in values.items() if v is not None})
    return JobConfig({name: build_params(params_class(name), merged[name], name) for name in SECTIONS})


def update_params(params: Any, section: str, key: str, raw: Any) -> Any:
    """A copy of `params` with one value changed, validated like the config file (live controls)."""
    return merge_params(params, section, {key: raw})


def merge_params(params: Any, section: str, changes: Mapping[str, Any]) -> Any:
    """A copy of `params` with `changes` applied, the merged result validated once as a whole,
    so the order of the keys never matters (`mode: image` and its `background` together)."""
    return build_params(type(params), {**_as_values(params), **changes}, section)


def _as_values(params: Any) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
