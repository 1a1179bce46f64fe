"""Job configuration: YAML presets plus command-line overrides, validated once, here.

Each section is the `...Params` model (pydantic) of the module that uses it, declared with types
and constraints; this file holds the types they share, and turns pydantic's ValidationError into
one line naming the key, the bad value and the fix. YAML presets, `--set`, the command-line
options and the page's `/params` JSON all go through `build_params` / `merge_params`.
Precedence: defaults < config file < options.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from streamer.errors import ConfigError

# section name -> (module, Params class)
SECTIONS: dict[str, tuple[str, str]] = {
    "model": ("streamer.engine", "EngineParams"),
    "propagation": ("streamer.propagation", "PropagationParams"),
    "smoothing": ("streamer.smoothing", "SmoothingParams"),
    "composite": ("streamer.compose.compositor", "CompositeParams"),
    "output": ("streamer.config", "OutputParams"),
    "vcam": ("streamer.sinks.vcam", "VcamParams"),
    "serve": ("streamer.live.params", "ServeParams"),
}

CONFIG_DIR = Path(__file__).resolve().parent / "presets"
"""Presets shipped inside the package (package data), so `--config NAME` works from a wheel."""

MAX_SIDE = 16384
"""The largest side a size may have (beyond any camera, model input or display)."""

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
    if len(size) != 2 or not all(0 < s <= MAX_SIDE for s in size):
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


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode reads True as 1; a switch given for a number is a mistake.
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


def _none_text(value: Any) -> Any:
    """'', 'none' and 'null' (from `--set` or a form) mean None where None is allowed."""
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
        return None
    return value


def _items(value: Any) -> Any:
    """'a, b' (from `--set`) -> ['a', 'b']; lists pass as they are."""
    if isinstance(value, str):
        return [p for p in re.split(r"[,\s]+", value) if p]
    return value


Colour = Annotated[tuple[int, int, int], BeforeValidator(parse_colour)]
"""'#00ff00', '0,255,0', 'green' or [0, 255, 0]."""
Size = Annotated[tuple[int, int], BeforeValidator(parse_size)]
"""'512x288' (height x width), 512 or [512, 288]."""
Items = BeforeValidator(_items)
"""Annotate a tuple field with it to take 'a,b' as well as a list."""


def Maybe(kind: Any) -> Any:  # noqa: N802 (a type)
    """`kind` or None; 'none', 'null' and '' (from `--set` or a form) mean None."""
    return Annotated[kind | None, BeforeValidator(_none_text)]


def Whole(lo: int | None = None, hi: int | None = None) -> Any:  # noqa: N802 (a type)
    """A whole number in lo..hi (True is not 1, 2.5 is not 2)."""
    return Annotated[int, BeforeValidator(_not_bool), Field(ge=lo, le=hi)]


def Number(lo: float | None = None, hi: float | None = None, *, above: float | None = None) -> Any:  # noqa: N802
    """A finite number in lo..hi (or above `above`, exclusive)."""
    return Annotated[float, BeforeValidator(_not_bool), Field(ge=lo, le=hi, gt=above)]


class Params(BaseModel):
    """Base of every config section: frozen, no unknown keys, finite numbers, and a bad value
    given directly (`CompositeParams(mode="x")`) is a ConfigError like one from a file."""

    # Numbers are text where text is wanted (a YAML `device: 0`, a token of digits).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True)
    prefix: ClassVar[str | None] = None
    """How errors name a model that is not a config section (e.g. `webcam` for WebcamParams)."""

    # pydantic calls an __init__ of the model's own from model_validate too: every way in is here.
    def __init__(self, /, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise config_error(err, type(self), _section_of(type(self)), values) from None


class FieldProblem(ValueError):
    """Raised by a model validator about several fields, to name the one to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _section_of(cls: type) -> str:
    for section, (module, name) in SECTIONS.items():
        if cls.__name__ == name and cls.__module__ == module:
            return section
    return getattr(cls, "prefix", None) or cls.__name__


_REASONS = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_parsing_size": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "tuple_type": "expected a list",
}


def _reason(error: Mapping[str, Any], description: str | None = None) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _REASONS:
        return _REASONS[kind]
    if kind == "literal_error":
        return f"expected {ctx['expected']}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        word = {"ge": "at least", "le": "at most", "gt": "above", "lt": "below"}
        (bound, limit), *_ = ctx.items()
        return (
            f"expected {word[bound]} {limit:g}"
            if isinstance(limit, float)
            else f"expected {word[bound]} {limit}"
        )
    if kind in ("string_too_short", "string_too_long", "too_short", "too_long"):
        return error["msg"].replace("String should have", "expected").replace("Input should have", "expected")
    if kind == "string_pattern_mismatch":
        return f"expected {description}" if description else "not in the expected form"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


