"""File sinks: frames, timestamps and audio kept per container; alpha, mattes, PNGs; errors; Ctrl-C."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from media import count_audio, make_clip, one_line_error, pattern, pix_fmt_of, read_video, square_position
from PIL import Image

from streamer.config import OutputParams
from streamer.errors import ConfigError, MediaError
from streamer.frame import Frame
from streamer.sinks.open import open_sink
from streamer.sinks.png_sequence import DEFAULT_PATTERN, PngSequenceSink, existing_frames
from streamer.sinks.video_file import FORMATS, VideoFileSink
from streamer.sources.open import open_source

SIZE = (64, 48)
AUDIO_PACKET_S = 1024 / 48000


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("src") / "vfr.mp4", frames=30, size=SIZE, vfr=True)


def with_alpha(image: torch.Tensor) -> torch.Tensor:
    """RGBA: transparent left half, opaque right half (as in tests.media.pattern)."""
    alpha = torch.zeros(image.shape[:2] + (1,), dtype=torch.uint8)
    alpha[:, image.shape[1] // 2 :] = 255
    return torch.cat([image, alpha], dim=2)


def transcode(source_path, out_path, channels=3, stop_after=None, **options):
    """Source -> sink with `frame.output` built from the image; returns the sink after close()."""
    source = open_source(str(source_path))
    sink = open_sink(out_path, info=source.info, **options)
    try:
        for frame in source.frames():
            if channels == 4:
                frame.output = with_alpha(frame.image)
            elif channels == 1:
                frame.output = frame.image[:, :, :1].clone()
            else:
                frame.output = frame.image
            sink.write(frame)
            if stop_after is not None and frame.index + 1 == stop_after:
                break
    finally:
        sink.close()
        source.close()
    return sink


def seconds(path) -> list[float]:
    _, pts, time_base = read_video(path)
    return [float(p * time_base) for p in pts]


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".webm", ".mkv"])
def test_frames_timestamps_and_audio_survive(vfr_clip, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    transcode(vfr_clip, out)
    frames, _, _ = read_video(out)
    want, got = seconds(vfr_clip), seconds(out)
    assert len(frames) == len(want) == 30
    # Matroska shifts every stream by the AAC priming (~21 ms) to stay non-negative: sync is kept.
    offset = got[0] - want[0] if suffix in (".mkv", ".webm") else 0.0
    assert 0 <= offset <= AUDIO_PACKET_S + 0.001
    np.testing.assert_allclose(np.array(got) - offset, want, atol=0.0011)  # webm/mkv store milliseconds
    assert len(set(np.round(np.diff(got), 3))) > 1  # still variable frame rate
    assert [square_position(f) for f in frames] == [square_position(pattern(i, SIZE)) for i in range(30)]
    in_packets, in_duration = count_audio(vfr_clip)
    out_packets, out_duration = count_audio(out)
    if suffix == ".webm":  # AAC re-encoded to Opus: other packet size, same length
        assert out_packets > 0
    else:
        assert out_packets == in_packets
    assert out_duration == pytest.approx(in_duration, abs=AUDIO_PACKET_S)


@pytest.mark.parametrize(("suffix", "stored"), [(".mov", "yuva444p"), (".webm", ""), (".mkv", "bgra")])
def test_alpha_survives_in_alpha_containers(vfr_clip, tmp_path, suffix, stored):
    out = tmp_path / f"alpha{suffix}"
    transcode(vfr_clip, out, channels=4)
    frames, _, _ = read_video(out, format="rgba")  # VP9 through libvpx, which keeps the alpha plane
    alpha = frames[5][:, :, 3].astype(int)
    half = SIZE[0] // 2
    assert alpha[:, : half - 2].max() <= 2 and alpha[:, half + 2 :].min() >= 253
    if suffix != ".webm":  # FFmpeg's own vp9 decoder reports the stream without its alpha plane
        assert pix_fmt_of(out).startswith(stored)


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".webm", ".mkv"])
def test_colours_come_back_through_a_source(tmp_path, suffix):
    """The sink's colour matrix and tags agree with what decoders (and VideoSource) assume."""
    from streamer.sources.base import SourceInfo

    info = SourceInfo(64, 48, 25.0, Fraction(1, 25), None, False)
    image = torch.zeros((48, 64, 3), dtype=torch.uint8)
    image[:, :32, 0] = 255
    image[:, 32:] = torch.tensor([0, 200, 50], dtype=torch.uint8)
    sink = open_sink(tmp_path / f"c{suffix}", info=info)
    for i in range(3):
        sink.write(
            Frame(image=image, pts=i, time_base=info.time_base, index=i, captured_at=0.0, output=image)
        )
    sink.close()
    back = next(iter(open_source(str(tmp_path / f"c{suffix}")).frames())).image
    assert np.abs(back[10, 10].numpy().astype(int) - [255, 0, 0]).max() <= 4
    assert np.abs(back[10, 50].numpy().astype(int) - [0, 200, 50]).max() <= 4


