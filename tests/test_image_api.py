"""The image API of `streamer serve` (POST /v1/images/edits, /v1/matte), from clients nobody on
the team wrote: the official `openai` package and plain `curl` against a real
`streamer serve --no-webrtc` (lite recipe weights at 64x64), and aiohttp against the app in
this process for URLs, keys, cross-site requests and the API-only server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from load_serve import free_port, wait_for_port
from PIL import Image
from test_http_fuzz import png_claiming
from test_webrtc import make_server, serving

from streamer.cli import main
from streamer.commands.image import FORMATS

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-api-key-0123456789abcdef"


def picture_bytes(height: int = 48, width: int = 80, seed: int = 1, kind: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    data = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(data, format=kind)
    return data.getvalue()


def form(picture: bytes | None, **fields: str) -> aiohttp.FormData:
    """A multipart form as API clients send it: the picture as a file, then text fields."""
    data = aiohttp.FormData()
    if picture is not None:
        data.add_field("image", picture, filename="picture.png", content_type="image/png")
    for name, value in fields.items():
        data.add_field(name, value)
    return data


def decoded(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture)


def one_line_error(text: str) -> str:
    body = json.loads(text)
    assert set(body) == {"error"} and "\n" not in body["error"], text[:300]
    return body["error"]


# -- a real server: `streamer serve --no-webrtc` ------------------------------------------------
@pytest.fixture(scope="module")
def model_args(recipe_weights):
    weights = str(recipe_weights("lite"))
    return ["--variant", "lite", "--weights", weights, "--size", "64x64", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def api_server(model_args, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("api-server") / "serve.log"
    command = [sys.executable, "-m", "streamer", "serve", "--no-webrtc", "--port", str(port), *model_args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STREAMER_API_KEY": KEY}
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port(port, server, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)
        text = log_path.read_text()
        assert "Traceback" not in text and "ERROR" not in text, text[-3000:]


@pytest.fixture(scope="module")
def picture_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pictures") / "portrait.png"
    path.write_bytes(picture_bytes(96, 72, seed=7))
    return path


@pytest.fixture(scope="module")
def expected(picture_file, recipe_weights):
    """format -> what `streamer image` makes of the picture (its engine and compositors, in this
    process with the server's settings): the API must answer the same pixels."""
    from streamer.commands.image import make_compositor, read_image
    from streamer.engine import EngineParams, MattingEngine

    params = EngineParams(variant="lite", weights=str(recipe_weights("lite")), size=(64, 64), device="cpu")
    engine = MattingEngine.from_params(params)
    image = read_image(picture_file)
    alpha = engine.predict(image)
    pictures = {fmt: make_compositor(fmt, "white", "cpu")(image, alpha, 0.0).numpy() for fmt in FORMATS}
    return {fmt: picture[..., 0] if fmt == "mask" else picture for fmt, picture in pictures.items()}


def test_the_openai_package_gets_the_cutout(api_server, picture_file, expected):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{api_server}/v1", api_key=KEY, max_retries=0)
    with picture_file.open("rb") as image:
        # The SDK insists on a prompt; the server accepts and ignores it.
        result = client.images.edit(model="birefnet-lite", image=image, prompt="remove the background")
    assert len(result.data) == 1 and result.data[0].url is None
    assert result.background == "transparent" and result.output_format == "png"
    cutout = decoded(base64.b64decode(result.data[0].b64_json))
    assert cutout.shape == (96, 72, 4)
    assert np.array_equal(cutout, expected["cutout"])
    assert client.models.list().data[0].id == "birefnet-lite"

    with picture_file.open("rb") as image:
        opaque = client.images.edit(image=image, prompt="", background="opaque")
    assert np.array_equal(decoded(base64.b64decode(opaque.data[0].b64_json)), expected["composite"])


def test_the_openai_package_gets_one_line_refusals(api_server, picture_file, tmp_path):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{api_server}/v1", api_key=KEY, max_retries=0)
    wrong = openai.OpenAI(base_url=f"{api_server}/v1", api_key="not-the-key", max_retries=0)

    def refused(client, status: int, image: Path = picture_file, **kwargs) -> str:
        with pytest.raises(openai.APIStatusError) as caught, image.open("rb") as file:
            client.images.edit(prompt="x", image=file, **kwargs)
        assert caught.value.status_code == status, caught.value
        reason = one_line_error(caught.value.response.text)
        assert caught.value.body == reason  # what the package shows its user as the error's body
        return reason

    assert "API key" in refused(wrong, 401)
    assert "birefnet-lite" in refused(client, 400, model="birefnet-portrait")
    assert "b64_json" in refused(client, 400, response_format="url")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    assert "not a PNG, JPEG" in refused(client, 400, image=notes)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(30_000, 30_000, b""))
    assert "too large" in refused(client, 413, image=bomb)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_multipart(api_server, picture_file, expected, tmp_path):
    def curl(*args: str) -> tuple[int, bytes]:
        out = tmp_path / "answer"
        run = subprocess.run(
            ["curl", "-sS", "-o", str(out), "-w", "%{http_code}", *args], capture_output=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        return int(run.stdout), out.read_bytes()

    auth = ["-H", f"Authorization: Bearer {KEY}"]
    status, body = curl(*auth, "-F", f"image=@{picture_file}", "-F", "format=mask", f"{api_server}/v1/matte")
    assert status == 200
    assert np.array_equal(decoded(body), expected["mask"])

    status, body = curl("-F", f"image=@{picture_file}", f"{api_server}/v1/matte")
    assert status == 401 and "API key" in one_line_error(body.decode())

    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(17 * 1024**2))
    status, body = curl(*auth, "-F", f"image=@{big}", f"{api_server}/v1/matte")
    assert status == 413 and "KiB" in one_line_error(body.decode())

    status, body = curl(*auth, "-F", f"image=@{picture_file}", "-F", "format=sepia", f"{api_server}/v1/matte")
    assert status == 400 and "format" in one_line_error(body.decode())


