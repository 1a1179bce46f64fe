"""Property-based fuzzing of every `streamer serve` endpoint while a peer is connected (the
image API's included).

Whatever a client sends (arbitrary bytes, JSON of the right and wrong shapes, huge and
non-finite numbers, deep nesting, wrong content types and origins), the answer is never a
5xx, errors are one bounded line of JSON, nothing is logged at ERROR or with a traceback,
and the connected peer keeps receiving frames.

The server and the peer live on an event loop in a thread of their own; hypothesis drives
requests into it from the test thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import struct
import threading
import zlib

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_webrtc import ADMIN_TOKEN, Client, make_server, serving

from streamer.live import http_guard

pytestmark = [
    pytest.mark.timeout(300),
    # aiortc and aioice draw from `random` on the server's thread while examples are generated
    pytest.mark.filterwarnings(
        "ignore:Do not use the `random` module:hypothesis.errors.HypothesisDeprecationWarning"
    ),
]

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

ENDPOINTS = ["/offer", "/params", "/background", "/close", "/stats", "/config", "/"]
ENDPOINTS += ["/v1/images/edits", "/v1/matte", "/v1/models"]
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "image/png",
    "image/jpeg",
    "application/octet-stream",
    "application/jsonx",
    "\u00e9/\u00e9",
]
COMPOSITE_KEYS = ["mode", "color", "background", "blur_radius", "refine_foreground", "threshold", "gamma"]
COMPOSITE_KEYS += ["grow", "feather", "mirror", "unknown"]
SMOOTHING_KEYS = ["enabled", "strength", "max_time_constant", "motion_scale", "motion_reach", "x"]
PROPAGATION_KEYS = ["enabled", "keyframe_every", "flow_width", "flow_finest_scale", "history"]
PROPAGATION_KEYS += ["fine_flow_interval", "residual", "y"]


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(f"{record.name}: {record.getMessage()[:200]}")


class Live:
    """A served app with one connected peer, on its own loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.stack = contextlib.AsyncExitStack()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self) -> None:
        self.server = make_server()
        self.http, self.base = await self.stack.enter_async_context(serving(self.server))
        self.client = Client(self.http, self.base)
        await self.client.connect()
        await self.client.wait_frames(2)

    async def stop(self) -> None:
        await self.client.close()
        await self.stack.aclose()

    async def request(self, method: str, path: str, **kwargs) -> tuple[int, str]:
        async with self.http.request(method, self.base + path, **kwargs) as response:
            return response.status, await response.text(errors="replace")  # PNGs from the image API

    async def frames_keep_coming(self) -> None:
        await asyncio.sleep(0.2)
        await self.client.wait_frames(2, timeout=30)


@pytest.fixture(scope="module")
def live():
    import aioice.ice

    recorder = Recorder()
    logging.getLogger().addHandler(recorder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
        live = Live()
        live.thread.start()
        live.run(live.start())
        live.recorder = recorder
        try:
            yield live
        finally:
            live.run(live.stop())
            live.loop.call_soon_threadsafe(live.loop.stop)
            live.thread.join(10)
            logging.getLogger().removeHandler(recorder)


@pytest.fixture(autouse=True)
def fresh_log(live):
    live.recorder.bad.clear()


def check(live: Live, method: str, path: str, **kwargs) -> int:
    status, text = live.run(live.request(method, path, **kwargs))
    assert status < 500, (method, path, status, text[:300])
    if status >= 400 and method != "HEAD":
        body = json.loads(text)
        assert set(body) == {"error"} and isinstance(body["error"], str), text[:300]
        assert 0 < len(body["error"]) <= http_guard.MAX_REASON and "\n" not in body["error"]
    assert not live.recorder.bad, live.recorder.bad
    return status


def finish(live: Live) -> None:
    live.run(live.frames_keep_coming())
    assert live.client.peer in live.server.peers
    assert not live.recorder.bad, live.recorder.bad


# -- strategies ---------------------------------------------------------------------------------
EDGES = [0, 1, -1, 32, 64, 96, 255, 256, 1048576, 10**400, -(10**30), 1e300, -1e300, 0.5]
EDGES += [float("inf"), float("-inf"), float("nan"), 1e308]
numbers = st.one_of(
    st.sampled_from(EDGES),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=40))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def settings_of(keys: list[str]):
    values = st.one_of(
        numbers,
        st.lists(numbers, min_size=1, max_size=4),
        json_values,
        st.sampled_from(
            ["matte", "rgba", "color", "image", "video", "blur", "green", "#ff00ff", "on", "off"]
        ),
        st.sampled_from(["/etc/passwd", "../../etc/hostname", "/dev/zero", "/proc/self/environ", "."]),
        st.lists(numbers, min_size=3, max_size=3),
    )
    return st.one_of(st.dictionaries(st.sampled_from(keys), values, max_size=4), json_values)