def test_rgba_into_mp4_is_composited_over_black(vfr_clip, tmp_path):
    out = tmp_path / "flat.mp4"
    transcode(vfr_clip, out, channels=4)
    frame = read_video(out)[0][3].astype(int)
    assert frame[:, : SIZE[0] // 2 - 2].max() <= 12  # transparent half is black
    assert frame[:, SIZE[0] // 2 + 2 :].mean() > 60


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".webm", ".mkv"])
def test_matte_only_video_is_gray(vfr_clip, tmp_path, suffix):
    out = tmp_path / f"matte{suffix}"
    transcode(vfr_clip, out, channels=1)
    source = next(iter(open_source(str(vfr_clip)).frames())).image[:, :, 0].numpy().astype(int)
    frames, _, _ = read_video(out, format="gray")
    assert len(frames) == 30
    error = np.abs(frames[0].astype(int) - source)
    if suffix == ".mkv":
        assert error.max() == 0  # FFV1 gray is lossless
    else:
        assert error.mean() < 4 and error.max() < 16


def test_png_sequence_in_folder_is_rgba(vfr_clip, tmp_path):
    folder = tmp_path / "pngs"
    sink = transcode(vfr_clip, f"{folder}/", channels=4, stop_after=5)
    assert isinstance(sink, PngSequenceSink)
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"frame_{i:06d}.png" for i in range(5)]
    with Image.open(files[2]) as image:
        assert image.mode == "RGBA"
        array = np.asarray(image)
    want = with_alpha(next(iter(open_source(str(vfr_clip)).frames())).image).numpy()
    assert array.shape == want.shape and array[:, :, 3].tolist() == want[:, :, 3].tolist()


def test_png_pattern_refuses_then_replaces_existing_frames(vfr_clip, tmp_path):
    pattern_path = str(tmp_path / "seq" / "f_%03d.png")
    transcode(vfr_clip, pattern_path, stop_after=4)
    assert len(list((tmp_path / "seq").glob("f_*.png"))) == 4
    with pytest.raises(MediaError) as excinfo:
        transcode(vfr_clip, pattern_path, stop_after=2)
    assert "--overwrite" in one_line_error(excinfo)
    transcode(vfr_clip, pattern_path, stop_after=2, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == ["f_000.png", "f_001.png"]


def test_overwrite_removes_only_names_its_pattern_makes(vfr_clip, tmp_path):
    """`%d.png` never makes `0001.png`: the user's own numbered pictures beside it stay."""
    folder = tmp_path / "shots"
    folder.mkdir()
    theirs = [folder / f"{i:04d}.png" for i in range(1, 4)]
    for path in theirs:
        path.write_bytes(b"their picture")
    transcode(vfr_clip, f"{folder}/%d.png", stop_after=2, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", "0001.png", "0002.png", "0003.png", "1.png"]
    assert all(path.read_bytes() == b"their picture" for path in theirs)


@given(
    field=st.sampled_from(["%d", "%1d", "%3d", "%01d", "%04d", "%06d"]),
    numbers=st.lists(st.integers(0, 10**7), max_size=6),
    others=st.lists(st.from_regex(r"[0-9 ]{1,9}", fullmatch=True), max_size=6),
)
def test_existing_frames_are_exactly_the_names_the_pattern_makes(tmp_path_factory, field, numbers, others):
    folder = tmp_path_factory.mktemp("seq")
    pattern = str(folder / f"f_{field}.png")
    made = {f"f_{field % n}.png" for n in numbers}
    for name in made | {f"f_{text}.png" for text in others}:
        (folder / name).write_bytes(b"")
    found = {p.name for p in existing_frames(pattern)}
    assert made <= found
    assert all(name[2:-4] == field % int(name[2:-4]) for name in found)  # and nothing else


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".webm", ".mkv"])
def test_interrupted_job_leaves_playable_file_with_frames_so_far(vfr_clip, tmp_path, suffix):
    out = tmp_path / f"cut{suffix}"
    sink = transcode(vfr_clip, out, stop_after=10)  # close() as after Ctrl-C
    frames, _, _ = read_video(out)
    assert sink.frames_written == 10 and len(frames) == 10
    got, want = seconds(out), seconds(vfr_clip)[:10]
    np.testing.assert_allclose(np.array(got) - (got[0] - want[0]), want, atol=0.0011)
    _, duration = count_audio(out)
    video_end = want[-1] + (want[-1] - want[-2])  # end of the last frame written
    assert video_end - AUDIO_PACKET_S <= duration <= video_end + 2 * AUDIO_PACKET_S


