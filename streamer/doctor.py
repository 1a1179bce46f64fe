"""Checks a user runs before going live (`streamer doctor`): plain functions returning `Check`s.

Required checks (a FAIL makes `streamer doctor` exit 1): Python version, torch, PyAV, the libx264
encoder (the default file output) and OpenCV. Everything else (GPU, cached weights, virtual
camera, webcams, the other codecs, aiortc) only warns: a missing piece disables one feature, and
the line says how to add it.
"""

from __future__ import annotations

import importlib
import os
import platform
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streamer import __version__

OK, WARN, FAIL = "OK", "WARN", "FAIL"
CPU_ADVICE = (
    "CPU only: for live jobs use --config live-cpu (the lite network on keyframes, optical flow for"
    " every camera frame); for files --variant lite --size 512x512 is ~3x faster than portrait"
)
MODPROBE = "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=streamer"
OBS_FIX = "install OBS Studio, start its Virtual Camera once and stop it again"
DEFAULT_VARIANTS = ("portrait", "lite")
CODECS = {
    "libx264": "H.264 .mp4 output (the default)",
    "prores_ks": "ProRes 4444 .mov output with alpha",
    "libvpx-vp9": "VP9 .webm output with alpha",
    "aac": "audio kept in .mp4/.mov",
    "libopus": "audio kept in .webm",
}
REQUIRED_CODECS = ("libx264",)
AV_FIX = "pip install --force-reinstall av (the PyPI wheels include it)"

# <linux/videodev2.h>: _IOR('V', 0, struct v4l2_capability), 104 bytes.
VIDIOC_QUERYCAP = 0x80685600
V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
V4L2_CAP_DEVICE_CAPS = 0x80000000


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None
    required: bool = False

    @property
    def failed_required(self) -> bool:
        return self.required and self.status == FAIL

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix and self.status != OK else ""
        return f"{self.status:<4}  {self.name:<12} {self.detail}{fix}"


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except Exception:  # a broken install raises anything, not only ImportError
        return None


# --- environment ----------------------------------------------------------------------------------


def check_python() -> Check:
    py = platform.python_version()
    if sys.version_info < (3, 10):  # noqa: UP036 (a source checkout can be run by any Python)
        return Check("python", FAIL, f"Python {py} is too old", "use Python 3.10 to 3.13", required=True)
    return Check("python", OK, f"Python {py}, streamer {__version__}", required=True)


def check_torch() -> Check:
    version = _version("torch")
    if version is None:
        return Check("torch", FAIL, "torch is not importable", "pip install torch", required=True)
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gib = props.total_memory / 2**30
        return Check("torch", OK, f"torch {version}, CUDA: {props.name} ({gib:.1f} GiB)", required=True)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return Check("torch", OK, f"torch {version}, Apple MPS", required=True)
    return Check("torch", WARN, f"torch {version}, {CPU_ADVICE}", required=True)


def check_cpu_backend(bf16: bool | None = None) -> Check:
    """What `--backend auto` runs on the CPU, and in which precision by default."""
    from streamer.backends import cache_root, openvino_available

    if not openvino_available():
        return Check(
            "cpu backend",
            WARN,
            "OpenVINO is not installed: the CPU runs the network with torch (about 2-4x slower)",
            "pip install openvino (wheels for x86_64 and arm64 Linux, Windows, macOS)",
        )
    try:
        from streamer.backends.openvino import cpu_has_bf16

        version = (_version("openvino") or "?").split("-")[0]
        bf16 = cpu_has_bf16() if bf16 is None else bf16
    except Exception as err:  # a broken install raises anything
        return Check(
            "cpu backend", WARN, f"OpenVINO is installed but fails: {err}", "pip install -U openvino"
        )
    cache = cache_root() / "openvino"
    if bf16:
        detail = "runs bfloat16 by default (--dtype float32 is the exact path)"
    else:
        detail = "this CPU has no bfloat16, so the default CPU path is float32 (the exact path)"
    return Check("cpu backend", OK, f"OpenVINO {version}: {detail}; converted networks in {cache}")