# -- the app in this process ----------------------------------------------------------------------
async def post(http, url, **kwargs) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    async with http.post(url, **kwargs) as response:
        return response.status, await response.read(), response.headers


@contextlib.asynccontextmanager
async def picture_host(picture: bytes, delay: float = 0.0):
    """A local web server answering /pic.png (after `delay` seconds, or when the block ends);
    records the paths asked for."""
    hits = []
    ending = asyncio.Event()

    async def serve_picture(request):
        hits.append(request.path)
        if delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ending.wait(), delay)
        return web.Response(body=picture, content_type="image/png")

    async def moved(request):
        hits.append(request.path)
        raise web.HTTPFound("/pic.png")

    app = web.Application()
    app.router.add_get("/pic.png", serve_picture)
    app.router.add_get("/moved", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", hits
    finally:
        ending.set()
        await runner.cleanup()


def red_matte(picture: bytes) -> np.ndarray:
    """The test engine's matte: the red channel."""
    return decoded(picture)[..., 0]


async def test_every_way_of_sending_the_picture_gives_the_same_matte():
    picture = picture_bytes()
    b64 = base64.b64encode(picture).decode()
    async with serving(make_server(allow_local_urls=True)) as (http, base):
        async with picture_host(picture) as (host, hits):
            ways = {
                "multipart": {"data": form(picture, format="mask")},
                "raw": {
                    "data": picture,
                    "headers": {"Content-Type": "image/png"},
                    "params": {"format": "mask"},
                },
                "base64": {"json": {"image": b64, "format": "mask"}},
                "data url": {"json": {"url": f"data:image/png;base64,{b64}", "format": "mask"}},
                "url": {"json": {"url": f"{host}/pic.png", "format": "mask"}},
                "redirect": {"json": {"url": f"{host}/moved", "format": "mask"}},
            }
            for way, kwargs in ways.items():
                status, body, headers = await post(http, f"{base}/v1/matte", **kwargs)
                assert status == 200, (way, body[:300])
                assert headers["Content-Type"] == "image/png"
                assert np.array_equal(decoded(body), red_matte(picture)), way
            assert hits == ["/pic.png", "/moved", "/pic.png"]
        status, body, _ = await post(
            http,
            f"{base}/v1/matte",
            json={"image": b64, "format": "composite", "color": "blue", "response_format": "b64_json"},
        )
        reply = json.loads(body)
        assert status == 200 and set(reply) == {"created", "data"}
        composite = decoded(base64.b64decode(reply["data"][0]["b64_json"]))
        assert composite.shape == (48, 80, 3)


async def test_a_url_that_times_out_gets_400():
    server = make_server(allow_local_urls=True, url_timeout=0.3)
    async with serving(server) as (http, base), picture_host(picture_bytes(), delay=30) as (host, hits):
        status, body, _ = await post(http, f"{base}/v1/matte", json={"url": f"{host}/pic.png"})
    assert status == 400 and "within 0.3 s" in one_line_error(body.decode())
    assert hits == ["/pic.png"]


async def test_local_and_private_urls_are_refused_before_connecting():
    async with serving(make_server()) as (http, base), picture_host(picture_bytes()) as (host, hits):
        port = host.rsplit(":", 1)[1]
        for url in (
            f"{host}/pic.png",
            f"http://localhost:{port}/pic.png",
            f"http://[::1]:{port}/pic.png",
            f"http://[::ffff:127.0.0.1]:{port}/pic.png",
            "http://10.1.2.3/pic.png",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0/",
        ):
            status, body, _ = await post(http, f"{base}/v1/matte", json={"url": url})
            assert status == 403, (url, body)
            assert "--allow-local-urls" in one_line_error(body.decode())
        for url in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/", "http://", "data:,"):
            status, body, _ = await post(http, f"{base}/v1/matte", json={"url": url})
            assert status == 400, (url, body)
            one_line_error(body.decode())
        assert hits == []


async def test_the_api_key_guards_every_endpoint():
    async with serving(make_server(api_key=KEY)) as (http, base):
        for method, path in (("POST", "/v1/matte"), ("POST", "/v1/images/edits"), ("GET", "/v1/models")):
            kwargs = (lambda: {"data": form(picture_bytes())}) if method == "POST" else dict
            for auth in (None, "Bearer wrong-key-0123456789abcdef", f"Basic {KEY}", KEY):
                headers = {"Authorization": auth} if auth else {}
                async with http.request(method, base + path, headers=headers, **kwargs()) as response:
                    assert response.status == 401, (path, auth)
                    assert response.headers["WWW-Authenticate"] == "Bearer"
                    one_line_error(await response.text())
            headers = {"Authorization": f"Bearer {KEY}"}
            async with http.request(method, base + path, headers=headers, **kwargs()) as response:
                assert response.status == 200, await response.text()


async def test_cross_site_forms_are_refused():
    """A multipart POST is a form any site can send: without a key, the browser's own headers
    are what refuses it (403), as for every other endpoint."""
    async with serving(make_server()) as (http, base):
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": base},
        ):
            for path in ("/v1/matte", "/v1/images/edits"):
                status, body, _ = await post(http, base + path, data=form(picture_bytes()), headers=headers)
                assert status == 403, (headers, body)
                one_line_error(body.decode())
        status, _, _ = await post(
            http, f"{base}/v1/matte", data=form(picture_bytes()), headers={"Origin": base}
        )
        assert status == 200