def deep(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


def text_of(value) -> bytes:
    # allow_nan writes NaN / Infinity, which strict JSON has no words for: the server must refuse them.
    return json.dumps(value, allow_nan=True).encode()


def png_claiming(width: int, height: int, data: bytes) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def picture(width: int, height: int, kind: str, truncate: int) -> bytes:
    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (width, height), (width % 256, height % 256, 7)).save(data, format=kind)
    return data.getvalue()[: truncate or None]


real_pictures = st.tuples(
    st.integers(1, 300),
    st.integers(1, 300),
    st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM"]),
    st.sampled_from([0, 0, 0, 20, 100]),
)


headers_st = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from([t for t in CONTENT_TYPES if t]),
        "Origin": st.sampled_from(["null", "https://evil.example", "http://127.0.0.1", "file://", "x"]),
        "Sec-Fetch-Site": st.sampled_from(["same-origin", "same-site", "cross-site", "none", "?"]),
        "Authorization": st.sampled_from([f"Bearer {ADMIN_TOKEN}", "Bearer", "Basic abc", "Bearer \u00e9"]),
        "Host": st.sampled_from(
            ["evil.example", "127.0.0.1", "localhost:1", "[::1]", "a b", ":::", "x:99999"]
        ),
    },
)


def peer_ids(live: Live):
    """Mostly the connected peer's id (anything else stops at "unknown peer")."""
    return st.one_of(st.just(live.client.peer), st.just(live.client.peer), st.text(max_size=30), json_values)


# -- the fuzz tests -------------------------------------------------------------------------------
def test_arbitrary_bytes_to_every_endpoint(live):
    @settings(FUZZ, max_examples=100)
    @given(
        path=st.sampled_from(ENDPOINTS),
        method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]),
        body=st.binary(max_size=2048) | st.text(max_size=200).map(str.encode),
        # mostly the type the JSON endpoints accept, so the bytes reach the parser
        content_type=st.just("application/json") | st.sampled_from(CONTENT_TYPES),
        query=st.dictionaries(st.sampled_from(["peer", "x"]), st.text(max_size=20), max_size=2),
    )
    def run(path, method, body, content_type, query):
        headers = {"Content-Type": content_type} if content_type else {}
        # keep our own peer: /close with its id is the one request that may end it
        if path == "/close":
            query = {}
        check(live, method, path, data=body, headers=headers, params=query)

    run()
    finish(live)


def test_json_of_any_shape(live):
    @FUZZ
    @given(
        path=st.sampled_from(["/offer", "/params", "/close", "/background"]),
        value=json_values,
        content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]),
    )
    def run(path, value, content_type):
        if path == "/close" and isinstance(value, dict) and value.get("peer") == live.client.peer:
            return
        check(live, "POST", path, data=text_of(value), headers={"Content-Type": content_type})

    run()
    finish(live)


def test_params_of_the_right_shape_with_any_values(live):
    @settings(FUZZ, max_examples=150)
    @given(
        peer=st.just(live.client.peer) | peer_ids(live),
        composite=settings_of(COMPOSITE_KEYS),
        smoothing=settings_of(SMOOTHING_KEYS),
        propagation=settings_of(PROPAGATION_KEYS),
        size=st.one_of(st.none(), numbers, st.lists(numbers, max_size=3), st.text(max_size=12)),
        admin=st.booleans(),
        keys=st.sets(st.sampled_from(["composite", "smoothing", "propagation", "size", "extra"])),
    )
    def run(peer, composite, smoothing, propagation, size, admin, keys):
        body = {"peer": peer, "composite": composite, "smoothing": smoothing, "size": size, "extra": 1}
        body["propagation"] = propagation
        body = {key: value for key, value in body.items() if key in keys or key == "peer"}
        headers = {"Content-Type": "application/json"}
        if admin:
            headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        check(live, "POST", "/params", data=text_of(body), headers=headers)

    run()
    # The fuzzing may have left the shared size anywhere in bounds: frames must still come.
    finish(live)


def test_huge_and_non_finite_numbers_in_every_setting(live):
    from streamer.compose.compositor import CompositeParams
    from streamer.propagation import PropagationParams
    from streamer.smoothing import SmoothingParams

    targets = [("composite", name) for name in CompositeParams.model_fields]
    targets += [("smoothing", name) for name in SmoothingParams.model_fields]
    targets += [("propagation", name) for name in PropagationParams.model_fields]
    targets += [("size", None)]
    hostile = st.one_of(
        numbers,
        st.lists(numbers, min_size=1, max_size=4),
        st.lists(st.sampled_from(EDGES), min_size=2, max_size=3),
        st.sampled_from(["inf", "nan", "1e400", "-1e400", "1e400,0,0", "Infinity", "0x10"]),
    )

    @FUZZ
    @given(value=hostile)
    def run(value):
        # Every setting gets the same value, one request each: a number that escapes the
        # checks of any one of them shows up here.
        for section, key in targets:
            body = {"peer": live.client.peer, section: value if key is None else {key: value}}
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"}
            check(live, "POST", "/params", data=text_of(body), headers=headers)

    run()
    finish(live)


