"""Virtual camera sink, through pyvirtualcam's real v4l2loopback backend and a FUSE fake device."""

from __future__ import annotations

import glob
import threading
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fake_v4l2 import FakeV4l2Device, fuse_missing_reason

from streamer.errors import ConfigError, DeviceError
from streamer.frame import Frame
from streamer.sinks.vcam import VcamParams, VcamSink, explain, fit_to, open_vcam, to_rgb

W, H = 64, 48
DECODE = {
    "rgb": cv2.COLOR_YUV2RGB_I420,
    "i420": cv2.COLOR_YUV2RGB_I420,
    "nv12": cv2.COLOR_YUV2RGB_NV12,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
}
FOURCC = {"rgb": "YU12", "bgr": "YU12", "i420": "YU12", "nv12": "NV12", "yuyv": "YUYV", "uyvy": "UYVY"}


@pytest.fixture
def fake_device(tmp_path):
    reason = fuse_missing_reason()
    if reason:
        pytest.skip(f"no FUSE for the fake v4l2 device: {reason}")
    with FakeV4l2Device(tmp_path) as device:
        yield device


def frame_of(output: np.ndarray, index: int = 0) -> Frame:
    rgb = output[..., :3] if output.shape[2] >= 3 else np.repeat(output, 3, axis=2)
    return Frame(
        image=torch.from_numpy(np.ascontiguousarray(rgb)),
        pts=index,
        time_base=Fraction(1, 30),
        index=index,
        captured_at=time.monotonic(),
        output=torch.from_numpy(output),
    )