def check_opencv() -> Check:
    version = _version("cv2")
    if version is None:
        return Check(
            "opencv", FAIL, "cv2 is not importable", "pip install opencv-python-headless", required=True
        )
    return Check("opencv", OK, f"OpenCV {version} (webcams, resizing)", required=True)


def check_aiortc() -> Check:
    version = _version("aiortc")
    if version is None:
        return Check(
            "aiortc", WARN, "aiortc is not importable: no browser camera or WebRTC", "pip install aiortc"
        )
    return Check("aiortc", OK, f"aiortc {version} (browser camera, WebRTC preview)")


# --- media ----------------------------------------------------------------------------------------


def check_pyav() -> Check:
    version = _version("av")
    if version is None:
        return Check("pyav", FAIL, "PyAV is not importable: no video files", "pip install av", required=True)
    import av

    ffmpeg = getattr(av, "ffmpeg_version_info", "?")
    return Check("pyav", OK, f"PyAV {version} (FFmpeg {ffmpeg})", required=True)


def check_codecs() -> Iterator[Check]:
    try:
        import av
    except Exception:
        return
    for name, purpose in CODECS.items():
        required = name in REQUIRED_CODECS
        try:
            av.codec.Codec(name, "w")
        except Exception:
            yield Check(
                f"{name}", FAIL if required else WARN, f"encoder missing: no {purpose}", AV_FIX, required
            )
        else:
            yield Check(f"{name}", OK, purpose, required=required)


# --- weights --------------------------------------------------------------------------------------


