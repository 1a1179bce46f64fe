"""A user-space stand-in for a v4l2loopback device, so pyvirtualcam's real native backend can be tested.

pyvirtualcam's Linux backend opens the device, asks VIDIOC_QUERYCAP for driver "v4l2 loopback" with
V4L2_CAP_VIDEO_OUTPUT, sets the format with VIDIOC_S_FMT and then write()s raw frames. This module
serves a FUSE filesystem with one file, `video0`, that answers those ioctls and records what is
written. The filesystem must run in another process: the native backend's write() holds the GIL, so
a FUSE server in the same interpreter would deadlock.

Run as `python fake_v4l2.py MOUNTPOINT RECORD_DIR [--discard]`; `FakeV4l2Device` does that for tests.
Records in RECORD_DIR: `formats.jsonl` (one line per S_FMT) and `writes.bin` + `writes.jsonl` (every
write's offset, size and time.monotonic(), which is the same clock in every process). With
`--discard` (long soaks: `keep=False`) writes are accepted and not recorded.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

# ioctl numbers from <linux/videodev2.h> on 64-bit Linux: _IOR('V', 0, v4l2_capability) and
# _IOWR('V', 4/5/6, v4l2_format); the sizes (104, 208) are encoded in them.
VIDIOC_QUERYCAP = 0x80685600
VIDIOC_G_FMT = 0xC0D05604
VIDIOC_S_FMT = 0xC0D05605
VIDIOC_TRY_FMT = 0xC0D05640
V4L2_CAP_VIDEO_OUTPUT = 0x00000002
V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_READWRITE = 0x01000000
V4L2_CAP_STREAMING = 0x04000000
V4L2_CAP_DEVICE_CAPS = 0x80000000
V4L2_BUF_TYPE_VIDEO_OUTPUT = 2

FOURCC_BPP = {"YU12": 12, "NV12": 12, "YUYV": 16, "UYVY": 16, "GREY": 8}


class V4l2Capability(ctypes.Structure):
    _fields_ = [
        ("driver", ctypes.c_char * 16),
        ("card", ctypes.c_char * 32),
        ("bus_info", ctypes.c_char * 32),
        ("version", ctypes.c_uint32),
        ("capabilities", ctypes.c_uint32),
        ("device_caps", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 3),
    ]


class V4l2PixFormat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint32)
        for name in (
            "width",
            "height",
            "pixelformat",
            "field",
            "bytesperline",
            "sizeimage",
            "colorspace",
            "priv",
            "flags",
            "ycbcr_enc",
            "quantization",
            "xfer_func",
        )
    ]


class V4l2Format(ctypes.Structure):
    # The kernel's union is 200 bytes and 8-byte aligned (v4l2_window holds pointers).
    _fields_ = [("type", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("pix", V4l2PixFormat)]


V4L2_FORMAT_SIZE = 208
assert ctypes.sizeof(V4l2Capability) == 104


def fourcc_text(code: int) -> str:
    return code.to_bytes(4, "little").decode("ascii", "replace")


def fuse_missing_reason() -> str | None:
    """Why a FUSE mount cannot work here, or None when it should."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (FUSE is not available in this kernel/container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if ctypes.util.find_library("fuse") is None:
        return "libfuse2 is missing (apt-get install -y libfuse2)"
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError) as err:
        return f"fusepy cannot be used: {err} (pip install fusepy)"
    return None


