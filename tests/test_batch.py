"""`streamer batch` without a cluster: inputs, the split plan, and a split clip joined back.

The cluster itself (Ray actors on two nodes, a killed worker, resume) is tested in
test_batch_cluster.py; here the same task and join code run in this process.
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from media import count_audio, make_clip, read_video, square_position

from streamer.batch.inputs import expand_inputs, name_clips, output_path, partial_path
from streamer.batch.plan import Probe, Task, probe, split, warmup_frames
from streamer.batch.segment import join
from streamer.batch.work import in_progress_path, run_task
from streamer.cli import main
from streamer.errors import ConfigError

# 24 frames at 5 fps with a keyframe every 3: three segments of ~8 frames, 6 warm-up frames each.
LONG = {
    "frames": 24,
    "fps": 5,
    "options": {"preset": "ultrafast", "g": "3", "keyint_min": "3", "sc_threshold": "0"},
}


def test_inputs_files_folders_globs_and_lists(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in ("b.mp4", "a.mov", "notes.txt", ".hidden.mp4"):
        (folder / name).write_bytes(b"x")
    other = tmp_path / "other" / "a.mp4"
    other.parent.mkdir()
    other.write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text("# footage\nother/a.mp4\n\nhttps://example.com/c.mp4?sig=1\n")
    found = expand_inputs(
        [str(folder), str(tmp_path / "other" / "*.mp4"), str(listing), str(folder / "a.mov")]
    )
    assert found == [
        str(folder / "a.mov"),
        str(folder / "b.mp4"),
        str(other),
        "https://example.com/c.mp4?sig=1",
    ]
    clips = name_clips(found)
    assert [c.name for c in clips] == ["a", "b", "a-2", "c"]
    assert output_path(tmp_path, "a", "mov") == tmp_path / "a.mov"
    assert output_path(tmp_path, "a", "png") == tmp_path / "a"
    assert partial_path(tmp_path, "a", "webm").name.startswith(".a.")
    with pytest.raises(ConfigError, match="input not found: nope.mp4"):
        expand_inputs(["nope.mp4"])
    with pytest.raises(ConfigError, match="no video files"):
        expand_inputs([str(tmp_path / "other" / "*.mkv")])


def test_lists_in_utf16_or_with_a_bom_are_read_and_other_encodings_are_one_line(tmp_path):
    clip = tmp_path / "café.mp4"
    clip.write_bytes(b"x")
    for encoding in ("utf-16", "utf-8-sig", "utf-8"):
        listing = tmp_path / f"{encoding}.txt"
        listing.write_bytes("# clips\r\ncafé.mp4\r\n".encode(encoding))
        assert expand_inputs([str(listing)]) == [str(clip)], encoding
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café.mp4\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.txt is not UTF-8 text \(save it as UTF-8\)"):
        expand_inputs([str(latin)])


def test_split_cuts_at_keyframes_with_warmup():
    info = Probe("x", pts=tuple(range(0, 100 * 10, 10)), keyframes=tuple(range(0, 100, 7)), fps=25.0)
    segments = split(info, 20, warmup=10)
    assert [s.first for s in segments] == [0, 21, 42, 63, 84]
    assert all(s.first in info.keyframes for s in segments)
    assert sum(s.frames for s in segments) == 100
    for s in segments[1:]:
        assert s.warmup >= 10 and info.pts.index(s.seek_pts) in info.keyframes
        assert s.start_pts == info.pts[s.first]
    assert segments[-1].end_pts is None
    assert len(split(info, 200, warmup=10)) == 1
    assert warmup_frames(0.15, 25.0) == 24 and warmup_frames(0.0, 25.0) == 0


def test_probe_reports_a_corrupt_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 4000)
    error = probe(str(bad)).error
    assert error and "\n" not in error and "corrupt" in error


@pytest.fixture(scope="module")
def lite_config(recipe_weights):
    from streamer.config import load_config
    from streamer.engine import MattingEngine

    config = load_config(
        None,
        {
            "model": {"variant": "lite", "size": "64x64", "weights": str(recipe_weights("lite"))},
            "composite": {"mode": "rgba"},
        },
    )
    return config, MattingEngine.from_params(config.model)


def test_split_clip_joins_into_the_unsplit_output(tmp_path, lite_config):
    """Three segments processed apart and joined: frames, timestamps and audio of an unsplit run."""
    config, engine = lite_config
    src = make_clip(tmp_path / "long.mp4", size=(64, 48), **LONG)
    info = probe(str(src))
    warm = warmup_frames(config.smoothing.time_constant, info.fps)
    segments = split(info, 8, warm)
    assert len(segments) == 3 and all(s.warmup >= warm for s in segments[1:])
    parts = []
    for seg in segments:  # the last segment first: order of processing must not matter
        part = tmp_path / f".long.seg{seg.index}.mov"
        parts.append(part)
    for seg in reversed(segments):
        result = run_task(Task(str(src), "long", str(parts[seg.index]), seg.frames, seg), config, engine)
        assert result["error"] is None and result["frames"] == seg.frames
    joined = tmp_path / "long.mov"
    join(parts, [s.start_pts for s in segments], info.time_base, joined, str(src), 0.0)
    whole = tmp_path / "whole.mov"  # the reference: an unsplit `streamer run` with the same settings
    model = config.model
    argv = ["run", "--source", str(src), "--sink", str(whole), "--variant", model.variant, "--size", "64x64"]
    argv += ["--weights", model.weights, "--device", "cpu", "--mode", "rgba", "--no-progress"]
    assert main(argv) == 0

    a, pts_a, tb_a = read_video(joined, "rgba")
    b, pts_b, tb_b = read_video(whole, "rgba")
    assert len(a) == len(b) == 24
    assert [p * tb_a for p in pts_a] == [p * tb_b for p in pts_b]
    assert count_audio(joined) == count_audio(whole)
    assert count_audio(joined)[0] > 0
    assert (a[0][..., 3] < 255).any()  # alpha kept
    # Against the unsplit run: no larger at the cuts than elsewhere (and never more than a level or two).
    diff = [int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b, strict=True)]
    cuts = {s.first for s in segments[1:]}
    at_cuts = max(diff[i] for i in cuts)
    assert at_cuts <= max(d for i, d in enumerate(diff) if i not in cuts) <= 2, diff
    # Within the output: the change from the frame before a cut is the unsplit output's change there.
    for i in cuts:
        seam = np.abs(a[i].astype(int) - a[i - 1].astype(int)).mean()
        assert abs(seam - np.abs(b[i].astype(int) - b[i - 1].astype(int)).mean()) < 0.5


def test_no_ray_says_how_to_install(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None; from streamer.cli import main; "
        f"sys.exit(main(['batch', {str(tmp_path)!r}, '-o', {str(tmp_path / 'out')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and "[cluster]" in lines[0], done.stderr


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_an_output_folder_holding_the_inputs_is_refused(tmp_path, capsys, overwrite):
    """`-o` the clips' own folder replaced them with --overwrite, and without it took each clip
    for its finished output ("skipped (done)"): refused before the weights are read."""
    clips = tmp_path / "footage"
    clips.mkdir()
    clip = make_clip(clips / "take1.mp4", frames=2, audio=False)
    before = clip.read_bytes()
    weights = tmp_path / "never-read.safetensors"  # not weights: reading them would fail
    weights.write_bytes(b"x")
    argv = [
        "batch",
        str(clips),
        "-o",
        str(clips),
        "--sink-format",
        "mp4",
        "--weights",
        str(weights),
        *overwrite,
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"streamer: error: output {clips / 'take1.mp4'} is the input {clip}: writing it would destroy "
        "the source (choose another --out-dir)"
    )
    assert clip.read_bytes() == before and sorted(clips.iterdir()) == [clip]


@pytest.mark.parametrize(
    ("existing", "refusal"),
    [
        ("list", "is the input"),  # `--report clips.txt` with clips.txt the list of inputs
        ("notes", "output exists"),
        ("folder", "output is a folder"),
        ("under-a-file", "cannot write to folder"),
    ],
)
def test_the_report_is_checked_before_any_work(tmp_path, capsys, existing, refusal):
    # Written when every clip is done: a refusal then comes hours late, or replaces a user's file.
    clip = make_clip(tmp_path / "take1.mp4", frames=2, audio=False)
    listing = tmp_path / "clips.txt"
    listing.write_text(f"{clip}\n")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    (tmp_path / "folder").mkdir()
    report = {
        "list": listing,
        "notes": notes,
        "folder": tmp_path / "folder",
        "under-a-file": tmp_path / "take1.mp4" / "report.json",
    }[existing]
    weights = tmp_path / "never-read.safetensors"  # not weights: reading them would fail
    weights.write_bytes(b"x")
    argv = ["batch", str(listing), "-o", str(tmp_path / "out"), "--report", str(report)]
    assert main([*argv, "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert refusal in err and err.count("\n") == 1, err
    assert listing.read_text() == f"{clip}\n" and notes.read_text() == '{"mine": 1}'


def test_an_earlier_runs_report_is_replaced_by_a_rerun(tmp_path):
    from streamer.commands.batch import is_batch_report

    report = tmp_path / "report.json"
    report.write_text('{"clips": [], "frames": 0}')
    assert is_batch_report(report)
    for text in ('{"mine": 1}', "[1, 2]", "not json", '{"clips": 3}'):
        report.write_text(text)
        assert not is_batch_report(report)
    assert not is_batch_report(tmp_path / "missing.json") and not is_batch_report(tmp_path)


def test_a_damaged_clip_is_an_error_not_a_short_output(tmp_path, lite_config):
    config, engine = lite_config
    src = make_clip(tmp_path / "c.mp4", frames=6, size=(64, 48), audio=False)
    out = tmp_path / "c.mov"
    result = run_task(Task(str(src), "c", str(out), 9), config, engine)  # the index promised 9 frames
    assert "decoded 6 of 9 frames" in result["error"]
    assert not out.exists() and not in_progress_path(str(out)).exists()


def test_png_output_is_a_folder_renamed_when_complete(tmp_path, lite_config):
    config, engine = lite_config
    src = make_clip(tmp_path / "c.mp4", frames=3, size=(64, 48), audio=False)
    out = tmp_path / "out" / "c"
    out.parent.mkdir()
    result = run_task(Task(str(src), "c", str(out), 3), config, engine)
    assert result["error"] is None and result["frames"] == 3
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:06d}.png" for i in range(3)]
    assert [p.name for p in out.parent.iterdir()] == ["c"]


@pytest.mark.parametrize("fmt", ["mov", "webm", "mp4"])
def test_join_copies_packets_with_timestamps_and_alpha(tmp_path, fmt):
    """Two segments written by the file sink, each starting at 0, joined back at their source times."""
    import torch
    from media import pattern

    from streamer.frame import Frame
    from streamer.sinks.open import open_sink
    from streamer.sources.base import SourceInfo

    tb = Fraction(1, 1000)
    info = SourceInfo(64, 48, 25.0, tb, None, False)
    parts = []
    for s in range(2):
        part = tmp_path / f".seg{s}.{fmt}"
        sink = open_sink(str(part), info=info, audio=False)
        for k in range(s * 3, s * 3 + 3):
            frame = Frame(
                torch.zeros(48, 64, 3, dtype=torch.uint8), pts=k * 40, time_base=tb, index=k, captured_at=0
            )
            frame.output = torch.from_numpy(pattern(k, (64, 48), 4))
            sink.write(frame)
        sink.close()
        parts.append(part)
    joined = tmp_path / f"joined.{fmt}"
    assert join(parts, [0, 120], tb, joined) == 6
    frames, pts, time_base = read_video(joined, "rgba")
    assert [p * time_base for p in pts] == [Fraction(k, 25) for k in range(6)]
    if fmt != "mp4":  # H.264 has no alpha (the square, on the transparent half, is flattened to black)
        assert [square_position(f) for f in frames] == [
            square_position(pattern(k, (64, 48))) for k in range(6)
        ]
        assert all(f[:, :28, 3].max() < 8 and f[:, 36:, 3].min() > 247 for f in frames)