def check_weights(cache_dir: Path | None = None) -> Iterator[Check]:
    try:
        from huggingface_hub import try_to_load_from_cache

        from streamer.model.birefnet import VARIANTS
        from streamer.model.weights import FILENAME, hub_cache_dir
    except Exception as err:  # torch or huggingface_hub broken: reported by their own lines
        yield Check(
            "weights", WARN, f"cannot look for weights: {err}", "pip install -e . (reinstall streamer)"
        )
        return
    cache = cache_dir or hub_cache_dir()
    existing = next((p for p in (cache, *cache.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK):
        yield Check("hf cache", WARN, f"{cache} is not writable", "set HF_HOME to a writable folder")
    else:
        yield Check("hf cache", OK, f"{cache} (weights cache; HF_HOME moves it)")
    for variant in DEFAULT_VARIANTS:
        repo = VARIANTS[variant].repo_id
        path = try_to_load_from_cache(repo, FILENAME, cache_dir=str(cache))
        if isinstance(path, str):
            yield Check("weights", OK, f"{variant}: {repo} cached at {path}")
        else:
            yield Check(
                "weights",
                WARN,
                f"{variant}: {repo}/{FILENAME} is not cached (the first run downloads it)",
                f"hf download {repo} {FILENAME}",
            )


# --- video devices --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoDevice:
    node: str
    name: str
    loopback: bool
    capture: bool
    accessible: bool


def _querycap(node: str) -> tuple[str, int] | None:
    """(driver, device caps) of a V4L2 node, or None when it cannot be opened or asked."""
    import fcntl  # Unix only; this module is also imported on Windows

    try:
        fd = os.open(node, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        buf = bytearray(104)
        fcntl.ioctl(fd, VIDIOC_QUERYCAP, buf)
    except OSError:
        return None
    finally:
        os.close(fd)
    driver = bytes(buf[:16]).split(b"\0")[0].decode(errors="replace")
    caps, device_caps = struct.unpack_from("<II", buf, 84)
    return driver, device_caps if caps & V4L2_CAP_DEVICE_CAPS else caps


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def video_devices(sysfs: str = "/sys/class/video4linux", dev: str = "/dev") -> list[VideoDevice]:
    """V4L2 nodes, told apart by asking the driver when possible and by sysfs otherwise."""
    entries = sorted(
        Path(sysfs).glob("video*"), key=lambda p: int(p.name[5:] or 0) if p.name[5:].isdigit() else 0
    )
    found = []
    for entry in entries:
        node = os.path.join(dev, entry.name)
        name = _read(entry / "name")
        caps = _querycap(node)
        if caps is not None:
            driver, device_caps = caps
            loopback = driver == "v4l2 loopback"
            capture = bool(device_caps & (V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_VIDEO_CAPTURE_MPLANE))
        else:
            # v4l2loopback nodes hang off /sys/devices/virtual; its default label is "Dummy video device".
            real = os.path.realpath(entry)
            loopback = "/virtual/" in real or "loopback" in name.lower() or name.startswith("Dummy video")
            # A webcam's second node (index 1) carries metadata, not pictures.
            capture = _read(entry / "index") in ("", "0")
        accessible = os.access(node, os.R_OK | os.W_OK)
        found.append(VideoDevice(node, name, loopback, capture and not loopback, accessible))
    return found


def _describe(devices: list[VideoDevice]) -> str:
    return ", ".join(f"{d.node} ({d.name or '?'})" for d in devices)


def check_vcam(devices: list[VideoDevice] | None = None, system: str | None = None) -> Check:
    system = system or platform.system()
    if system != "Linux":
        return _check_obs_camera()
    loopbacks = [d for d in (video_devices() if devices is None else devices) if d.loopback]
    if not loopbacks:
        return Check("vcam", WARN, "no v4l2loopback device: no virtual camera output", MODPROBE)
    usable = [d for d in loopbacks if d.accessible]
    if not usable:
        return Check(
            "vcam",
            WARN,
            f"{_describe(loopbacks)}: no permission",
            "sudo usermod -a -G video $USER, then log out and in",
        )
    return Check("vcam", OK, f"virtual camera: {_describe(usable)}")


def _check_obs_camera() -> Check:
    try:
        import pyvirtualcam

        with pyvirtualcam.Camera(width=64, height=48, fps=5) as cam:
            return Check("vcam", OK, f"virtual camera: {cam.device} ({cam.backend})")
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return Check("vcam", WARN, f"no virtual camera ({first})", OBS_FIX)


def check_webcams(devices: list[VideoDevice] | None = None, system: str | None = None) -> Check:
    system = system or platform.system()
    fix = "plug in a camera, or use a video file or the browser camera (streamer serve)"
    if system != "Linux":
        return Check("webcam", OK, f"not listed on {system}; `--source webcam:0` opens the first camera")
    cams = [d for d in (video_devices() if devices is None else devices) if d.capture]
    if not cams:
        return Check("webcam", WARN, "no webcam found", fix)
    return Check("webcam", OK, _describe(cams))


# --- all of it ------------------------------------------------------------------------------------


def run_checks() -> Iterator[Check]:
    """Every check in the order printed; names are looked up now so tests can replace them."""
    yield check_python()
    yield check_torch()
    yield check_cpu_backend()
    yield from check_weights()
    yield check_opencv()
    yield check_pyav()
    yield from check_codecs()
    devices = video_devices() if platform.system() == "Linux" else []
    yield check_vcam(devices)
    yield check_webcams(devices)
    yield check_aiortc()


Printer = Callable[[str], None]


def report(checks: Iterator[Check], out: Printer = print) -> int:
    """Print one line per check and a verdict; 0 when every required check passed."""
    failed, warnings = [], 0
    for check in checks:
        out(check.line())
        warnings += check.status == WARN
        if check.failed_required:
            failed.append(check.name)
    if failed:
        out(f"not ready: required check(s) failed: {', '.join(failed)}")
        return 1
    out(f"ready: all required checks passed ({warnings} warning{'s' * (warnings != 1)})")
    return 0