def test_late_start_moves_video_and_audio_back_to_zero(tmp_path):
    clip = make_clip(tmp_path / "late.ts", vfr=True)  # MPEG-TS: video starts after the audio priming
    want = seconds(clip)
    assert want[0] > 0.01
    out = tmp_path / "late.mp4"
    transcode(clip, out)
    got = seconds(out)
    np.testing.assert_allclose(got, np.array(want) - want[0], atol=1e-4)
    in_packets, in_duration = count_audio(clip)
    out_packets, out_duration = count_audio(out)
    assert in_packets - 1 <= out_packets <= in_packets  # at most the packet before the first frame goes
    assert out_duration == pytest.approx(in_duration - want[0], abs=AUDIO_PACKET_S)


TIMINGS = {
    # a webcam: microseconds, jitter, a large start (moved to 0)
    "camera": (Fraction(1, 1_000_000), [5_000_000 + i * 33_333 + (i % 3) * 4_000 for i in range(12)]),
    # NTSC film rate: a time base whose numerator is not 1
    "ntsc": (Fraction(1001, 30000), list(range(12))),
}


@pytest.mark.parametrize("timing", TIMINGS)
@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".webm", ".mkv"])
def test_other_time_bases_keep_relative_timing(tmp_path, suffix, timing):
    from streamer.sources.base import SourceInfo

    tb, pts = TIMINGS[timing]
    info = SourceInfo(width=64, height=48, fps=30.0, time_base=tb, frame_count=None, live=timing == "camera")
    sink = open_sink(tmp_path / f"t{suffix}", info=info)
    for i, p in enumerate(pts):
        image = torch.from_numpy(pattern(i, SIZE))
        sink.write(Frame(image=image, pts=p, time_base=tb, index=i, captured_at=0.0, output=image))
    sink.close()
    got = seconds(tmp_path / f"t{suffix}")
    np.testing.assert_allclose(got, [float((p - pts[0]) * tb) for p in pts], atol=0.0011)


AUDIO_SOURCES = {
    "opus": ("libopus", ".webm"),
    "flac": ("flac", ".mkv"),
    "aac": ("aac", ".mp4"),
    "pcm": ("pcm_s16le", ".mov"),
}


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".webm", ".mkv"])
@pytest.mark.parametrize("kind", AUDIO_SOURCES)
def test_every_sound_reaches_every_container(tmp_path, kind, suffix):
    """MOV's muxer refuses Opus and FLAC (MP4 only) though it lists them: a browser's WebM with Opus
    into the README's ProRes .mov failed the whole job at the end. A codec the container takes is
    copied, any other re-encoded."""
    codec, source_suffix = AUDIO_SOURCES[kind]
    clip = make_clip(tmp_path / f"src{source_suffix}", frames=10, audio_codec=codec)
    out = tmp_path / f"out{suffix}"
    transcode(clip, out)
    assert len(read_video(out)[0]) == 10
    packets, duration = count_audio(out)
    assert packets > 0 and duration == pytest.approx(count_audio(clip)[1], abs=AUDIO_PACKET_S)


def test_no_audio_when_turned_off_or_absent(vfr_clip, tmp_path):
    transcode(vfr_clip, tmp_path / "mute.mp4", audio=False)
    assert count_audio(tmp_path / "mute.mp4") == (0, 0.0)
    silent = make_clip(tmp_path / "silent.mkv", frames=4, audio=False)
    transcode(silent, tmp_path / "silent_out.mov")
    assert count_audio(tmp_path / "silent_out.mov") == (0, 0.0)
    assert len(read_video(tmp_path / "silent_out.mov")[0]) == 4


