"""Sources: video files (pts, VFR, rotation, damage), image folders, webcams (stubbed), open_source."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from media import make_clip, one_line_error, pattern, read_video, square_position, truncate
from PIL import Image

from streamer.errors import ConfigError, DeviceError, MediaError
from streamer.sources.images import ImageSource, ImageSourceParams
from streamer.sources.open import kind_of, open_source
from streamer.sources.video import VideoSource, VideoSourceParams
from streamer.sources.webcam import WebcamSource


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {
        "mp4": make_clip(root / "clip.mp4"),
        "mkv": make_clip(root / "clip.mkv", frames=40),
        "vfr": make_clip(root / "vfr.mp4", vfr=True),
        "silent": make_clip(root / "silent.mp4", frames=5, audio=False),
        "rotated": make_clip(root / "rotated.mp4", frames=3, rotate=-90),
    }


def test_video_file_yields_every_frame_in_order_with_file_pts(clips):
    _, want_pts, want_tb = read_video(clips["mp4"])
    source = open_source(str(clips["mp4"]))
    assert isinstance(source, VideoSource)
    frames = list(source.frames())
    info = source.info
    assert (info.width, info.height, info.fps, info.frame_count, info.live) == (64, 48, 25.0, 30, False)
    assert info.audio_path == str(clips["mp4"])
    assert [f.pts for f in frames] == want_pts
    assert all(f.time_base == want_tb == info.time_base for f in frames)
    assert [f.index for f in frames] == list(range(30))
    assert [square_position(f.image.numpy()) for f in frames] == [
        square_position(pattern(i, (64, 48))) for i in range(30)
    ]
    assert frames[0].image.dtype.is_floating_point is False and tuple(frames[0].image.shape) == (48, 64, 3)


def test_variable_frame_rate_pts_come_from_the_file(clips):
    frames = list(open_source(str(clips["vfr"])).frames())
    seconds = [f.time for f in frames]
    gaps = np.round(np.diff(seconds), 4)
    assert len(frames) == 30
    assert set(gaps.tolist()) == {0.04, 0.08, 0.12}  # not synthesised from the index


def test_b_frames_come_out_in_presentation_order(tmp_path):
    clip = make_clip(tmp_path / "b.mp4", frames=24, audio=False, options={"preset": "medium", "bf": "3"})
    with av.open(str(clip)) as container:  # the clip really has frames stored out of order
        dts_order = [p.pts for p in container.demux(container.streams.video[0]) if p.pts is not None]
    assert dts_order != sorted(dts_order)
    frames = list(open_source(str(clip)).frames())
    assert [f.pts for f in frames] == sorted(dts_order)
    assert [square_position(f.image.numpy()) for f in frames] == [
        square_position(pattern(i, (64, 48))) for i in range(24)
    ]


def test_live_override_uses_slice_threads_and_keeps_a_files_audio(clips):
    file_source = open_source(str(clips["mp4"]))
    live_source = open_source(str(clips["mp4"]), live=True)
    assert file_source._stream.thread_type.name == "AUTO"  # frame threads for throughput
    assert live_source._stream.thread_type.name == "SLICE"  # no added latency
    assert live_source.info.live and live_source.info.frame_count is None
    # A file played as a camera can be opened again for its audio (a live stream cannot).
    assert live_source.info.audio_path == str(clips["mp4"])
    assert len(list(live_source.frames())) == 30
    file_source.close()


def test_no_audio_stream_means_no_audio_path(clips):
    assert open_source(str(clips["silent"])).info.audio_path is None


def test_rotation_metadata_turns_the_picture_upright(clips):
    stored = read_video(clips["rotated"])[0][0]  # 64x48 as encoded
    source = open_source(str(clips["rotated"]))
    image = next(iter(source.frames())).image.numpy()
    source.close()
    assert (source.info.width, source.info.height) == (48, 64)
    assert image.shape == (64, 48, 3)
    # A clockwise quarter turn (display matrix -90, the old `rotate=90` tag): the stored
    # bottom-left corner ends up top-left.
    np.testing.assert_array_equal(image, np.rot90(stored, -1))


def test_truncated_file_yields_what_decodes(clips, tmp_path):
    damaged = truncate(clips["mkv"], tmp_path / "cut.mkv", 0.6)
    source = open_source(str(damaged))
    frames = list(source.frames())
    assert 0 < len(frames) < 40
    assert [f.index for f in frames] == list(range(len(frames)))
    expected, decoded = source.damage.truncated  # Matroska: the track's DURATION tag
    assert decoded == pytest.approx(len(frames) / 25) and expected > decoded


@pytest.mark.parametrize("fraction", [0.5, 0.02])
def test_truncated_file_without_usable_frames_is_one_line_error(clips, tmp_path, fraction):
    source = clips["mp4"] if fraction == 0.5 else clips["mkv"]  # mp4: index at the end, so nothing decodes
    damaged = truncate(source, tmp_path / f"cut{source.suffix}", fraction)
    with pytest.raises(MediaError) as excinfo:
        list(open_source(str(damaged)).frames())
    assert "cut" in one_line_error(excinfo)


def test_not_a_video_and_missing_file_are_one_line_errors(tmp_path):
    junk = tmp_path / "notes.mp4"
    junk.write_text("not a video at all\n" * 20)
    with pytest.raises(MediaError) as excinfo:
        open_source(str(junk))
    assert "notes.mp4" in one_line_error(excinfo)
    with pytest.raises(MediaError) as excinfo:
        open_source(str(tmp_path / "missing.mov"))
    assert one_line_error(excinfo).startswith("input not found: ")


def test_close_from_another_thread_stops_iteration(clips):
    import threading

    source = open_source(str(clips["mkv"]))
    seen = 0
    for _ in source.frames():
        seen += 1
        if seen == 3:
            closer = threading.Thread(target=source.close)
            closer.start()
            closer.join()
    assert 3 <= seen <= 4
    source.close()  # twice is fine


def test_video_source_params_validate():
    with pytest.raises(ConfigError):
        VideoSourceParams(timeout=0)


def write_images(folder, sizes):
    folder.mkdir(exist_ok=True)
    for i, size in enumerate(sizes):
        Image.fromarray(pattern(i, size)).save(folder / f"shot{i + 1}.png")
    return folder


def test_image_folder_is_naturally_sorted_at_fixed_fps(tmp_path):
    folder = write_images(tmp_path / "shots", [(32, 24)] * 11)
    (folder / "readme.txt").write_text("ignored")
    source = open_source(str(folder), fps=12.5)
    assert isinstance(source, ImageSource)
    frames = list(source.frames())
    assert source.info.frame_count == 11 and source.info.fps == 12.5 and not source.info.live
    assert source.info.time_base == Fraction(2, 25)
    assert [f.pts for f in frames] == list(range(11))
    assert frames[10].time == pytest.approx(10 / 12.5)
    # shot2 before shot10: frame i shows pattern i
    assert [square_position(f.image.numpy()) for f in frames] == [
        square_position(pattern(i, (32, 24))) for i in range(11)
    ]


def test_image_glob_and_single_image(tmp_path):
    folder = write_images(tmp_path / "g", [(32, 24)] * 3)
    assert len(list(open_source(str(folder / "shot[12].png")).frames())) == 2
    single = list(open_source(str(folder / "shot3.png")).frames())
    assert len(single) == 1 and single[0].pts == 0
    assert ImageSource(str(folder)).info.fps == 25.0


def test_images_of_other_sizes_are_resized_to_the_first(tmp_path):
    folder = write_images(tmp_path / "mixed", [(32, 24), (64, 40), (16, 16)])
    frames = list(open_source(str(folder)).frames())
    assert [tuple(f.image.shape) for f in frames] == [(24, 32, 3)] * 3


def test_exif_orientation_is_applied(tmp_path):
    stored = pattern(0, (32, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display", as phones write it
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = next(iter(open_source(str(tmp_path / "phone.jpg")).frames())).image.numpy()
    assert image.shape == (32, 24, 3)
    assert np.abs(image.astype(int) - np.rot90(stored, -1)).mean() < 6


def test_unreadable_image_is_skipped_and_named(tmp_path):
    folder = write_images(tmp_path / "bad", [(32, 24)] * 2)
    (folder / "shot3.png").write_bytes(b"\x89PNG broken")
    source = open_source(str(folder))
    frames = list(source.frames())
    assert [f.pts for f in frames] == [0, 1]  # the skipped image's time slot stays empty
    assert source.damage.files_lost == ["shot3.png"]
    assert "1 of 3 images" in source.damage.summary() and "shot3.png" in source.damage.summary()


def test_folder_of_only_unreadable_images_is_one_line_error(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"not an image")
    with pytest.raises(MediaError) as excinfo:
        open_source(str(folder))
    assert "none of the 2 images" in one_line_error(excinfo)


def test_empty_folder_and_bad_fps_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError) as excinfo:
        open_source(str(tmp_path / "empty"))
    assert "no images" in one_line_error(excinfo)
    with pytest.raises(ConfigError):
        ImageSourceParams(fps=0)


class StubCapture:
    """Stands in for cv2.VideoCapture: BGR frames, then failures when `frames` runs out."""

    def __init__(self, frames, opened=True):
        self.frames = list(frames)
        self.opened = opened
        self.released = 0
        self.props = {3: 32.0, 4: 24.0, 5: 30.0}

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.opened

    def read(self):
        if not self.frames:
            return False, None
        return True, self.frames.pop(0)

    def set(self, prop, value):
        self.props[prop] = float(value)
        return True

    def get(self, prop):
        return self.props.get(prop, 0.0)

    def release(self):
        self.released += 1


def test_webcam_converts_bgr_to_rgb_with_clock_pts():
    bgr = np.zeros((24, 32, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    stub = StubCapture([bgr] * 3)
    source = WebcamSource("webcam:0", capture=stub)
    assert source.info.live and source.info.time_base == Fraction(1, 1_000_000)
    assert (source.info.width, source.info.height, source.info.fps) == (32, 24, 30.0)
    frames = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == 3:
            source.close()
    assert frames[0].pts == 0 and frames[0].pts < frames[1].pts < frames[2].pts
    assert frames[0].image[0, 0].tolist() == [0, 0, 200]
    assert stub.released >= 1


def test_webcam_applies_requests():
    from streamer.sources.webcam import WebcamParams

    stub = StubCapture([])
    source = WebcamSource("/dev/video0", WebcamParams(width=640, height=480, fps=15), capture=stub)
    assert (source.info.width, source.info.height, source.info.fps) == (640, 480, 15.0)


def test_missing_camera_is_one_line_device_error():
    with pytest.raises(DeviceError) as excinfo:
        WebcamSource("webcam:0", capture=StubCapture([], opened=False))
    assert one_line_error(excinfo).startswith("no camera at webcam:0: check it is connected")


@pytest.mark.parametrize(
    ("spec", "cameras", "hint"),
    [
        # A laptop's camera has a second node (metadata): webcam:1 is not the next camera.
        ("webcam:1", ["webcam:0", "webcam:2"], "or pass webcam:0 or webcam:2"),
        ("/dev/video4", ["webcam:0", "webcam:4"], "or pass webcam:0"),
        ("webcam:0", [], "no other camera is connected (`streamer doctor` lists them)"),
        ("webcam:0", None, "or pass webcam:1, webcam:2, ..."),
    ],
)
def test_a_missing_camera_names_the_ones_that_are_here(spec, cameras, hint):
    from streamer.sources.webcam import missing_camera

    assert missing_camera(spec, cameras).endswith(f"; {hint}")


def test_the_cameras_here_are_read_from_the_video_devices(tmp_path, monkeypatch):
    import streamer.doctor
    from streamer.sources.webcam import cameras_here

    devices = [
        streamer.doctor.VideoDevice("/dev/video0", "Integrated Camera", False, True, True),
        streamer.doctor.VideoDevice("/dev/video1", "Integrated Camera", False, False, True),
        streamer.doctor.VideoDevice("/dev/video10", "streamer", True, False, True),
    ]
    monkeypatch.setattr(streamer.doctor, "video_devices", lambda: devices)
    monkeypatch.setattr("sys.platform", "linux")
    assert cameras_here() == ["webcam:0"]


def test_camera_that_stops_delivering_is_an_error():
    source = WebcamSource("webcam:2", capture=StubCapture([np.zeros((24, 32, 3), np.uint8)]))
    with pytest.raises(DeviceError) as excinfo:
        list(source.frames())
    assert "webcam:2" in one_line_error(excinfo)


def test_bad_webcam_spec_is_config_error():
    with pytest.raises(ConfigError):
        open_source("webcam:front")


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("webcam:1", "webcam"),
        ("/dev/video2", "webcam"),
        ("rtsp://cam.local/stream", "video"),
        ("https://example.com/a.png", "video"),
        ("frames/*.jpg", "images"),
        ("photo.JPG", "images"),
        ("movie.mkv", "video"),
    ],
)
def test_kind_of_spec(spec, kind):
    assert kind_of(spec) == kind


def test_a_folder_of_clips_points_to_batch(tmp_path):
    make_clip(tmp_path / "take1.mp4", frames=2, audio=False)
    with pytest.raises(MediaError) as excinfo:
        open_source(str(tmp_path))
    assert one_line_error(excinfo) == (
        f"{tmp_path} holds videos, not images: matte each with `streamer batch {tmp_path} -o OUT_DIR`"
    )
    (tmp_path / "notes.txt").write_text("no pictures here")
    (tmp_path / "take1.mp4").unlink()
    with pytest.raises(MediaError, match="no images found in"):
        open_source(str(tmp_path))
