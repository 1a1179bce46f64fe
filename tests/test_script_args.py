"""The scripts' command lines: any value gives a result or argparse's one-line error, never a
traceback; `make_sample_clip.py` (the README's first command) end to end."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("script_args", ROOT / "scripts" / "script_args.py")
script_args = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script_args)

TYPES = {
    "frame_size": script_args.frame_size,
    "network_size": script_args.network_size,
    "positive": script_args.positive,
    "non_negative": script_args.non_negative,
    "fraction": script_args.fraction,
    "count": script_args.count,
    "whole": script_args.whole,
    "listed(frame_size)": script_args.listed(script_args.frame_size),
}
texts = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"-?[0-9]{1,6}(\.[0-9]{0,3})?(x-?[0-9]{1,6}){0,2}", fullmatch=True),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0x0", "640x480,", ",", " 640 x 480 ", "１２"]),
)


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=200, deadline=None)  # the first network_size call imports torch
@given(text=texts)
def test_every_type_returns_or_refuses_in_one_line(name, text):
    try:
        value = TYPES[name](text)
    except argparse.ArgumentTypeError as err:
        assert "\n" not in str(err) and str(err)
        return
    if name in ("frame_size", "network_size"):
        assert len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)
    elif name == "listed(frame_size)":
        assert value and all(w % 2 == 0 and h % 2 == 0 for w, h in value)
    else:
        assert value == value and value not in (float("inf"), float("-inf"))  # finite
        assert value >= (1 if name == "count" else 0)
        assert name != "positive" or value > 0
        assert name != "fraction" or value <= 1


def test_the_types_read_what_the_scripts_document():
    assert script_args.frame_size("640x480") == (640, 480)
    assert script_args.frame_size("1280X720") == (1280, 720)
    assert script_args.network_size("512x288") == (512, 288)
    assert script_args.network_size("256") == (256, 256)
    assert script_args.listed(script_args.count)("1, 2,") == [1, 2]
    assert script_args.positive("0.04") == 0.04
    assert script_args.whole("0") == 0
    for refused in (
        lambda: script_args.frame_size("641x480"),  # 4:2:0 video needs even sides
        lambda: script_args.network_size("500"),  # the network needs multiples of 32
        lambda: script_args.positive("0"),
        lambda: script_args.count("2.5"),
        lambda: script_args.fraction("1.5"),
        lambda: script_args.listed(script_args.count)(","),
    ):
        with pytest.raises(argparse.ArgumentTypeError):
            refused()


def make_sample_clip(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/make_sample_clip.py", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--size", "64"], "WIDTHxHEIGHT"),
        (["--size", "65x48"], "even"),
        (["--seconds", "-1"], "above 0"),
        (["--fps", "0"], "1 or more"),
    ],
)
def test_make_sample_clip_refuses_bad_values_in_one_line(tmp_path, args, needle):
    result = make_sample_clip(tmp_path / "clip.mp4", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and needle in result.stderr.splitlines()[-1]
    assert not (tmp_path / "clip.mp4").exists()


def test_make_sample_clip_writes_once_and_keeps_what_is_there(tmp_path):
    out = tmp_path / "clip.mp4"
    first = make_sample_clip(out, "--size", "96x64", "--seconds", "0.2")
    assert first.returncode == 0, first.stderr
    assert "5 frames 96x64" in first.stdout
    out.write_bytes(b"precious")
    again = make_sample_clip(out)
    assert again.returncode == 0 and "kept" in again.stdout
    assert out.read_bytes() == b"precious"


def test_make_sample_clip_names_what_it_cannot_write(tmp_path):
    wrong_kind = make_sample_clip(tmp_path / "clip.xyz")
    assert wrong_kind.returncode == 2 and ".mp4" in wrong_kind.stderr.splitlines()[-1]
    nowhere = tmp_path / "missing" / "clip.mp4"
    result = make_sample_clip(nowhere)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cannot write" in result.stderr
    assert not nowhere.exists()