def test_odd_size_and_missing_pts_are_handled(tmp_path):
    info = open_source(str(make_clip(tmp_path / "src.mkv", frames=2, audio=False))).info
    sink = VideoFileSink(tmp_path / "odd.mp4", info=info)
    for i in range(3):
        image = torch.from_numpy(pattern(i, (33, 21)))
        sink.write(
            Frame(image=image, pts=None, time_base=info.time_base, index=i, captured_at=0.0, output=image)
        )
    sink.close()
    frames, pts, _ = read_video(tmp_path / "odd.mp4")
    assert frames[0].shape == (20, 32, 3) and len(frames) == 3
    assert pts == sorted(set(pts))


def test_existing_output_needs_overwrite(vfr_clip, tmp_path):
    out = tmp_path / "exists.webm"
    out.write_bytes(b"old")
    info = open_source(str(vfr_clip)).info
    with pytest.raises(MediaError) as excinfo:
        open_sink(out, info=info)
    assert one_line_error(excinfo) == f"output exists: {out} (pass --overwrite to replace it)"
    transcode(vfr_clip, out, stop_after=3, overwrite=True)
    assert len(read_video(out)[0]) == 3


def test_unknown_extension_lists_supported_ones(vfr_clip, tmp_path):
    with pytest.raises(MediaError) as excinfo:
        open_sink(tmp_path / "out.avi", info=open_source(str(vfr_clip)).info)
    message = one_line_error(excinfo)
    assert "out.avi" in message and all(s in message for s in (".mp4", ".mov", ".webm", ".mkv", "%05d.png"))


@pytest.mark.parametrize("name", ["out.mp4", "frames/"])
def test_unwritable_folder_is_one_line_error(vfr_clip, tmp_path, name):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")  # root ignores permissions; a file in the way stops anyone
    with pytest.raises(MediaError) as excinfo:
        open_sink(f"{blocker}/{name}", info=open_source(str(vfr_clip)).info)
    assert one_line_error(excinfo).startswith("cannot write to folder")


def test_unreadable_audio_source_fails_cleanly(tmp_path):
    from streamer.sources.base import SourceInfo

    info = SourceInfo(64, 48, 25.0, Fraction(1, 25), 3, False, audio_path=str(tmp_path / "gone.mp4"))
    sink = open_sink(tmp_path / "a.mp4", info=info)
    image = torch.from_numpy(pattern(0, SIZE))
    with pytest.raises(MediaError) as excinfo:
        sink.write(
            Frame(image=image, pts=0, time_base=Fraction(1, 25), index=0, captured_at=0.0, output=image)
        )
    assert "gone.mp4" in one_line_error(excinfo)
    sink.close()
    assert not (tmp_path / "a.mp4").exists()


def test_close_is_idempotent_and_empty_sink_writes_nothing(vfr_clip, tmp_path):
    sink = open_sink(tmp_path / "empty.mkv", info=open_source(str(vfr_clip)).info)
    sink.close()
    sink.close()
    assert not Path(tmp_path / "empty.mkv").exists()


def test_params_validate_and_options_pass_through(vfr_clip, tmp_path):
    with pytest.raises(ConfigError):
        OutputParams(crf=99)
    with pytest.raises(ConfigError):
        OutputParams(preset="fastest")
    sink = open_sink(tmp_path / "q.mp4", info=open_source(str(vfr_clip)).info, crf=30, preset="ultrafast")
    assert sink.params == OutputParams(crf=30, preset="ultrafast")


def test_output_is_written_under_a_partial_name_and_renamed_when_complete(vfr_clip, tmp_path):
    out = tmp_path / "a.mp4"
    source = open_source(str(vfr_clip))
    sink = open_sink(out, info=source.info)
    for frame in source.frames():
        frame.output = frame.image
        sink.write(frame)
        assert not out.exists() and (tmp_path / "a.partial.mp4").exists()
    sink.close()
    assert out.exists() and not (tmp_path / "a.partial.mp4").exists()
    assert len(read_video(out)[0]) == 30