def blocks(seed: int, width: int = W, height: int = H, channels: int = 3) -> np.ndarray:
    """Flat 8x8 colour blocks: 2x2 chroma subsampling keeps them exact up to rounding."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8, width // 8, channels), dtype=np.uint8)
    return np.ascontiguousarray(small.repeat(8, axis=0).repeat(8, axis=1))


def decode(raw: bytes, fmt: str, width: int = W, height: int = H) -> np.ndarray:
    data = np.frombuffer(raw, np.uint8)
    if fmt == "gray":
        return np.repeat(data.reshape(height, width, 1), 3, axis=2)
    if fmt in ("yuyv", "uyvy"):
        return cv2.cvtColor(data.reshape(height, width, 2), DECODE[fmt])
    return cv2.cvtColor(data.reshape(height * 3 // 2, width), DECODE.get(fmt, cv2.COLOR_YUV2RGB_I420))


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def matches(delivered: list[np.ndarray], candidates: list[np.ndarray]) -> list[int]:
    """Index of the candidate each delivered frame is closest to, consecutive repeats collapsed."""
    order: list[int] = []
    for image in delivered:
        errors = [diff(image, c) for c in candidates]
        best = int(np.argmin(errors))
        assert errors[best] < 3.0, f"delivered frame matches nothing sent (best error {errors[best]:.1f})"
        if not order or order[-1] != best:
            order.append(best)
    return order


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    """Poll `condition` (the timeout only stops a broken test, it is no speed requirement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def test_frames_reach_the_device_in_order_with_their_content(fake_device):
    sent = [blocks(i) for i in range(5)]
    sink = open_vcam(VcamParams(device=fake_device.device), width=W, height=H, fps=20)
    try:
        assert sink.device == fake_device.device and sink.backend == "v4l2loopback"
        for i, image in enumerate(sent):
            sink.write(frame_of(image, i))
            # Each frame is delivered before the next is written (however slow the machine).
            wait_until(lambda: not sink._fresh, f"frame {i} never went to the device")
    finally:
        sink.close()
    sink.close()  # idempotent

    assert fake_device.formats() == [{"width": W, "height": H, "fourcc": "YU12", "sizeimage": W * H * 3 // 2}]
    raw = fake_device.frames(W * H * 3 // 2)
    assert len(raw) == sink.stats.sent
    delivered = [decode(data, "rgb") for data, _ in raw]
    black = np.zeros((H, W, 3), np.uint8)
    order = matches(delivered, [black, *sent])
    # The placeholder (flatten colour) may show before the first write; then every frame, in order.
    assert [i for i in order if i] == [1, 2, 3, 4, 5]
    assert sink.stats.written == 5 and sink.stats.replaced == 0


class SteppedTime:
    """The sender thread's clock and sleep: it sleeps until the test moves time past its deadline,
    so every camera tick happens at a known instant whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 0.0
        self.stop = threading.Event()
        self.sleeps = 0
        self._until: float | None = None
        self._cond = threading.Condition()

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:  # the sender thread
        with self._cond:
            self._until = self.now + seconds
            self.sleeps += 1
            self._cond.notify_all()
            while self.now < self._until and not self.stop.is_set():
                self._cond.wait(0.05)
            self._until = None
            return self.stop.is_set()

    def run_to(self, t: float) -> None:
        """Every tick due up to `t` happens, in order; returns with the sender asleep."""
        with self._cond:
            while True:
                assert self._cond.wait_for(lambda: self._until is not None, 20), "the sender never slept"
                if self._until > t:
                    self.now = t
                    return
                self.now, slept = self._until, self.sleeps
                self._cond.notify_all()
                assert self._cond.wait_for(lambda s=slept: self.sleeps > s, 20), (
                    "the sender never slept again"
                )


def test_camera_is_fed_at_its_fps_when_writes_are_slower(fake_device):
    fps, steps = 20, SteppedTime()
    sink = VcamSink(
        VcamParams(width=W, height=H, fps=fps, device=fake_device.device), clock=steps.clock, wait=steps.wait
    )
    steps.stop = sink._stop
    ticks = []
    try:
        for i in range(6):  # inference at 4 fps
            steps.run_to(0.25 * i + 0.01)
            ticks.append(sink.stats.sent)
            sink.write(frame_of(blocks(i), i))  # returns at once: the test thread is the clock
        steps.run_to(1.51)
    finally:
        sink.close()
    # One send every 1/20 s of the camera's clock, t = 0, 0.05, ... 1.50, repeats in between.
    assert sink.stats.sent == 31 and ticks == [1, 6, 11, 16, 21, 26]
    assert sink.stats.repeated == 31 - 6 and sink.stats.late == 0 and sink.stats.replaced == 0
    delivered = [decode(data, "rgb") for data, _ in fake_device.frames(W * H * 3 // 2)]
    black = np.zeros((H, W, 3), np.uint8)
    seen = [matches([picture], [black, *(blocks(i) for i in range(6))])[0] for picture in delivered]
    assert seen == [0] + [1 + i for i in range(6) for _ in range(5)]


def test_after_a_stalled_send_missed_ticks_are_skipped_not_burst(fake_device):
    steps = SteppedTime()
    sink = VcamSink(
        VcamParams(width=W, height=H, fps=20, device=fake_device.device), clock=steps.clock, wait=steps.wait
    )
    steps.stop = sink._stop
    send = sink._camera.send

    def slow_send(data):  # the tick at 0.2 takes 0.17 s (a busy machine, a slow device)
        send(data)
        if steps.now == pytest.approx(0.2):
            steps.now += 0.17

    try:
        steps.run_to(0.11)
        sink._camera.send = slow_send
        steps.run_to(0.61)
    finally:
        sink.close()
    # Ticks 0..0.2 on time; the send ends at 0.37: 0.25 and 0.3 are skipped, the one due at 0.35
    # goes at once, then 0.4 .. 0.6 on the grid again (no burst of catch-up repeats).
    assert sink.stats.late == 2 and sink.stats.sent == 5 + 1 + 5


def test_file_mode_delivers_every_frame_once_at_the_camera_pace(fake_device):
    sent = [blocks(10 + i) for i in range(8)]
    sink = VcamSink(VcamParams(width=W, height=H, fps=50, device=fake_device.device), every_frame=True)
    start = time.monotonic()
    for i, image in enumerate(sent):
        sink.write(frame_of(image, i))
    sink.close()
    elapsed = time.monotonic() - start
    assert elapsed > 6 / 50
    delivered = [decode(data, "rgb") for data, _ in fake_device.frames(W * H * 3 // 2)]
    black = np.zeros((H, W, 3), np.uint8)
    assert [i for i in matches(delivered, [black, *sent]) if i] == list(range(1, 9))
    assert sink.stats.replaced == 0


@pytest.mark.parametrize("fmt", ["bgr", "i420", "nv12", "yuyv", "uyvy", "gray"])
def test_pixel_formats_reach_the_device(fake_device, fmt):
    image = blocks(42)
    sink = VcamSink(
        VcamParams(width=W, height=H, fps=30, device=fake_device.device, fmt=fmt), every_frame=True
    )
    sink.write(frame_of(image))
    sink.close()

    (fmt_record,) = fake_device.formats()
    assert fmt_record["fourcc"] == FOURCC.get(fmt, "GREY")
    raw, _ = fake_device.frames(fmt_record["sizeimage"])[-1]
    got = decode(raw, fmt)
    want = (
        np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2) if fmt == "gray" else image
    )
    assert diff(got, want) < 2.0
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 6


def test_rgba_is_flattened_over_the_colour_and_resized(fake_device):
    rgba = np.zeros((H * 2, W * 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :W, 3] = 255  # left half opaque gray, right half transparent
    params = VcamParams(width=W, height=H, fps=30, device=fake_device.device, flatten_color=(0, 255, 0))
    sink = VcamSink(params, every_frame=True)
    sink.write(frame_of(rgba))
    sink.close()
    got = decode(fake_device.frames(W * H * 3 // 2)[-1][0], "rgb")
    assert diff(got[:, : W // 2 - 2], np.full((H, W // 2 - 2, 3), 200, np.uint8)) < 2
    assert diff(got[:, W // 2 + 2 :], np.broadcast_to(np.uint8([0, 255, 0]), (H, W // 2 - 2, 3))) < 3


def test_to_rgb_handles_matte_rgb_and_rgba():
    matte = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    assert (to_rgb(matte, (0, 0, 0)) == np.repeat(matte, 3, axis=2)).all()
    rgb = blocks(1)
    assert to_rgb(rgb, (9, 9, 9)) is rgb
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[1, 0, 3] = 255, 0, 128
    out = to_rgb(rgba, (10, 20, 30))
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [10, 20, 30]
    assert out[1, 0].tolist() == [55, 60, 65]  # 100*128/255 + c*127/255, rounded


def test_fit_modes():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 255  # a white middle half
    cover = fit_to(image, 40, 40, "cover", (0, 0, 0))
    assert cover.shape == (40, 40, 3) and cover.min() == 255  # cropped to the middle
    contain = fit_to(image, 40, 40, "contain", (1, 2, 3))
    assert contain.shape == (40, 40, 3)
    assert contain[0, 20].tolist() == [1, 2, 3] and contain[20, 20].tolist() == [255, 255, 255]
    stretch = fit_to(image, 40, 40, "stretch", (0, 0, 0))
    assert stretch.shape == (40, 40, 3) and stretch[:, 0].max() == 0 and stretch[:, 20].min() == 255


def test_missing_device_names_the_fix(tmp_path):
    with pytest.raises(DeviceError) as err:
        VcamSink(VcamParams(width=W, height=H, fps=30, device=str(tmp_path / "video7")))
    message = str(err.value)
    assert "\n" not in message
    assert f"virtual camera device not found: {tmp_path / 'video7'}" in message
    assert "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=streamer" in message


def test_no_loopback_at_all_names_the_modprobe_command():
    if glob.glob("/dev/video*"):
        pytest.skip("this machine has /dev/video* devices")
    with pytest.raises(DeviceError) as err:
        open_vcam(VcamParams(), width=640, height=480, fps=30)
    assert str(err.value) == (
        "no virtual camera: v4l2loopback is not loaded "
        "(run: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=streamer)"
    )


def test_a_file_that_is_not_a_camera_is_refused(tmp_path):
    plain = tmp_path / "video0"
    plain.write_bytes(b"")
    with pytest.raises(DeviceError, match=r"^not a virtual camera: .*video0 is not a v4l2loopback device"):
        VcamSink(VcamParams(width=W, height=H, fps=30, device=str(plain)))


def test_other_systems_are_told_to_start_obs():
    message = str(
        explain(RuntimeError("'obs' backend: OBS Virtual Camera is not installed."), None, "Windows")
    )
    assert message.startswith("no virtual camera: OBS Virtual Camera is not available (install OBS Studio")


def test_sender_failure_surfaces_in_write(fake_device):
    sink = VcamSink(VcamParams(width=W, height=H, fps=50, device=fake_device.device))

    def broken(data):
        raise OSError("device vanished")

    sink._camera.send = broken
    wait_until(lambda: sink._error is not None, "the sender never tried the broken device")
    with pytest.raises(DeviceError, match="stopped: device vanished"):
        sink.write(frame_of(blocks(0)))
    sink.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 641}, "vcam.width: bad value 641: expected an even number of pixels"),
        ({"fmt": "rgba"}, "vcam.fmt: bad value 'rgba': expected 'rgb', 'bgr', 'i420', 'nv12', 'yuyv',"),
        ({"backend": "dshow"}, "vcam.backend: bad value 'dshow': expected 'v4l2loopback', 'obs' or"),
        ({"fps": 0}, "vcam.fps: bad value 0: expected above 0"),
        ({"fps": 241}, "vcam.fps: bad value 241: expected at most 240"),
        ({"flatten_color": (0, 0, 300)}, "vcam.flatten_color: bad value (0, 0, 300): expected a colour"),
    ],
)
def test_params_are_validated(kwargs, message):
    with pytest.raises(ConfigError) as err:
        VcamParams(**kwargs)
    assert str(err.value).startswith(message)


def test_open_vcam_takes_the_source_size_rounded_to_even(fake_device):
    sink = open_vcam(VcamParams(device=fake_device.device), width=65, height=49, fps=None)
    try:
        assert (sink.size, sink.fps) == ((64, 48), 30.0)
    finally:
        sink.close()
    assert VcamParams(flatten_color=[1, 2, 3]).flatten_color == (1, 2, 3)
    assert Path(fake_device.device).name == "video0"
