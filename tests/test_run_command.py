"""`streamer run` end to end, as a user runs it: a real subprocess, real network (lite, recipe
weights, small input size), clips with audio written by the tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.media import count_audio, damage_png_frames, make_clip, pattern, read_video, truncate

ROOT = Path(__file__).resolve().parent.parent
# One intra-op thread: two spin-waiting OpenMP workers are several times slower on a loaded machine.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def streamer(*args: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", ONE_THREAD)
    return subprocess.run(
        [sys.executable, "-m", "streamer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        **kwargs,
    )


@pytest.fixture
def clip(tmp_path):
    return make_clip(tmp_path / "clip.mp4", frames=20, size=(96, 64), fps=25, audio=True)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("streamer: error: "), err
    for needle in needles:
        assert needle in err, err


def test_file_job_keeps_every_frame_timestamps_and_audio_in_several_sinks(tmp_path, clip, lite):
    mov, webm = tmp_path / "out.mov", tmp_path / "out.webm"
    result = streamer("run", "--source", clip, "--sink", mov, "--sink", webm, "--mode", "rgba", *lite)
    assert result.returncode == 0, result.stderr
    assert "frames: 20 in, 20 out, 0 dropped" in result.stderr
    src_frames, src_pts, src_tb = read_video(clip)
    for out in (mov, webm):
        frames, pts, tb = read_video(out, format="rgba")
        assert len(frames) == 20
        assert [p * tb for p in pts] == [p * src_tb for p in src_pts]
        assert frames[0].shape == (64, 96, 4)
        # Recipe weights give a soft, non-trivial matte: alpha must vary, not be flattened away.
        assert np.ptp(np.stack(frames)[..., 3]) > 10
        packets, seconds = count_audio(out)
        assert packets > 0 and seconds == pytest.approx(count_audio(clip)[1], abs=0.05)


def test_output_settings_reach_the_file_sink(tmp_path, clip, lite):
    out = tmp_path / "out.mp4"
    result = streamer(
        "run",
        "--source",
        clip,
        "--sink",
        out,
        *lite,
        "--set",
        "output.audio=false",
        "--set",
        "output.preset=ultrafast",
    )
    assert result.returncode == 0, result.stderr
    assert count_audio(out) == (0, 0.0)
    with av.open(str(out)) as container:
        # x264 writes its settings into the first packet: the ultrafast preset turns CABAC off.
        first = bytes(next(container.demux(container.streams.video[0])))
    assert b"cabac=0" in first and b"cabac=1" not in first


def test_batched_file_job_matches_unbatched(tmp_path, clip, lite):
    outs = []
    for batch in ("1", "4"):
        out = tmp_path / f"matte{batch}.mkv"
        result = streamer("run", "--source", clip, "--sink", out, "--mode", "matte", "--batch", batch, *lite)
        assert result.returncode == 0, result.stderr
        outs.append(np.stack(read_video(out, format="gray")[0]).astype(int))
    assert np.abs(outs[0] - outs[1]).max() <= 1


def interrupted(args: list, progress: str, sig: signal.Signals) -> tuple[int, str]:
    """Run `streamer` with `args`, send `sig` once its progress bar matches `progress` (the
    encoder buffers, so an output file's size says little), and return (exit status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", *map(str, args)],
        cwd=ROOT,
        env=ONE_THREAD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(1), "")))
    reader.start()
    deadline = time.monotonic() + 200  # a hang guard: the wait is on the progress bar
    while not re.search(progress, "".join(chunks)) and proc.poll() is None:
        assert time.monotonic() < deadline, "".join(chunks)
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    return proc.returncode, "".join(chunks)


def test_sigint_leaves_a_playable_file_with_the_frames_so_far(tmp_path, lite):
    long_clip = make_clip(tmp_path / "long.mp4", frames=400, size=(96, 64), fps=25, audio=True)
    out = tmp_path / "out.mp4"
    # Well before the end: once 10-99 of the 400 frames are written.
    code, err = interrupted(
        ["run", "--source", long_clip, "--sink", out, *lite, "--batch", "1"],
        r"\b(1\d|[2-9]\d)/400\b",
        signal.SIGINT,
    )
    assert code == 130, err
    assert "Traceback" not in err
    frames, pts, _ = read_video(out)
    assert 0 < len(frames) < 400
    assert pts == sorted(pts)
    packets, seconds = count_audio(out)
    assert packets > 0 and seconds <= len(frames) / 25 + 0.1