def test_a_killed_runs_partial_is_kept_aside_and_a_live_one_is_refused(vfr_clip, tmp_path):
    import fcntl

    info = open_source(str(vfr_clip)).info
    leftover = tmp_path / "b.partial.mkv"
    leftover.write_bytes(b"frames of a killed run")
    (tmp_path / "b.interrupted.mkv").write_bytes(b"an older one")
    transcode(vfr_clip, tmp_path / "b.mkv")
    assert (tmp_path / "b.interrupted-2.mkv").read_bytes() == b"frames of a killed run"
    assert (tmp_path / "b.interrupted.mkv").read_bytes() == b"an older one"
    assert len(read_video(tmp_path / "b.mkv")[0]) == 30

    # A partial locked by a running job is that job's: refused, nothing moved.
    leftover.write_bytes(b"being written")
    with open(leftover, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(MediaError) as err:
            open_sink(tmp_path / "b.mkv", info=info, overwrite=True)
    assert "being written by another streamer job" in one_line_error(err)
    assert leftover.read_bytes() == b"being written"


def test_png_sequence_removes_half_written_images_of_a_killed_run(vfr_clip, tmp_path):
    (tmp_path / "f_00003.png.partial").write_bytes(b"half an image")
    (tmp_path / "notes.partial").write_bytes(b"not ours")
    sink = transcode(vfr_clip, f"{tmp_path}/f_%05d.png", stop_after=2)
    assert sink.frames_written == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f_00000.png", "f_00001.png", "notes.partial"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_full_disk_is_one_line_error_while_writing_and_closing(vfr_clip, tmp_path, suffix):
    # /dev/full answers every write with ENOSPC: a real full disk, under the name being written.
    out = tmp_path / f"a{suffix}"
    source = open_source(str(vfr_clip))
    sink = open_sink(out, info=source.info)
    (tmp_path / f"a.partial{suffix}").symlink_to("/dev/full")
    errors = []
    for frame in source.frames():
        frame.output = frame.image
        try:
            sink.write(frame)
        except MediaError as err:
            errors.append(err)
            break
    with pytest.raises(MediaError) as closing:
        sink.close()
    # The container's own trailer fails too, after the flush: the flush's error is the one told.
    assert "check the free disk space" in one_line_error(closing)
    assert closing.value.__cause__ is not None
    assert all("check the free disk space" in str(err) for err in errors)
    assert not out.exists()


def test_two_outputs_of_one_job_on_one_file_or_device_are_refused(tmp_path):
    from streamer.sinks.paths import refuse_repeated_outputs

    (tmp_path / "a.mkv").write_bytes(b"")
    (tmp_path / "link.mkv").symlink_to(tmp_path / "a.mkv")
    for specs in (
        [f"{tmp_path}/a.mkv", f"{tmp_path}/link.mkv"],
        [f"{tmp_path}/b.mp4", f"{tmp_path}/sub/../b.mp4"],
        ["vcam", f"{tmp_path}/c.mov", "vcam"],
        [f"{tmp_path}/f_%05d.png", f"{tmp_path}/f_%05d.png"],
    ):
        with pytest.raises(MediaError) as err:
            refuse_repeated_outputs(specs)
        assert "is given twice" in one_line_error(err)
    refuse_repeated_outputs([f"{tmp_path}/a.mkv", f"{tmp_path}/a.mp4", "vcam", f"{tmp_path}/frames/"])


@pytest.mark.parametrize("preset", ["veryfast", "medium"])
def test_live_presets_encode_vp9_in_realtime_mode_and_every_frame_survives(vfr_clip, tmp_path, preset):
    """VP9's 'good' mode kept 15-18 of 30 fps in a live 720p recording on a 2-core CPU: the
    presets live jobs use switch it to libvpx's realtime mode; the file stays complete."""
    from streamer.sinks.video_file import FORMATS, codec_options

    options = codec_options(FORMATS[".webm"], 3, OutputParams(preset=preset))
    live = preset == "veryfast"
    assert (options["deadline"], options["cpu-used"]) == (("realtime", "8") if live else ("good", "4"))
    assert codec_options(FORMATS[".mp4"], 3, OutputParams(preset=preset))["preset"] == preset
    out = tmp_path / "out.webm"
    transcode(vfr_clip, out, preset=preset)
    assert seconds(out) and len(seconds(out)) == len(seconds(vfr_clip))


def test_each_recording_says_what_lets_it_keep_up_with_a_live_source(tmp_path):
    from streamer.sources.base import SourceInfo

    info = SourceInfo(64, 48, 30.0, Fraction(1, 30), None, True)
    advice = {suffix: VideoFileSink(tmp_path / f"o{suffix}", info=info).keep_up for suffix in FORMATS}
    assert "output.preset=ultrafast" in advice[".mp4"]
    assert advice[".mov"].startswith("ProRes is too slow")
    assert advice[".webm"] == advice[".mkv"] == "use a smaller camera size"
    frames = PngSequenceSink(f"{tmp_path}/")
    assert "video file" in frames.keep_up
    # The summary names a PNG recording by its pattern, as it names a video by its file.
    assert frames.path == f"{tmp_path}/{DEFAULT_PATTERN}"