def test_offers_with_garbage(live):
    lines = st.lists(
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(
                [
                    "a=group:BUNDLE 0",
                    "m=video 9 UDP/TLS/RTP/SAVPF 96",
                    "a=rtpmap:96 VP8/90000",
                    "c=IN IP4 0.0.0.0",
                ]
            ),
            st.builds("a=fingerprint:sha-256 {}".format, st.text(max_size=20)),
            st.builds("a=candidate:{}".format, st.text(max_size=40)),
        ),
        max_size=12,
    )

    @FUZZ
    @given(
        head=st.sampled_from(["v=0", " v=0", "v=1", ""]),
        lines=lines,
        kind=st.sampled_from(["offer", "answer", "pranswer", None, 1]),
        sep=st.sampled_from(["\r\n", "\n", "\r"]),
    )
    def run(head, lines, kind, sep):
        sdp = sep.join([head, *lines, "m=video 9 UDP/TLS/RTP/SAVPF 96", *lines[::-1]])
        status = check(
            live,
            "POST",
            "/offer",
            data=text_of({"sdp": sdp, "type": kind}),
            headers={"Content-Type": "application/json"},
        )
        assert status in (200, 400), status

    run()
    # An offer that happened to be accepted made a peer that never connects: hang those up.
    for peer_id in [p for p in live.server.peers if p != live.client.peer]:
        live.run(live.server.peers[peer_id].close())
    finish(live)


def test_deep_nesting_and_huge_bodies(live):
    @FUZZ
    @given(
        path=st.sampled_from(["/offer", "/params", "/close"]),
        depth=st.integers(min_value=1, max_value=200_000),
        kind=st.sampled_from(["list", "dict"]),
        padding=st.sampled_from([0, 1000, http_guard.MAX_JSON_BYTES, 5_000_000]),
    )
    def run(path, depth, kind, padding):
        body = deep(depth, kind).encode() + b" " * padding
        status = check(live, "POST", path, data=body, headers={"Content-Type": "application/json"})
        if len(body) > http_guard.MAX_JSON_BYTES:
            assert status == 413
        elif depth > http_guard.MAX_JSON_DEPTH:
            assert status == 400

    run()
    finish(live)


def test_uploads_of_any_bytes_and_headers(live):
    @FUZZ
    @given(
        peer=peer_ids(live),
        width=st.integers(min_value=0, max_value=2**32 - 1),
        height=st.integers(min_value=0, max_value=2**32 - 1),
        data=st.binary(max_size=256),
        as_png=st.booleans(),
        content_type=st.sampled_from(["image/png", "application/octet-stream", "image/jpeg", "text/plain"]),
        real=st.none() | real_pictures,
    )
    def run(peer, width, height, data, as_png, content_type, real):
        body = picture(*real) if real is not None else png_claiming(width, height, data) if as_png else data
        params = {"peer": peer} if isinstance(peer, str) else {}
        status = check(
            live, "POST", "/background", data=body, params=params, headers={"Content-Type": content_type}
        )
        whole = real is not None and real[2] in http_guard.IMAGE_FORMATS and not real[3]
        if whole and peer == live.client.peer and content_type != "text/plain":
            assert status == 200  # a whole picture in a format we take, sent as a page sends it

    run()
    finish(live)


API_FIELDS = ["image", "image[]", "url", "image_url", "format", "color", "response_format", "model"]
API_FIELDS += ["background", "n", "size", "output_format", "stream", "prompt", "mask", "user", "x", ""]
API_TEXT = ["mask", "cutout", "composite", "b64_json", "png", "url", "1", "2", "auto", "opaque"]
API_TEXT += ["transparent", "birefnet-lite", "birefnet-portrait", "ZhengPeng7/BiRefNet_lite", "white"]
API_TEXT += ["#00ff00", "sky", "true"]
# Only addresses that never leave the machine: private ones are refused before connecting,
# the others fail to parse or to connect at once.
API_URLS = ["file:///etc/passwd", "http://127.0.0.1:1/a.png", "http://[::1]/", "http://10.0.0.1/x.png"]
API_URLS += ["http://localhost/", "https://localhost:1/", "http://169.254.169.254/latest", "http://0.0.0.0/"]
API_URLS += ["http://[::ffff:10.0.0.1]/", "http://2130706433/", "http://127.1/", "ftp://x/y", "http://"]
API_URLS += ["//x", "javascript:1", "data:image/png;base64,!!", "data:,abc", "data:"]
API_URLS += ["data:image/png;base64,iVBORw0KGgo="]
api_values = st.one_of(
    st.sampled_from(API_TEXT), st.sampled_from(API_URLS), st.text(max_size=30), json_values
)


