"""`streamer serve`'s HTTP surface: the exact requests that once gave a 500, read server files,
stalled every peer or were obeyed from another site, each as a regression test; plus the
guard's pieces (JSON limits, picture headers, Host and Origin checks) on their own."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import struct
import zlib

import pytest
from PIL import Image
from test_webrtc import ADMIN, Client, make_server, serving

from streamer.config import parse_colour, parse_size
from streamer.live import http_guard
from streamer.live.http_guard import BadRequest, TooLarge, decode_image, parse_json

pytestmark = pytest.mark.timeout(120)

JSON = {"Content-Type": "application/json"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture
def no_tracebacks(caplog):
    """Fails the test if anything was logged at ERROR or with a traceback."""
    caplog.set_level(logging.WARNING)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny (wrong-sized) data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def png(width: int = 32, height: int = 24, colour=(255, 255, 0)) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(data, format="PNG")
    return data.getvalue()


async def reply_of(response) -> dict:
    text = await response.text()
    body = json.loads(text)
    assert response.status < 500
    if response.status >= 400:
        assert set(body) == {"error"} and "\n" not in body["error"]
        assert 0 < len(body["error"]) <= http_guard.MAX_REASON
    return body


async def still_flowing(client: Client) -> None:
    await asyncio.sleep(0.3)
    await client.wait_frames(2, timeout=20)


# -- the exact cases of the report ----------------------------------------------------------------
async def test_the_requests_that_gave_500_get_a_one_line_400(no_tracebacks):
    async with serving(make_server()) as (http, base):
        client = Client(http, base)
        await client.connect()
        cases = [
            ("/params", b'{"peer": "\xff\xfe"}', 400, "not UTF-8"),
            ("/offer", b"\xff" * 10, 400, "not UTF-8"),
            ("/params", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
            ("/params", b"{" + b'"a":{' * 20 + b"}" * 21, 400, "nested too deeply"),
        ]
        for value in ("Infinity", "-Infinity", "NaN", "1e400", "-1e400"):
            colour = f'{{"peer": "{client.peer}", "composite": {{"color": [{value}, 0, 0]}}}}'
            cases.append(("/params", colour.encode(), 400, "finite"))
            size = f'{{"peer": "{client.peer}", "size": [{value}, 64]}}'
            cases.append(("/params", size.encode(), 400, "finite"))
        for path, body, status, message in cases:
            async with http.post(base + path, data=body, headers={**JSON, **ADMIN}) as response:
                reply = await reply_of(response)
            assert response.status == status and message in reply["error"], (path, body[:60], reply)
        # Huge but finite numbers reach the settings' own checks.
        for body in ({"composite": {"color": [1e300, 0, 0]}}, {"size": [1e300, 64]}, {"size": 10**400}):
            status, reply = await client.post("/params", body, ADMIN)
            assert status == 400, (body, reply)
        async with http.post(
            f"{base}/background", params={"peer": client.peer}, data=png_header(20000, 20000)
        ) as response:
            reply = await reply_of(response)
        assert response.status == 413 and "too large (Image size (400000000 pixels)" in reply["error"]
        await still_flowing(client)
        await client.close()


async def test_no_server_file_is_ever_read_by_path(tmp_path, no_tracebacks):
    async with serving(make_server()) as (http, base):
        client = Client(http, base)
        await client.connect()
        for path in ("/etc/passwd", str(tmp_path), "../../etc/hostname"):
            status, reply = await client.post("/params", {"composite": {"mode": "image", "background": path}})
            assert status == 403 and "upload one" in reply["error"], reply
        await still_flowing(client)
        await client.close()


async def test_backgrounds_are_picked_by_name_from_the_operator_folder(tmp_path, no_tracebacks):
    folder = tmp_path / "backgrounds"
    folder.mkdir()
    (folder / "beach.png").write_bytes(png(colour=(255, 255, 0)))
    (folder / "broken.jpg").write_bytes(png()[:40])  # a cut download
    (folder / "notes.txt").write_text("not a picture")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.png").write_bytes(png())
    (tmp_path / "outside.png").write_bytes(png())
    server = make_server(backgrounds=str(folder))
    async with serving(server) as (http, base):
        async with http.get(base + "/config") as response:
            assert (await response.json())["backgrounds"] == [
                {"name": "beach.png", "mode": "image"},
                {"name": "broken.jpg", "mode": "image"},
            ]
        client = Client(http, base)
        await client.connect()
        for name in ("../outside.png", "sub/deep.png", "notes.txt", str(folder / "beach.png"), 3, [1]):
            status, reply = await client.post("/params", {"composite": {"mode": "image", "background": name}})
            assert (
                status == 400
                and "not one of this server's backgrounds (beach.png, broken.jpg)" in reply["error"]
            )
        # Read when picked: a file that cannot be read is refused and the stream goes on as it was.
        status, reply = await client.post(
            "/params", {"composite": {"mode": "image", "background": "broken.jpg"}}
        )
        assert status == 400 and reply["error"].startswith("composite.background: cannot read"), reply
        assert server.peers[client.peer].finisher.compositor.params.mode == "matte"
        await still_flowing(client)
        # The whole update is validated at once: key order never matters.
        for composite in (
            {"mode": "image", "background": "beach.png"},
            {"background": "beach.png", "mode": "image"},
        ):
            await client.post("/params", {"composite": {"mode": "matte", "background": None}})
            status, reply = await client.post("/params", {"composite": composite})
            assert status == 200 and reply["composite"]["background"] == "beach.png", reply
        params = server.peers[client.peer].finisher.compositor.params
        assert (params.mode, params.background) == ("image", str(folder / "beach.png"))

        def yellow_right_half(picture) -> bool:
            right = picture[:, -40:].reshape(-1, 3).mean(axis=0)
            return right[0] > 200 and right[1] > 200 and right[2] < 60

        # Waits for the change to land (frames composited before it may still be on their way).
        await client.shows(yellow_right_half, "the folder's background")
        await client.close()


async def test_a_bad_update_changes_nothing(no_tracebacks):
    server = make_server()
    async with serving(server) as (http, base):
        client = Client(http, base)
        await client.connect()
        peer = server.peers[client.peer]
        before = (peer.finisher.compositor.params, server.worker.requested_size)
        for body in (
            {"composite": {"mode": "blur", "blur_radius": -1}},
            {"composite": {"mode": "blur"}, "smoothing": {"strength": 2}},
            {"composite": {"mode": "blur"}, "size": 100},
            {"composite": {"mode": "blur"}, "size": 64},  # shared: not without the admin token
            {"composite": {"mode": "blur"}, "colour": "red"},
            {"composite": "blur"},
        ):
            status, reply = await client.post("/params", body)
            assert status in (400, 403), (body, reply)
            assert (peer.finisher.compositor.params, server.worker.requested_size) == before
        await client.close()


async def test_the_shared_model_size_is_the_operators_within_max_size(no_tracebacks):
    server = make_server(max_size="96x128")
    async with serving(server) as (http, base):
        client = Client(http, base)
        await client.connect()
        for body, headers in (({"size": 1048576}, None), ({"size": 1048576}, {"Authorization": "Bearer x"})):
            status, reply = await client.post("/params", body, headers)
            assert status == 403 and "only the operator" in reply["error"]
        status, reply = await client.post("/params", {"size": 1024}, ADMIN)
        assert status == 400 and "over this server's limit of 96x128" in reply["error"]
        status, reply = await client.post("/params", {"size": 1048576}, ADMIN)  # beyond any size at all
        assert status == 400 and "model.size: bad value 1048576: expected a size like" in reply["error"]
        status, reply = await client.post("/params", {"size": [96, 128]}, ADMIN)
        assert status == 200 and reply["size"] == [96, 128]
        await client.wait_frames(2)
        assert server.worker.size == (96, 128)
        await client.close()
    # Without --admin-token nobody changes it over HTTP.
    plain = make_server(admin_token=None)
    async with serving(plain) as (http, base):
        client = Client(http, base)
        await client.connect()
        status, reply = await client.post("/params", {"size": 64}, ADMIN)
        assert status == 403
        await client.close()


async def test_other_sites_cannot_change_or_close_a_stream(no_tracebacks):
    server = make_server()
    async with serving(server) as (http, base):
        client = Client(http, base)
        await client.connect()
        port = base.rsplit(":", 1)[1]
        body = json.dumps({"peer": client.peer, "composite": {"mode": "blur"}})
        refused = [
            # what a form or fetch on any site can send without a preflight
            ("/params", {"Content-Type": "text/plain", "Origin": "https://evil.example"}),
            ("/close", {"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://evil.example"}),
            ("/params", {"Content-Type": "text/plain"}),
            ("/params", {"Content-Type": "application/x-www-form-urlencoded"}),
            ("/close", {"Content-Type": "multipart/form-data; boundary=x"}),
            # JSON, but from another origin (the browser would preflight; a mistaken CORS setup not)
            ("/params", {**JSON, "Origin": "https://evil.example"}),
            ("/params", {**JSON, "Origin": f"http://127.0.0.1:{int(port) + 1}"}),
            ("/params", {**JSON, "Origin": "null"}),
            ("/close", {**JSON, "Sec-Fetch-Site": "cross-site"}),
            ("/close", {**JSON, "Sec-Fetch-Site": "same-site"}),
            # DNS rebinding: the page's name resolves here, but it is not this server's
            ("/close", {**JSON, "Host": f"evil.example:{port}"}),
            ("/params", {**JSON, "Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}),
        ]
        for path, headers in refused:
            async with http.post(base + path, data=body, headers=headers) as response:
                reply = await reply_of(response)
            assert response.status == 403, (path, headers, reply)
        async with http.get(
            base + "/stats", params={"peer": client.peer}, headers={"Host": "evil.example"}
        ) as r:
            assert r.status == 403
        assert (
            client.peer in server.peers
            and server.peers[client.peer].finisher.compositor.params.mode == "matte"
        )
        # The page's own requests pass: same origin, by address or as localhost.
        for headers in (
            {**JSON, "Origin": base, "Sec-Fetch-Site": "same-origin"},
            {**JSON, "Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
        ):
            async with http.post(base + "/params", data=body, headers=headers) as response:
                assert response.status == 200, await response.text()
        await still_flowing(client)
        await client.close()


async def test_peer_ids_are_random_128_bit_tokens():
    server = make_server()
    async with serving(server) as (http, base):
        clients = [Client(http, base) for _ in range(2)]
        for client in clients:
            await client.connect()
        ids = [client.peer for client in clients]
        assert ids[0] != ids[1]
        assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", peer) for peer in ids)  # 16 bytes, base64url
        for client in clients:
            await client.close()


async def test_long_input_is_not_echoed_and_refused_sdp_says_why(no_tracebacks):
    async with serving(make_server()) as (http, base):
        client = Client(http, base)
        await client.connect()
        async with http.post(
            base + "/params", data=b'{"peer": "' + b"x" * 5_000_000 + b'"}', headers=JSON
        ) as r:
            reply = await reply_of(r)
        assert r.status == 413 and "over 256 KiB" in reply["error"]
        status, reply = await client.post("/params", {"composite": {"mode": "y" * 200_000}})
        assert status == 400 and len(reply["error"]) <= http_guard.MAX_REASON and "yyy..." in reply["error"]
        status, reply = await client.post("/stats", {})
        assert status == 405 and reply["error"] == "POST is not accepted by /stats"
        async with http.get(base + "/nothing/here") as r:
            assert r.status == 404 and "no such page" in (await reply_of(r))["error"]
        garbage = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nthis is not sdp\r\n\x00\x01\r\n"
        async with http.post(base + "/offer", json={"sdp": garbage, "type": "offer"}) as r:
            reply = await reply_of(r)
        assert r.status == 400 and "the SDP was refused ()" not in reply["error"]
        assert re.search(r"refused \(.+\)", reply["error"]), reply
        await still_flowing(client)
        await client.close()


# -- the pieces ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc3\x28", "not UTF-8"),
        (b"[1, NaN]", "NaN is not a number JSON allows"),
        (b'{"a": Infinity}', "Infinity is not"),
        (b'{"a": 1e999}', "out of range"),
        (b'{"a": 1' + b"0" * 5000 + b"}", "digits"),
        (b"[" * 9 + b"]" * 9, "nested too deeply"),
        (b'"text"', "must be a JSON object, not str"),
        (b"{", "not valid JSON"),
    ],
)
def test_parse_json_refuses(data, message):
    with pytest.raises(BadRequest, match=message):
        parse_json(data, "/params")


def test_parse_json_takes_a_plain_object():
    assert parse_json(b'{"a": [1, 2.5, {"b": null}]}', "/x") == {"a": [1, 2.5, {"b": None}]}


def test_pictures_are_checked_from_their_header_before_decoding(monkeypatch):
    assert decode_image(png(40, 30)).shape == (30, 40, 3)
    with pytest.raises(TooLarge, match="400000000 pixels"):
        decode_image(png_header(20000, 20000))
    with pytest.raises(TooLarge, match="100000x10"):
        decode_image(png_header(100_000, 10))
    for data in (png_header(8, 8), png()[:60]):
        with pytest.raises(BadRequest, match="not a readable image"):
            decode_image(data)
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")  # readable, but not a kind served over HTTP
    for data in (b"", b"GIF89a", b"%PDF-1.4", tiff.getvalue()):
        with pytest.raises(BadRequest) as refused:
            decode_image(data)
        assert str(refused.value) == (
            "background: not a PNG, JPEG, WebP, GIF or BMP picture; upload a PNG or JPEG file"
        )
    # Under our budget but over Pillow's: its decompression-bomb warning counts as an error.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(TooLarge, match="too large"):
        decode_image(png(20, 20))


def test_large_uploads_are_scaled_down_to_keep():
    wide = png(http_guard.KEEP_SIDE * 2, 16)
    assert decode_image(wide).shape == (8, http_guard.KEEP_SIDE, 3)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e400, "1e400", "inf", [float("inf"), 0, 0]])
def test_colour_and_size_refuse_non_finite_numbers(value):
    with pytest.raises(ValueError):
        parse_colour(value if isinstance(value, list) else [value, 0, 0])
    with pytest.raises(ValueError):
        parse_size(value if isinstance(value, list) else [value, 64])


# -- the operator's options ------------------------------------------------------------------------
def test_serve_options_for_the_http_surface(tmp_path):
    from streamer.cli import build_parser
    from streamer.commands.serve import config_from_args
    from streamer.live.serve import ServeParams

    args = build_parser().parse_args(
        ["serve", "--allowed-host", "Cam.LAN", "--allowed-host", "[::1]", "--max-size", "768"]
        + ["--admin-token", "x" * 16, "--backgrounds", str(tmp_path)]
    )
    assert (args.allowed_host, args.max_size, args.backgrounds) == (
        ["Cam.LAN", "[::1]"],
        "768",
        str(tmp_path),
    )
    params = config_from_args(args).serve
    assert params.allowed_hosts == ("cam.lan", "::1") and params.max_size == (768, 768)
    assert params.admin_token == "x" * 16 and params.backgrounds == str(tmp_path)
    assert ServeParams(allowed_hosts="a.lan, B.lan").allowed_hosts == ("a.lan", "b.lan")  # --set form


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--admin-token", "short"], "serve.admin_token: bad value 'short': expected at least 16 characters"),
        (["--max-size", "huge"], "serve.max_size: bad value 'huge': expected a size like 512x512"),
        (
            ["--allowed-host", "evil.example/x"],
            "serve.allowed_hosts: bad value ['evil.example/x']: expected host",
        ),
        (["--port", "http"], "serve.port: bad value 'http': expected a whole number"),
        (["--set", "serve.port=70000"], "serve.port: bad value '70000': expected at most 65535"),
        (["--backgrounds", "/nowhere/at/all"], "--backgrounds: /nowhere/at/all is not a folder"),
    ],
)
def test_bad_serve_options_stop_with_one_line(argv, message, capsys, tmp_path):
    from streamer.cli import main

    weights = tmp_path / "missing.safetensors"
    assert main(["serve", "--port", "0", "--weights", str(weights), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_allowed_host_names_pass_the_host_check():
    from aiohttp.test_utils import make_mocked_request

    access = http_guard.Access(frozenset({"cam.lan"}))
    for host, allowed in (("cam.lan:8080", True), ("CAM.LAN", True), ("evil.example", False), ("", False)):
        request = make_mocked_request("GET", "/", headers={"Host": host} if host else {})
        if allowed:
            access.check_host(request)
        else:
            with pytest.raises(http_guard.HTTPProblem):
                access.check_host(request)
