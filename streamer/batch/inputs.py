"""Which clips a batch covers, and the output each one gets.

An input is a video file or URL, a folder (its video files, sorted), a glob, or a text
file (`.txt`, `.list`) holding one path or URL a line (lines starting with `#` are comments). The order is
kept and duplicates are dropped, so the same command always plans the same outputs.
"""

from __future__ import annotations

import codecs
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from streamer.errors import ConfigError
from streamer.sources.images import GLOB_CHARS
from streamer.sources.video import scheme_of

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".mts", ".mxf", ".mpg", ".mpeg")
LIST_SUFFIXES = (".txt", ".list")
FORMATS = ("mov", "webm", "mp4", "png")


@dataclass(frozen=True)
class Clip:
    source: str
    """Path or URL, as workers will open it (a shared path or URL on a cluster)."""
    name: str
    """Output name without extension, unique within the batch."""


def expand_inputs(specs: list[str]) -> list[str]:
    found: list[str] = []
    for spec in specs:
        found.extend(_expand(spec))
    if not found:
        raise ConfigError(
            f"no video files found in {' '.join(specs)} (pass files, folders, globs or a .txt list)"
        )
    return list(dict.fromkeys(found))


def _expand(spec: str) -> list[str]:
    if scheme_of(spec) not in (None, "file"):
        return [spec]
    path = Path(spec).expanduser()
    if path.is_dir():
        return [str(p) for p in sorted(path.iterdir()) if p.is_file() and _is_video(p)]
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _read_list(path)
    if path.is_file():
        return [str(path)]
    if any(ch in spec for ch in GLOB_CHARS):
        matches = sorted(glob.glob(os.path.expanduser(spec)))
        return [m for m in matches if os.path.isfile(m) and _is_video(Path(m))]
    raise ConfigError(f"input not found: {spec} (pass video files, folders, globs or a .txt list of paths)")


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".")


def _list_text(path: Path) -> str:
    """The list's text: UTF-8 (a BOM allowed), or UTF-16 with its BOM (Windows editors' "Unicode")."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the list {path}: {err.strerror or err} (check the path)") from err
    try:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return raw.decode("utf-16")
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"the list {path} is not UTF-8 text (save it as UTF-8)") from None


def _read_list(path: Path) -> list[str]:
    entries = []
    for line in _list_text(path).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if scheme_of(line) not in (None, "file"):
            entries.append(line)
            continue
        entry = Path(line).expanduser()
        # Relative lines are relative to the list, so a list travels with its footage.
        entries.append(str(entry if entry.is_absolute() else path.parent / entry))
    return entries


def name_clips(sources: list[str]) -> list[Clip]:
    """Each source's output name: its file name without extension, made unique with -2, -3, ..."""
    clips, taken = [], set()
    for source in sources:
        tail = source.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        stem = Path(tail).stem or "clip"
        name, n = stem, 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.lower())
        clips.append(Clip(source, name))
    return clips


def output_path(out_dir: Path, name: str, fmt: str) -> Path:
    """The final output: a file, or a folder of PNGs."""
    return out_dir / name if fmt == "png" else out_dir / f"{name}.{fmt}"


def partial_path(out_dir: Path, name: str, fmt: str, tag: str = "partial") -> Path:
    """A hidden name next to the output (same filesystem, so the final rename is atomic)."""
    return out_dir / (f".{name}.{tag}" if fmt == "png" else f".{name}.{tag}.{fmt}")