def test_sigterm_finishes_the_frames_in_flight_and_exits_143(tmp_path, lite):
    clip = make_clip(tmp_path / "long.mp4", frames=100, size=(96, 64), fps=25, audio=True)
    out = tmp_path / "out.mov"
    code, err = interrupted(
        ["run", "--source", clip, "--sink", out, *lite, "--batch", "1"],
        r"\b([3-9]|\d\d)/100\b",
        signal.SIGTERM,
    )
    assert code == 143, err
    assert "SIGTERM" in err and "Traceback" not in err
    frames, pts, _ = read_video(out)
    assert 3 <= len(frames) < 100
    assert pts == sorted(pts)


def test_existing_output_needs_overwrite(tmp_path, clip, lite):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    assert_one_line_error(streamer("run", "--source", clip, "--sink", out, *lite), "--overwrite")
    assert out.read_bytes() == b"precious"
    result = streamer("run", "--source", clip, "--sink", out, "--overwrite", *lite)
    assert result.returncode == 0, result.stderr
    assert len(read_video(out)[0]) == 20


@pytest.mark.parametrize(
    ("make_args", "needles"),
    [
        (lambda tmp, clip: ["--source", tmp / "missing.mp4", "--sink", tmp / "o.mp4"], ["missing.mp4"]),
        (lambda tmp, clip: ["--source", clip, "--sink", tmp / "o.xyz"], [".xyz", ".mp4"]),
        # A regular file where a folder should be: unwritable even for root.
        (lambda tmp, clip: ["--source", clip, "--sink", clip / "o.mp4"], ["cannot write"]),
        (
            lambda tmp, clip: ["--source", clip, "--sink", tmp / "o.mp4", "--mode", "sparkle"],
            ["composite.mode"],
        ),
        (lambda tmp, clip: ["--source", clip, "--sink", tmp / "o.mp4", "--size", "100x100"], ["32"]),
        (
            lambda tmp, clip: ["--source", clip, "--sink", tmp / "o.mp4", "--set", "smoothing.strength=7"],
            ["strength"],
        ),
        (
            lambda tmp, clip: ["--source", clip, "--sink", tmp / "o.mp4", "--config", "nope"],
            ["config not found"],
        ),
        (
            lambda tmp, clip: ["--source", clip, "--sink", tmp / "o.mkv", "--sink", f"{tmp}/./o.mkv"],
            ["given twice", "its own name"],
        ),
    ],
    ids=[
        "missing-input",
        "unknown-sink",
        "unwritable-output",
        "bad-mode",
        "bad-size",
        "bad-set",
        "bad-config",
        "repeated-sink",
    ],
)
def test_user_mistakes_are_one_line_errors(tmp_path, clip, lite, make_args, needles):
    assert_one_line_error(streamer("run", *lite, *map(str, make_args(tmp_path, clip))), *needles)


def test_input_of_which_nothing_decodes_is_one_line_error(tmp_path, lite):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(5000))
    assert_one_line_error(streamer("run", "--source", junk, "--sink", tmp_path / "a.mp4", *lite), "junk.mp4")


def warnings_of(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("streamer: warning: ")]


def test_truncated_input_is_processed_to_the_cut_and_reported(tmp_path, lite):
    # faststart: the index is up front, so half a file still opens and half its frames decode.
    clip = make_clip(
        tmp_path / "c.mp4", frames=30, size=(96, 64), audio=True, container_options={"movflags": "faststart"}
    )
    cut = truncate(clip, tmp_path / "cut.mp4", 0.5)
    out = tmp_path / "b.mp4"
    result = streamer("run", "--source", cut, "--sink", out, *lite)
    assert result.returncode == 3, result.stderr
    (warning,) = warnings_of(result)
    made = len(read_video(out)[0])
    assert 0 < made < 30
    match = re.search(
        r"cut\.mp4 is truncated: it ends at ([\d.]+) s of its 1\.20 s \((\d+) of 30 frames missing\)", warning
    )
    assert match, warning
    assert float(match[1]) == pytest.approx(made / 25, abs=0.01) and int(match[2]) == 30 - made


def test_damaged_frames_are_skipped_counted_and_the_rest_kept(tmp_path, lite):
    clip = make_clip(
        tmp_path / "png.mov", frames=12, size=(64, 48), codec="png", pix_fmt="rgb24", audio=False
    )
    damage_png_frames(clip, [3, 4, 9])
    out = tmp_path / "out.mkv"
    result = streamer("run", "--source", clip, "--sink", out, "--mode", "matte", *lite)
    assert result.returncode == 3, result.stderr
    (warning,) = warnings_of(result)
    assert "png.mov is damaged: 3 of 12 frames could not be decoded and were skipped" in warning
    assert len(read_video(out)[0]) == 9


