"""The live page in a real Chromium: camera -> `streamer serve` -> composited video back.

Chromium's fake camera feeds getUserMedia; the result <video> is drawn into a canvas and its
pixels are read back. Uses Debian's /usr/bin/chromium (never `playwright install`).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # A name for this machine as another device would use it: plain http under it is not a
    # secure context, so the browser offers no camera there.
    "--host-resolver-rules=MAP other-device.test 127.0.0.1",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]

# Mean colour of the result <video>, drawn into a canvas; null until a frame has been decoded.
READ_PIXELS = """() => {
  const video = document.getElementById("result");
  if (video.readyState < 2 || !video.videoWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  context.drawImage(video, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) sum[c] += data[i + c];
  const n = data.length / 4;
  return { width: canvas.width, height: canvas.height, mean: sum.map((s) => s / n) };
}"""


def shows_colour(test: str) -> str:
    """A page predicate: the result's mean colour (r, g, b) passes `test`, a JS expression. Waiting
    on it lets a control change take as long as a loaded machine needs to reach the picture."""
    return f"(() => {{ const p = ({READ_PIXELS})(); if (!p) return false; const [r, g, b] = p.mean; return {test}; }})()"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ADMIN_TOKEN = "browser-test-admin-0123456789"


@pytest.fixture
def server(recipe_weights, tmp_path):
    """A real `streamer serve` process: lite recipe weights at 64x64, mode color magenta, all
    background; an admin token, and a folder holding one yellow picture."""
    from PIL import Image

    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    Image.new("RGB", (64, 48), (255, 255, 0)).save(backgrounds / "yellow.png")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "streamer",
        "serve",
        "--port",
        str(port),
        "--variant",
        "lite",
        "--weights",
        str(recipe_weights("lite")),
        "--size",
        "64",
        "--device",
        "cpu",
        "--mode",
        "color",
        "--color",
        "magenta",
        "--smoothing",
        "off",
        # The recipe network's alpha stays well below 1, so this threshold makes the whole frame
        # background: every pixel must then be the chosen colour, whatever the camera shows.
        "--set",
        "composite.threshold=1.0",
        "--admin-token",
        ADMIN_TOKEN,
        "--backgrounds",
        str(backgrounds),
        "--allowed-host",
        "other-device.test",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            log.seek(0)
            assert process.poll() is None, f"streamer serve exited: {log.read()}"
            assert time.monotonic() < deadline, "streamer serve did not start in 60 s"
            time.sleep(0.2)
    yield url
    process.terminate()
    try:
        assert process.wait(timeout=15) == 143, "streamer serve did not shut down cleanly (SIGTERM: 143)"
    finally:
        process.kill()
        log.close()


ATTACK = """<!doctype html><script>
// What any web page can do without a CORS preflight: a POST with a form-like content type.
window.attack = (peer) => fetch("%s/params", {
  method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
  body: JSON.stringify({peer, composite: {color: "#00ffff"}}),
});
</script>"""


@contextlib.contextmanager
def other_site(folder: Path, target: str):
    """A page served from another origin (another port) that posts to `target`."""
    site = folder / "site"
    site.mkdir()
    (site / "index.html").write_text(ATTACK % target)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_page_connects_and_shows_the_composite(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS
        )
        try:
            page = context.new_page()
            page.goto(f"{server}/#admin={ADMIN_TOKEN}")
            page.wait_for_function("window.streamer && window.streamer.state.config !== null")
            # The operator's page: the token leaves the address bar, the shared size shows.
            assert page.evaluate("location.hash") == "" and page.is_visible("#size")
            page.click("#start")
            page.wait_for_function(
                "document.getElementById('status').textContent === 'connected'", timeout=20000
            )
            # Full background whatever the matte: every pixel must be the chosen magenta.
            page.wait_for_function(f"({READ_PIXELS})() !== null", timeout=20000)
            page.wait_for_timeout(1000)
            pixels = page.evaluate(READ_PIXELS)
            assert (pixels["width"], pixels["height"]) == (640, 480)
            red, green, blue = pixels["mean"]
            assert red > 220 and green < 35 and blue > 220, pixels
            # Another site (another port is another origin) cannot change it: the browser sends the
            # form-like request, the server refuses it, and the picture stays magenta.
            with other_site(tmp_path, server) as attacker:
                evil = context.new_page()
                evil.goto(attacker)
                with evil.expect_response(lambda r: r.url.endswith("/params")) as refused:
                    evil.evaluate(
                        "(peer) => window.attack(peer)", page.evaluate("window.streamer.state.peer")
                    )
                assert refused.value.status == 403
                evil.close()
            page.wait_for_timeout(1000)
            red, green, blue = page.evaluate(READ_PIXELS)["mean"]
            assert red > 220 and green < 35 and blue > 220
            # A control change reaches this peer without reconnecting.
            page.evaluate("window.streamer.sendControls({composite: {color: '#00ffff'}})")
            page.wait_for_function(shows_colour("r < 35 && g > 220 && b > 220"), timeout=20000)
            # A picture from the operator's folder, picked by name.
            page.select_option("#named-background", "yellow.png")
            page.wait_for_function(shows_colour("r > 220 && g > 220 && b < 35"), timeout=20000)
            # The shared model size, with the operator's token (at most --max-size: the starting 64).
            assert page.eval_on_selector_all("#size option", "(o) => o.map((e) => e.value)") == ["32", "64"]
            page.select_option("#size", "32")
            page.wait_for_function("document.querySelector('[data-stat=size]')?.textContent === '32x32'")
            page.wait_for_function("document.querySelector('[data-stat=fps]')?.textContent > 0")
            # The keyframe interval is a control of the page too; the stats show the network's rate.
            page.fill("#propagation-keyframe_every", "3")
            page.dispatch_event("#propagation-keyframe_every", "change")
            ask = "window.streamer.postJSON('/params', {peer: window.streamer.state.peer})"
            deadline = time.monotonic() + 10
            while page.evaluate(ask)["propagation"]["keyframe_every"] != 3:
                assert time.monotonic() < deadline, "the keyframe interval never reached the server"
                page.wait_for_timeout(100)
            page.wait_for_function("document.querySelector('[data-stat=keyframe_hz]')?.textContent > 0")
            assert float(page.text_content("[data-stat=infer_ms]")) > 0
            # The browser decoded what the server's own VP8 encoder (streamer.live.aiortc_compat) sent.
            assert page.text_content("[data-stat=video]") == "VP8 (streamer encoder)"
            page.click("#stop")
            page.wait_for_function("document.getElementById('status').textContent === 'idle'")
            # The page opened from another device over plain http: no camera, and it says why.
            remote = context.new_page()
            remote.goto(server.replace("127.0.0.1", "other-device.test"))
            remote.wait_for_function("window.streamer && window.streamer.state.config !== null")
            assert remote.evaluate("window.isSecureContext") is False
            remote.click("#start")
            remote.wait_for_function("document.getElementById('error').textContent.includes('https')")
            assert "127.0.0.1" in remote.text_content("#error")
        finally:
            context.close()