def config_error(err: ValidationError, cls: type, section: str, values: Mapping[str, Any]) -> ConfigError:
    """pydantic's ValidationError -> one line: `section.key: bad value X: reason` (the first
    problem only: one fix at a time reads better than a list)."""
    error = err.errors(include_url=False)[0]
    loc = error["loc"]
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(cls.model_fields))
        return ConfigError(f"{section}.{shorten(loc[0], 40, quote=False)}: unknown option (known: {known})")
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, FieldProblem):
        return ConfigError(f"{section}.{problem.field}: {shorten(str(problem), 160, quote=False)}")
    key = str(loc[0]) if loc else ""
    field = cls.model_fields.get(key)
    reason = shorten(_reason(error, field and field.description), 160, quote=False)
    if not loc:
        return ConfigError(f"{section}: {reason}")
    raw = values[key] if key in values else error.get("input")
    return ConfigError(f"{section}.{key}: bad value {shorten(raw)}: {reason}")


def shorten(value: Any, limit: int = 60, quote: bool = True) -> str:
    """repr(value) (or str with quote=False) cut to about `limit` characters: messages quote
    what they refuse, never all of it, and never a line break."""
    if quote:
        brief = reprlib.Repr()
        brief.maxstring = brief.maxother = brief.maxlong = limit
        text = brief.repr(value)
    else:
        text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def params_class(section: str) -> type:
    module, name = SECTIONS[section]
    return getattr(importlib.import_module(module), name)


def build_params(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """A Params model from loose values (YAML, `--set` text, JSON), or one ConfigError line."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected 'key: value' settings, got {shorten(values)}")
    for key in values:
        if not isinstance(key, str):  # YAML allows `1: 2`; pydantic takes names only
            known = ", ".join(sorted(cls.model_fields))
            raise ConfigError(f"{section}.{shorten(key, 40)}: unknown option (known: {known})")
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        raise config_error(err, cls, section, values) from None


X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)


class OutputParams(Params):
    """Outputs: what the file sinks take (`streamer.sinks.video_file`) and how a job treats them."""

    overwrite: bool = False
    """Replace existing outputs (never done silently)."""
    crf: Whole(0, 63) = 18
    """H.264/VP9 quality (lower is better; 18 is visually lossless for most footage; ProRes and
    FFV1 ignore it)."""
    preset: Literal[X264_PRESETS] = "medium"
    """Encoding speed against size: x264's preset (.mp4); from ultrafast to veryfast, VP9 (.webm)
    encodes in its realtime mode too. Live jobs default to veryfast."""
    audio: bool = True
    """Carry the source's audio over."""
    flatten_color: Maybe(Colour) = None
    """Where RGBA frames meet a format without alpha: laid over this colour (the colour composite);
    None lays them over black with a warning (alpha asked for, but this format cannot keep it)."""
    progress: bool = True


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
        # Bytes: YAML's reader decodes them and calls a file that is not text a YAMLError.
        data = yaml.safe_load(path.read_bytes()) or {}
    except yaml.reader.ReaderError as err:  # bytes that are not UTF-8/16 text
        raise ConfigError(
            f"{path}: is not text a config can hold ({err.reason}); save it as UTF-8 text"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML (check indentation and colons)") from None
    except RecursionError:  # PyYAML builds nested lists and maps by recursion
        raise ConfigError(
            f"{path}: nested too deeply to be a config (sections of 'key: value' lines)"
        ) from None
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
    so the order of the keys never matters (`mode: image` and its `background` together).

    (pydantic's `model_copy(update=...)` would skip validation.) The values given before are
    kept as given, so `model_fields_set` still tells a chosen value from a default."""
    if not isinstance(changes, Mapping):
        raise ConfigError(f"{section}: expected 'key: value' settings, got {shorten(changes)}")
    given = params.model_dump(include=params.model_fields_set)
    return build_params(type(params), {**given, **changes}, section)


def default_unset(params: Any, section: str, defaults: Mapping[str, Any]) -> Any:
    """`params` with `defaults` for the keys no config file or option chose (a command's own
    defaults, e.g. the smaller model size of `serve`)."""
    missing = {k: v for k, v in defaults.items() if k not in params.model_fields_set}
    return merge_params(params, section, missing) if missing else params
