"""Checks every file sink makes before any work starts, and what they share about frames."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from streamer.errors import MediaError
from streamer.frame import Frame


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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both name one file: the same path after resolving links, or the same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def refuse_input_as_output(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
    """One line, before any work, when an output would overwrite an input (even with --overwrite)."""
    inputs = list(inputs)
    for output in outputs:
        for source in inputs:
            if same_file(output, source):
                raise MediaError(
                    f"output {output} is the input {source}: writing it would destroy the source "
                    "(choose another output name)"
                )


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
