"""The --preview sink: the output as an MJPEG stream on 127.0.0.1."""

import socket
import urllib.error
import urllib.request
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from streamer.errors import DeviceError
from streamer.frame import Frame
from streamer.sinks.preview import PreviewSink


def frame_of(output: np.ndarray) -> Frame:
    image = torch.zeros((*output.shape[:2], 3), dtype=torch.uint8)
    return Frame(image, 0, Fraction(1, 30), 0, 0.0, output=torch.from_numpy(output))


def get(url: str, limit: int | None = None) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return reply.status, reply.headers["Content-Type"], reply.read(limit) if limit else reply.read()


@pytest.fixture
def sink():
    preview = PreviewSink(port=0)
    yield preview
    preview.close()


def test_serves_the_newest_frame_on_loopback(sink):
    assert sink.url.startswith("http://127.0.0.1:")
    with pytest.raises(urllib.error.HTTPError, match="503"):
        get(sink.url + "frame.jpg")
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = 255
    sink.write(frame_of(red))
    blue = np.zeros((48, 64, 3), np.uint8)
    blue[..., 2] = 255
    sink.write(frame_of(blue))
    status, kind, body = get(sink.url + "frame.jpg")
    assert status == 200 and kind == "image/jpeg"
    bgr = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert bgr.shape == (48, 64, 3)
    assert bgr[..., 0].mean() > 200 and bgr[..., 2].mean() < 40  # blue, the newest frame
    status, kind, page = get(sink.url)
    assert b'src="/stream"' in page


def test_stream_is_multipart_jpeg_and_matte_and_rgba_show(sink):
    sink.write(frame_of(np.full((32, 32, 1), 200, np.uint8)))
    status, kind, head = get(sink.url + "stream", limit=64)
    assert kind.startswith("multipart/x-mixed-replace")
    assert head.startswith(b"--streamer-frame\r\nContent-Type: image/jpeg")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[:, :16, 3] = 255  # left half opaque green, right half transparent (black)
    sink.write(frame_of(rgba))
    bgr = cv2.imdecode(np.frombuffer(get(sink.url + "frame.jpg")[2], np.uint8), cv2.IMREAD_COLOR)
    assert bgr[:, :12, 1].mean() > 200 and bgr[:, 20:, 1].mean() < 40


def test_busy_port_is_a_one_line_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(
            DeviceError, match=rf"cannot serve the preview on 127.0.0.1:{port}: .*--preview-port"
        ):
            PreviewSink(port=port)


def test_close_ends_open_streams():
    sink = PreviewSink(port=0)
    sink.write(frame_of(np.zeros((8, 8, 3), np.uint8)))
    reply = urllib.request.urlopen(sink.url + "stream", timeout=30)
    reply.read(16)
    sink.close()
    sink.close()  # idempotent
    assert reply.read() is not None  # the stream ends instead of hanging


def test_transparency_shows_the_given_background():
    import numpy as np

    from streamer.sinks.preview import to_bgr

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 255)  # opaque white; the rest fully transparent
    bgr = to_bgr(rgba, (0, 255, 0))
    assert bgr[0, 0].tolist() == [255, 255, 255] and bgr[1, 1].tolist() == [0, 255, 0]
    assert to_bgr(rgba)[1, 1].tolist() == [0, 0, 0]


def request(sink: PreviewSink, method: str, path: str, host: str | None) -> tuple[int, bytes]:
    import http.client
    from urllib.parse import urlsplit

    port = urlsplit(sink.url).port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def test_only_this_servers_own_names_see_the_frames(sink):
    # DNS rebinding: a page on attacker.example, its name re-pointed at 127.0.0.1, reads same-origin.
    sink.write(frame_of(np.full((16, 16, 3), 90, np.uint8)))
    port = sink.url.rsplit(":", 1)[1].strip("/")
    for host in ("attacker.example", f"attacker.example:{port}", "", None, "a b"):
        status, body = request(sink, "GET", "/frame.jpg", host)
        assert status == 403, (host, status)
        assert sink.url.encode() in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert request(sink, "GET", "/frame.jpg", host)[0] == 200, host


def test_other_methods_are_refused_not_unimplemented(sink):
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        assert request(sink, method, "/", f"127.0.0.1:{sink.url.rsplit(':', 1)[1].strip('/')}")[0] == 405
