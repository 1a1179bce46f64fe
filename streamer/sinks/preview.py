"""A preview window that needs no GUI toolkit: the output as an MJPEG stream in a browser tab.

`streamer run ... --preview` adds this sink next to the real one (a virtual camera, say), so
a user can watch the result while a call app holds the camera. It serves on 127.0.0.1 only
unless told otherwise, keeps just the newest frame (a slow viewer never slows the pipeline),
and stops with the job.
"""

from __future__ import annotations

import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from streamer.errors import DeviceError
from streamer.frame import Frame
from streamer.live.http_guard import names_this_server

_PAGE = b"""<!doctype html><meta charset="utf-8"><title>streamer preview</title>
<style>body{margin:0;background:#222;display:grid;place-items:center;height:100vh}
img{max-width:100vw;max-height:100vh}</style><img src="/stream" alt="streamer output">"""
_BOUNDARY = "streamer-frame"


def to_bgr(output: np.ndarray, background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """uint8 (H, W, C) with C = 1, 3 (RGB) or 4 (RGBA) -> BGR for JPEG (transparency shows `background`)."""
    if output.shape[-1] == 1:
        return cv2.cvtColor(output, cv2.COLOR_GRAY2BGR)
    if output.shape[-1] == 4:
        alpha = output[..., 3:4].astype(np.uint16)
        under = np.array(background, np.uint16) * (255 - alpha)
        rgb = (output[..., :3].astype(np.uint16) * alpha + under) // 255
        return cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(output, cv2.COLOR_RGB2BGR)


class PreviewSink:
    realtime = True
    label = "the preview"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8090,
        quality: int = 80,
        background: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        self.quality = quality
        self.background = background
        """What transparent pixels show (the colour composite when RGBA was picked for other outputs)."""
        self._jpeg: bytes | None = None
        self._serial = 0
        self._closed = False
        self._changed = threading.Condition()
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler_class())
        except OSError as err:
            raise DeviceError(
                f"cannot serve the preview on {host}:{port}: {err.strerror} (pass --preview-port with a free port)"
            ) from None
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="streamer-preview", daemon=True
        )
        self._thread.start()

    def write(self, frame: Frame) -> None:
        ok, data = cv2.imencode(
            ".jpg", to_bgr(frame.output.numpy(), self.background), [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        )
        if ok:
            with self._changed:
                self._jpeg, self._serial = data.tobytes(), self._serial + 1
                self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def _next(self, seen: int) -> tuple[bytes | None, int]:
        """The newest frame after `seen`, waiting up to a second; (None, seen) once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._serial != seen, timeout=1.0)
            if self._closed:
                return None, seen
            return self._jpeg, self._serial

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the terminal for the job's own output
                pass

            def do_GET(self) -> None:
                # Only by this server's own address: a page on another name that resolves here
                # (DNS rebinding) must not read the camera's frames.
                host = self.headers.get("Host")
                if not names_this_server(host, self.connection.getsockname()[0]):
                    message = f"Host {str(host)[:80]!r} is not this preview's address: open {sink.url}\n"
                    self._send(HTTPStatus.FORBIDDEN, "text/plain", message.encode())
                elif self.path == "/":
                    self._send(HTTPStatus.OK, "text/html; charset=utf-8", _PAGE)
                elif self.path == "/frame.jpg":
                    jpeg = sink._jpeg
                    if jpeg is None:
                        self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
                    else:
                        self._send(HTTPStatus.OK, "image/jpeg", jpeg)
                elif self.path == "/stream":
                    self._stream()
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found: try /\n")

            def _refuse_method(self) -> None:
                self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"the preview only answers GET\n")

            do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _refuse_method

            def _send(self, status: HTTPStatus, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seen = -1
                try:
                    while True:
                        jpeg, seen = sink._next(seen)
                        if jpeg is None:
                            if sink._closed:
                                return
                            continue
                        head = f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                        self.wfile.write(head.encode() + jpeg + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    return  # the tab was closed

        return Handler
