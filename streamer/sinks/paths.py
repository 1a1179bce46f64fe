"""Checks every file sink makes before any work starts, and what they share about frames."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from streamer.errors import MediaError
from streamer.frame import Frame

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a concurrent job on one output is not detected
    fcntl = None


def ensure_writable_folder(folder: Path) -> None:
    """Create `folder` if needed and prove a file can be written there (permissions alone lie to root)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".streamer-probe-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise MediaError(f"cannot write to folder {folder}: {reason} (choose another output path)") from err


def check_output_file(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise MediaError(f"output is a folder: {path} (give a file name such as {path / 'out.mp4'})")
    if path.exists() and not overwrite:
        raise MediaError(f"output exists: {path} (pass --overwrite to replace it)")
    ensure_writable_folder(path.parent)


PARTIAL = ".partial"
"""Infix of an output being written: `out.mp4` is written as `out.partial.mp4`, renamed when complete."""
INTERRUPTED = ".interrupted"
"""Infix under which a re-run keeps what a killed run left: `out.interrupted.mp4`."""


def partial_path(path: Path) -> Path:
    """Where `path` is written until it is complete (same folder, so the final rename is atomic)."""
    return path.with_name(f"{path.stem}{PARTIAL}{path.suffix}")


def keep_interrupted(path: Path) -> Path | None:
    """Move a killed run's unfinished `path.partial` aside so it neither blocks nor is lost.

    The leftover plays up to its last complete fragment, so it is the user's work: it becomes
    `out.interrupted.mp4` (or `out.interrupted-2.mp4`, ...) and the new run starts afresh.
    Returns the kept name, or None when there was no leftover. A partial that another running
    job holds locked is that job's output: a one-line error, nothing touched.
    """
    partial = partial_path(path)
    if not partial.exists():
        return None
    with open(partial, "rb") as held:
        if not try_lock(held.fileno()):
            raise MediaError(
                f"{path} is being written by another streamer job ({partial} is in use; "
                "wait for it or choose another output name)"
            )
        for n in itertools.count(1):
            kept = path.with_name(f"{path.stem}{INTERRUPTED}{'' if n == 1 else f'-{n}'}{path.suffix}")
            if not kept.exists():
                os.replace(partial, kept)
                return kept
    return None


def try_lock(fd: int) -> bool:
    """An exclusive advisory lock on an open file, without waiting (always granted without fcntl)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both name one file: the same path after resolving links, or the same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def refuse_input_as_output(
    outputs: Iterable[str | os.PathLike],
    inputs: Iterable[str | os.PathLike],
    fix: str = "choose another output name",
) -> None:
    """One line, before any work, when an output would overwrite an input (even with --overwrite)."""
    inputs = list(inputs)
    for output in outputs:
        for source in inputs:
            if same_file(output, source):
                raise MediaError(
                    f"output {output} is the input {source}: writing it would destroy the source ({fix})"
                )


def refuse_repeated_outputs(
    specs: Iterable[str], named: frozenset[str] = frozenset({"vcam", "webrtc"})
) -> None:
    """One line, before any work, when two outputs of one job are one file or one device: the
    second would find the first's partial file locked and read as another job's."""
    seen: list[str] = []
    for spec in specs:
        for earlier in seen:
            if spec == earlier or (spec not in named and earlier not in named and same_file(spec, earlier)):
                raise MediaError(
                    f"output {spec} is given twice (as {earlier}): give each output its own name"
                )
        seen.append(spec)


def check_end_outputs(outputs: Iterable[Path], inputs: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """Files a command writes when all its work is done (a report, a contact sheet), checked
    before any work: not an input, not a file already there unless `overwrite`, a folder that
    takes files. Otherwise hours of work would end in an error, or replace the user's file."""
    outputs = list(outputs)
    refuse_input_as_output(outputs, inputs)
    for path in outputs:
        check_output_file(path, overwrite)


def write_json(data: dict, path: Path) -> None:
    """`data` as indented JSON, under a partial name first: `path` never holds half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        partial.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(partial, path)
    except OSError as err:
        raise MediaError(f"cannot write {path}: {err.strerror or err} (check the free disk space)") from err
    finally:
        remove_quietly(partial)


def output_array(frame: Frame) -> np.ndarray:
    """`frame.output` as a contiguous uint8 (H, W, C) array; C is 1, 3 or 4."""
    if frame.output is None:
        raise ValueError(f"frame {frame.index} reached a file sink without an output (compositor missing?)")
    array = frame.output.detach().cpu().numpy()
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype != np.uint8 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"sink needs uint8 (H, W, 1|3|4) frames, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def remove_quietly(path: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