async def test_bad_requests_get_one_line():
    async with serving(make_server()) as (http, base):
        picture = picture_bytes()
        for kwargs, status, words in (
            ({"data": form(picture, colour="red")}, 400, "unknown field"),
            ({"json": {"format": "mask"}}, 400, "no picture"),
            ({"json": {"image": "!!!"}}, 400, "base64"),
            ({"json": {"image": 5}}, 400, "base64"),
            ({"json": {"image": "aGk=", "url": "data:,x"}}, 400, "one picture"),
            ({"data": form(picture, format="composite", color="sky")}, 400, "color"),
            ({"data": "x=1", "headers": {"Content-Type": "text/plain"}}, 403, "Content-Type"),
            ({"data": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}, 400, ""),
        ):
            got, body, _ = await post(http, f"{base}/v1/matte", **kwargs)
            assert got == status and words in one_line_error(body.decode()), (kwargs, body)
        for fields, words in (({"n": "2"}, "n:"), ({"size": "512x512"}, "size"), ({"mask": "x"}, "mask")):
            got, body, _ = await post(http, f"{base}/v1/images/edits", data=form(picture, **fields))
            assert got == 400 and words in one_line_error(body.decode()), (fields, body)


async def test_without_webrtc_only_the_api_is_served():
    async with serving(make_server(webrtc=False)) as (http, base):
        for method, path in (("GET", "/"), ("GET", "/config"), ("POST", "/offer"), ("POST", "/params")):
            async with http.request(method, base + path, json={}) as response:
                assert response.status == 404, path
        status, body, _ = await post(http, f"{base}/v1/matte", data=form(picture_bytes(), format="mask"))
        assert status == 200 and np.array_equal(decoded(body), red_matte(picture_bytes()))


def test_serve_refuses_a_short_key_and_source_without_webrtc(capsys):
    assert main(["serve", "--no-webrtc", "--source", "clip.mp4"]) != 0
    assert main(["serve", "--api-key", "short"]) != 0
    err = capsys.readouterr().err.splitlines()
    assert any("--no-webrtc" in line for line in err) and any("api_key" in line for line in err), err