def serve(mountpoint: str, record_dir: str, keep_data: bool = True) -> None:
    """Serve the fake device until SIGTERM/SIGINT (libfuse unmounts on the way out)."""
    from fuse import FUSE, FuseOSError, Operations

    record = Path(record_dir)
    data_file = open(record / "writes.bin", "wb")  # noqa: SIM115 (lives as long as the server)
    log_file = open(record / "writes.jsonl", "w")  # noqa: SIM115
    fmt_file = open(record / "formats.jsonl", "w")  # noqa: SIM115
    state = {"fmt": V4l2PixFormat()}

    class FakeV4l2(Operations):
        use_ns = True

        def getattr(self, path, fh=None):
            now = time.time_ns()
            times = {"st_atime": now, "st_mtime": now, "st_ctime": now}
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
            if path == "/video0":
                return {"st_mode": stat.S_IFREG | 0o666, "st_nlink": 1, "st_size": 0, **times}
            raise FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):
            return [".", "..", "video0"]

        def open(self, path, flags):
            if path != "/video0":
                raise FuseOSError(errno.ENOENT)
            return 0

        def truncate(self, path, length, fh=None):
            return 0

        def read(self, path, size, offset, fh):
            return b""

        def write(self, path, data, offset, fh):
            if keep_data:
                data_file.write(data)
                data_file.flush()
                log_file.write(
                    json.dumps({"offset": offset, "size": len(data), "t": time.monotonic()}) + "\n"
                )
                log_file.flush()
            return len(data)

        def ioctl(self, path, cmd, arg, fh, flags, data):
            if cmd == VIDIOC_QUERYCAP:
                caps = V4l2Capability(
                    driver=b"v4l2 loopback",
                    card=b"streamer fake",
                    bus_info=b"platform:v4l2loopback-000",
                    version=0x00060000,
                    capabilities=V4L2_CAP_VIDEO_OUTPUT
                    | V4L2_CAP_READWRITE
                    | V4L2_CAP_STREAMING
                    | V4L2_CAP_DEVICE_CAPS,
                    device_caps=V4L2_CAP_VIDEO_OUTPUT | V4L2_CAP_READWRITE | V4L2_CAP_STREAMING,
                )
                ctypes.memmove(data, ctypes.byref(caps), ctypes.sizeof(caps))
                return 0
            if cmd in (VIDIOC_S_FMT, VIDIOC_TRY_FMT, VIDIOC_G_FMT):
                fmt = V4l2Format.from_buffer_copy(ctypes.string_at(data, V4L2_FORMAT_SIZE))
                if fmt.type != V4L2_BUF_TYPE_VIDEO_OUTPUT:
                    raise FuseOSError(errno.EINVAL)
                if cmd == VIDIOC_G_FMT:
                    fmt.pix = state["fmt"]
                else:
                    pix = fmt.pix
                    bpp = FOURCC_BPP.get(fourcc_text(pix.pixelformat))
                    if bpp is None:
                        raise FuseOSError(errno.EINVAL)
                    # What v4l2loopback fills in for the writer.
                    pix.bytesperline = pix.width * bpp // 8 if bpp == 16 else pix.width
                    pix.sizeimage = pix.width * pix.height * bpp // 8
                    if cmd == VIDIOC_S_FMT:
                        state["fmt"] = V4l2PixFormat.from_buffer_copy(pix)
                        entry = {
                            "width": pix.width,
                            "height": pix.height,
                            "fourcc": fourcc_text(pix.pixelformat),
                            "sizeimage": pix.sizeimage,
                        }
                        fmt_file.write(json.dumps(entry) + "\n")
                        fmt_file.flush()
                ctypes.memmove(data, ctypes.byref(fmt), V4L2_FORMAT_SIZE)
                return 0
            raise FuseOSError(errno.ENOTTY)

    # direct_io: every write reaches us at once, not through the page cache.
    FUSE(FakeV4l2(), mountpoint, foreground=True, nothreads=True, direct_io=True, fsname="fake_v4l2")


def _unmount(mountpoint: str) -> None:
    for cmd in (["fusermount", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        if shutil.which(cmd[0]):
            subprocess.run(cmd, capture_output=True, check=False)
            if not os.path.ismount(mountpoint):
                return


class FakeV4l2Device:
    """Context manager: mounts the fake device in `root` and exposes what was written to it."""

    def __init__(self, root: Path, keep: bool = True):
        self.keep = keep
        self.mountpoint = root / "mnt"
        self.record_dir = root / "record"
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self.device = str(self.mountpoint / "video0")
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> FakeV4l2Device:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, str(self.mountpoint), str(self.record_dir)]
            + ([] if self.keep else ["--discard"]),
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 15
        while not os.path.ismount(self.mountpoint):
            if self._proc.poll() is not None:
                raise RuntimeError(f"fake v4l2 server exited: {self._proc.stderr.read().strip()}")
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("fake v4l2 filesystem did not mount within 15 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if os.path.ismount(self.mountpoint):
            _unmount(str(self.mountpoint))
        with contextlib.suppress(OSError):
            proc.stderr.close()

    def formats(self) -> list[dict]:
        """Every VIDIOC_S_FMT received, in order."""
        path = self.record_dir / "formats.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def frames(self, frame_size: int) -> list[tuple[bytes, float]]:
        """Whole frames written so far, with the time their last byte arrived.

        Writes are reassembled by file offset, since FUSE may split one write() into chunks.
        """
        log = [json.loads(line) for line in (self.record_dir / "writes.jsonl").read_text().splitlines()]
        data = (self.record_dir / "writes.bin").read_bytes()
        stream = bytearray()
        done_at: list[float] = []
        pos = 0
        for entry in log:
            chunk = data[pos : pos + entry["size"]]
            pos += entry["size"]
            end = entry["offset"] + entry["size"]
            if len(stream) < end:
                stream.extend(bytes(end - len(stream)))
            stream[entry["offset"] : end] = chunk
            while (len(done_at) + 1) * frame_size <= end:
                done_at.append(entry["t"])
        return [(bytes(stream[i * frame_size : (i + 1) * frame_size]), t) for i, t in enumerate(done_at)]


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], keep_data="--discard" not in sys.argv[3:])