def test_the_image_api_with_forms_of_any_shape(live):
    @settings(FUZZ, max_examples=120)
    @given(
        path=st.sampled_from(["/v1/images/edits", "/v1/matte"]),
        encoding=st.sampled_from(["multipart", "multipart", "json", "raw"]),
        fields=st.dictionaries(st.sampled_from(API_FIELDS), api_values, max_size=4),
        real=st.none() | real_pictures,
        data=st.binary(max_size=256),
        picture_as=st.sampled_from(["image", "image[]", "mask", "url", None]),
        headers=headers_st,
    )
    def run(path, encoding, fields, real, data, picture_as, headers):
        body = picture(*real) if real is not None else data
        headers = {k: v for k, v in headers.items() if k != "Content-Type"}
        if encoding == "json":
            value = {k: v for k, v in fields.items()}
            if picture_as:
                value[picture_as] = base64.b64encode(body).decode()
            kwargs = {"data": text_of(value), "headers": {**headers, "Content-Type": "application/json"}}
        elif encoding == "raw":
            text = {k: str(v)[:40] for k, v in fields.items() if isinstance(v, str)}
            kwargs = {"data": body, "params": text, "headers": {**headers, "Content-Type": "image/png"}}
        else:
            form = aiohttp.FormData()
            for key, value in fields.items():
                form.add_field(key, value if isinstance(value, str) else text_of(value).decode())
            if picture_as:
                form.add_field(picture_as, body, filename="p.png", content_type="image/png")
            kwargs = {"data": form, "headers": headers}
        check(live, "POST", path, **kwargs)

    run()
    finish(live)


def test_any_headers_and_queries(live):
    @FUZZ
    @given(
        path=st.sampled_from(
            ENDPOINTS + ["/static/app.js", "/static/../app.py", "/static/%2e%2e/app.py", "/x"]
        ),
        method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PATCH"]),
        headers=headers_st,
        peer=peer_ids(live),
    )
    def run(path, method, headers, peer):
        body = {"peer": peer, "composite": {"mode": "matte"}}
        params = {"peer": peer} if isinstance(peer, str) and path in ("/stats", "/background") else {}
        if path == "/close":
            body = {"peer": "someone-else"}
        status = check(live, method, path, data=text_of(body), headers=headers, params=params)
        if path.startswith("/static/") and (".." in path or "%2e" in path):
            assert status >= 400 or method == "OPTIONS"

    run()
    finish(live)


def test_a_served_file_never_leaves_the_static_folder(live):
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static//etc/passwd"):
        status, text = live.run(live.request("GET", path))
        assert status == 404 or status == 403, (path, status)
        assert "import" not in text and "root:" not in text

    async def probe():
        async with aiohttp.ClientSession() as raw:
            url = aiohttp.client.URL(live.base + "/static/%2E%2E/app.py", encoded=True)
            async with raw.get(url) as response:
                return response.status

    assert live.run(probe()) in (403, 404)


async def raw_exchange(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(4096), 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def test_malformed_http_framing(live):
    host = live.base.removeprefix("http://")
    header_lines = st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "Content-Type: application/json",
                    "Transfer-Encoding: chunked",
                    "Transfer-Encoding: gzip, chunked",
                    "Content-Encoding: gzip",
                    "Content-Length: 5",
                    "Content-Length: -1",
                    "Content-Length: 99999999999999999999",
                    "Content-Length: 1, 2",
                    "Expect: 100-continue",
                    "Connection: upgrade",
                    "Upgrade: websocket",
                    "X: " + "y" * 9000,
                    " folded",
                    "NoColon",
                    "Bad Name: x",
                ]
            ),
            st.text(max_size=30).map(lambda t: t.replace("\r", "").replace("\n", "")),
        ),
        max_size=6,
    )

    @FUZZ
    @given(
        start=st.sampled_from(
            [
                "POST /params HTTP/1.1",
                "POST /offer HTTP/1.1",
                "GET /stats?peer=%zz HTTP/1.1",
                "POST /x HTTP/9.9",
                "BREW / HTCPCP/1.0",
                "",
            ]
        ),
        lines=header_lines,
        body=st.binary(max_size=200)
        | st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"\x1f\x8b\x08\x00" * 4]),
    )
    def run(start, lines, body):
        request = "\r\n".join([start, f"Host: {host}", *lines]).encode("utf-8", "surrogateescape")
        answer = live.run(raw_exchange(live.base, request + b"\r\n\r\n" + body))
        status = answer.split(b" ", 2)[1:2]
        assert not (status and status[0].startswith(b"5")), answer[:300]
        assert not live.recorder.bad, live.recorder.bad

    run()
    finish(live)