def test_image_folder_with_a_bad_file_skips_it_and_keeps_the_rest(tmp_path, lite):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(5):
        Image.fromarray(pattern(i, (64, 48))).save(frames / f"f{i}.png")
    (frames / "f0.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")  # even the first one may be bad
    (frames / "f3.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = streamer("run", "--source", frames, "--sink", f"{out}/", "--mode", "matte", *lite)
    assert result.returncode == 3, result.stderr
    (warning,) = warnings_of(result)
    assert "2 of 5 images in" in warning and "(f0.png, f3.png)" in warning
    assert len(list(out.glob("*.png"))) == 3


def test_presets_load(tmp_path, clip, lite):
    out = tmp_path / "green.mp4"
    result = streamer("run", "--source", clip, "--sink", out, "--config", "green-screen", *lite)
    assert result.returncode == 0, result.stderr
    assert len(read_video(out)[0]) == 20


@pytest.mark.parametrize("link", ["same-path", "symlink", "hardlink", "png-folder"])
def test_output_that_is_the_input_is_refused_even_with_overwrite(tmp_path, lite, link):
    if link == "png-folder":
        frames = tmp_path / "frames"
        frames.mkdir()
        for i in range(3):
            Image.fromarray(pattern(i, (64, 48))).save(frames / f"frame_{i:06d}.png")
        source, sink, precious = frames, f"{frames}/", sorted(frames.iterdir())
    else:
        source = make_clip(tmp_path / "clip.mp4", frames=5, size=(64, 48), audio=False)
        sink = {"same-path": tmp_path / "." / "clip.mp4", "symlink": tmp_path / "link.mp4"}.get(
            link, tmp_path / "hard.mp4"
        )
        if link == "symlink":
            sink.symlink_to(source)
        elif link == "hardlink":
            os.link(source, sink)
        precious = [source]
    before = [p.read_bytes() for p in precious]
    for extra in ([], ["--overwrite"]):
        result = streamer("run", "--source", source, "--sink", sink, *lite, *extra)
        assert_one_line_error(result, "is the input", "destroy")
    assert [p.read_bytes() for p in precious] == before


def test_image_output_that_is_the_input_is_refused(tmp_path, lite):
    photo = tmp_path / "photo.png"
    Image.fromarray(pattern(0, (64, 48))).save(photo)
    before = photo.read_bytes()
    result = streamer("image", photo, "-o", photo, "--overwrite", *lite)
    assert_one_line_error(result, "is the input")
    assert photo.read_bytes() == before


def complete_fragments(path: Path) -> int:
    """Fragments (moof + mdat) wholly on disk in an MP4/MOV being written, by walking its top-level boxes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    count, offset, after_moof = 0, 0, False
    while offset + 8 <= len(data):
        size, kind = int.from_bytes(data[offset : offset + 4], "big"), data[offset + 4 : offset + 8]
        if size == 1 and offset + 16 <= len(data):
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        if size < 8 or offset + size > len(data):
            break
        count += kind == b"mdat" and after_moof
        after_moof = kind == b"moof"
        offset += size
    return count


def test_sigkill_leaves_playable_partials_and_the_rerun_keeps_them(tmp_path, lite):
    # 5 fps: a fragment (at most a second) is a few frames, so the job is killed early.
    clip = make_clip(tmp_path / "clip.mp4", frames=60, size=(96, 64), fps=5, audio=True)
    mp4, mov = tmp_path / "out.mp4", tmp_path / "out.mov"
    args = ["run", "--source", clip, "--sink", mp4, "--sink", mov, "--mode", "rgba", *lite, "--batch", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", *map(str, args), "--no-progress"],
        cwd=ROOT,
        env=ONE_THREAD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partials = [tmp_path / "out.partial.mp4", tmp_path / "out.partial.mov"]
    try:
        deadline = time.monotonic() + 200  # a hang guard only: the wait is on the files' progress
        while min(map(complete_fragments, partials)) < 1 and proc.poll() is None:
            assert time.monotonic() < deadline, "no fragment was written"
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed"
        proc.kill()
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert not mp4.exists() and not mov.exists()  # the final names only ever hold complete files
    cut = [read_video(partial, format="rgba") for partial in partials]
    for frames, pts, _ in cut:
        assert 0 < len(frames) < 60
        assert pts == sorted(pts)
    assert count_audio(partials[0])[0] > 0
    assert np.ptp(cut[1][0][0][..., 3]) > 10  # ProRes kept its alpha

    rerun = streamer(*args, env=ONE_THREAD)
    assert rerun.returncode == 0, rerun.stderr
    for final, (frames, _, _) in zip((mp4, mov), cut, strict=True):
        kept = final.with_name(f"out.interrupted{final.suffix}")
        assert f"kept as {kept}" in rerun.stderr
        assert len(read_video(kept)[0]) == len(frames)  # the killed run's work, moved aside untouched
        complete = read_video(final, format="rgba")[0]
        assert len(complete) == 60
        # The partial holds the job's first frames, in order (as the complete run made them).
        diff = np.abs(np.stack(frames).astype(int) - np.stack(complete[: len(frames)]).astype(int))
        assert diff.mean() < 2, diff.mean()
    assert not list(tmp_path.glob("*.partial.*"))


def test_no_mode_gives_alpha_outputs_rgba_and_the_others_the_colour_composite(tmp_path, clip, lite):
    mkv, mp4, ref = tmp_path / "out.mkv", tmp_path / "out.mp4", tmp_path / "ref.mp4"
    result = streamer("run", "--source", clip, "--sink", mkv, "--sink", mp4, *lite)
    assert result.returncode == 0, result.stderr
    assert "cannot hold alpha" not in result.stderr  # the composite is what was asked for, not a fallback
    reference = streamer("run", "--source", clip, "--sink", ref, "--mode", "color", *lite)
    assert reference.returncode == 0, reference.stderr
    rgba = np.stack(read_video(mkv, format="rgba")[0])
    assert np.ptp(rgba[..., 3]) > 10  # a real matte in the alpha channel
    got, want = (np.stack(read_video(p)[0]).astype(int) for p in (mp4, ref))
    assert np.abs(got - want).mean() < 2  # the .mp4 is the green-screen composite, as with --mode color


@pytest.mark.parametrize(
    ("sinks", "extra", "mode"),
    [
        (["out.mp4"], [], "color"),
        (["out.webm"], [], "rgba"),
        (["frames/%05d.png", "vcam"], [], "rgba"),
        (["out.mov"], ["--mode", "blur"], "blur"),
        (["out.mov"], ["--set", "composite.mode=matte"], "matte"),
        (["out.mov"], ["--config", "green-screen"], "color"),
    ],
)
def test_default_mode_follows_the_outputs(sinks, extra, mode):
    from streamer.cli import build_parser
    from streamer.commands import options
    from streamer.commands.run import RUN_OPTIONS
    from streamer.config import load_config
    from streamer.job import with_default_mode

    args = build_parser().parse_args(["run", "--source", "x.mp4", *(f"--sink={s}" for s in sinks), *extra])
    overrides = options.overrides_from_args(args, options.MODEL_OPTIONS, options.LOOK_OPTIONS, RUN_OPTIONS)
    config, flatten = with_default_mode(load_config(args.config, overrides), args)
    assert config.composite.mode == mode
    assert flatten == (config.composite.color if mode == "rgba" and not extra else None)
    if flatten:
        assert config.vcam.flatten_color == flatten


def test_live_file_plays_at_its_own_rate_through_the_live_core(tmp_path, lite):
    # 50 frames at 25 fps: played as a camera, the job cannot end in under 2 s (a lower bound
    # only: a slow machine takes longer, never shorter).
    clip = make_clip(tmp_path / "clip.mp4", frames=50, size=(96, 64), fps=25, audio=False)
    started = time.monotonic()
    result = streamer("run", "--source", clip, "--sink", tmp_path / "out" / "%05d.png", "--live", *lite)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 50 / 25 - 0.1
    # The live core's summary: keyframes on the network, the other frames carried by flow.
    assert re.search(r"live: \d+ keyframes, \d+ of \d+ frames with a propagated matte", result.stderr)


def test_a_file_played_live_into_a_recording_keeps_its_sound(tmp_path, lite):
    clip = make_clip(tmp_path / "clip.mp4", frames=25, size=(96, 64), fps=25, audio=True)
    out = tmp_path / "recording.mp4"
    result = streamer("run", "--source", clip, "--sink", out, "--live", *lite)
    assert result.returncode == 0, result.stderr
    packets, seconds = count_audio(out)
    assert packets > 0 and seconds == pytest.approx(count_audio(clip)[1], abs=0.05)


def test_a_background_that_cannot_be_read_fails_before_the_network_loads(tmp_path, clip):
    """A bad background used to be found at the first frame, after the network's load (and on a
    CPU its conversion, minutes for a large one)."""
    broken = tmp_path / "beach.png"
    broken.write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not weights: loading them would fail")
    out = tmp_path / "out.mp4"
    look = ["--mode", "image", "--background", broken]
    result = streamer("run", "--source", clip, "--sink", out, *look, "--weights", weights)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"streamer: error: cannot read background image: {broken} (pass --background PATH to a PNG or JPEG)"
    )
    assert not out.exists()
