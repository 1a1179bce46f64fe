"""What `streamer serve` accepts over HTTP: one error path, bounded bodies, same-origin changes.

Every refusal is an `HTTPProblem` that the middleware turns into `{"error": "<one line>"}` with
its status (400 bad input, 401 no or wrong API key, 403 forbidden, 404/405 from the router, 413
too large). Nothing a
client sends reaches the handlers' logic unchecked:

- `Host` must name the address the connection reached (or `localhost` on loopback), or a name
  the operator allowed: a page on another name that resolves here (DNS rebinding) is refused.
- Requests that change state (every POST) must come from the page's own origin: a browser
  says where a request comes from in `Origin` and `Sec-Fetch-Site`; other clients send neither.
  They must also carry a type a cross-site form cannot send without a CORS preflight (which
  this server never grants): `application/json`, or an image type for uploads. The image API
  (`streamer.live.api`) also takes multipart forms, as API clients send them: a browser form
  from another site still carries `Origin` and `Sec-Fetch-Site`, and is refused on those.
- Bodies are read up to a limit before any parsing; JSON is UTF-8, finite numbers only, and
  nested at most `MAX_JSON_DEPTH` deep; pictures are checked from their header (pixel budget,
  Pillow's decompression-bomb warning as an error) before a pixel is decoded.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import logging
import math
import re
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from streamer.errors import ConfigError

MAX_JSON_BYTES = 256 * 1024
"""A browser's offer with every candidate is a few kB; settings are far smaller."""
MAX_UPLOAD_BYTES = 16 * 1024**2
"""A background picture, as a PNG or JPEG file."""
MAX_JSON_DEPTH = 8
"""The deepest request is {"composite": {"color": [...]}}: depth 3."""
MAX_REASON = 300
"""Characters of an error message: enough for one line naming the problem and the fix."""
MAX_PIXELS = 25_000_000
"""Decoded pictures stay under 75 MB of RGB (a 24-megapixel photo fits)."""
MAX_SIDE = 12_000
KEEP_SIDE = 4096
"""Uploads are scaled down to fit this (a background is scaled to the video anyway)."""
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
UPLOAD_TYPES = ("image/", "application/octet-stream")


class HTTPProblem(Exception):
    """A request the client must fix (or may not make): becomes `status` with this message."""

    status = 400


class BadRequest(HTTPProblem):
    status = 400


class Forbidden(HTTPProblem):
    status = 403


class Unauthorized(HTTPProblem):
    status = 401


class TooLarge(HTTPProblem):
    status = 413


class ProtocolLog(logging.LoggerAdapter):
    """aiohttp's server log, with requests it cannot even parse (a broken request line, header or
    chunked body: the client's fault) as one warning line instead of an error with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:
        if isinstance(exc_info, HttpProcessingError | RequestPayloadError):
            remote = args[0] if args else "?"
            self.warning("refused a malformed request from %s: %s", remote, one_line(str(exc_info))[:200])
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


def handler_args() -> dict:
    """What the app's request handlers are made with: the log above, and request bodies left
    compressed (a browser never compresses them; decompressing would multiply what we read)."""
    return {"logger": ProtocolLog(), "auto_decompress": False}


def one_line(message: str) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def error_response(status: int, message: str) -> web.Response:
    headers = {hdrs.WWW_AUTHENTICATE: "Bearer"} if status == 401 else None
    return web.json_response({"error": one_line(message)}, status=status, headers=headers)


def bearer_matches(request: web.Request, secret: str) -> bool:
    """Whether `Authorization: Bearer <secret>` came with the request (constant-time compare)."""
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode("utf-8", "replace"), secret.encode()
    )


@dataclass(frozen=True)
class Access:
    """Who may talk to the server and who may change what every peer shares."""

    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    """Names besides the bound address that `Host` may carry (`--allowed-host`)."""
    admin_token: str | None = None
    """Bearer token for shared changes (`--admin-token`); None: only the command line changes them."""

    def is_admin(self, request: web.Request) -> bool:
        return bool(self.admin_token) and bearer_matches(request, self.admin_token)

    def middleware(self):
        @web.middleware
        async def guard(request: web.Request, handler):
            try:
                self.check_host(request)
                if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_OPTIONS):
                    check_same_origin(request)
                return await handler(request)
            except HTTPProblem as err:
                return error_response(err.status, str(err))
            except ConfigError as err:
                return error_response(400, str(err))
            except web.HTTPException as err:
                if err.status < 400:
                    raise
                return error_response(err.status, _router_reason(request, err))

        return guard

    def check_host(self, request: web.Request) -> None:
        header = request.headers.get(hdrs.HOST)
        if not header:
            raise BadRequest("no Host header: send the address you connected to")
        name, _ = _split_authority(header)
        if name is None:
            raise BadRequest("the Host header is not a host name or address")
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if names_this_server(header, sockname[0] if sockname else None, self.allowed_hosts):
            return
        raise Forbidden(
            f"Host {header[:80]!r} is not this server's address; open the page by its address "
            "(or start the server with --allowed-host NAME)"
        )


def _router_reason(request: web.Request, err: web.HTTPException) -> str:
    if err.status == 404:
        return f"{request.path[:80]}: no such page or endpoint"
    if err.status == 405:
        return f"{request.method} is not accepted by {request.path[:80]}"
    if err.status == 413:
        return f"{request.path[:80]}: the body is too large"
    return err.reason


def _split_authority(authority: str) -> tuple[str | None, int | None]:
    """'Example.org:8080' -> ('example.org', 8080); (None, None) when it is not one."""
    if not re.fullmatch(r"[A-Za-z0-9._~\-\[\]:%]{1,300}", authority):
        return None, None
    try:
        parts = urlsplit(f"//{authority}")
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def names_this_server(host: str | None, address: str | None, allowed: Collection[str] = ()) -> bool:
    """Whether a `Host` header names the `address` a connection reached (`localhost` too, on
    loopback) or one of the `allowed` names: another name that resolves here (DNS rebinding)
    does not. Also the `--preview` server's rule (streamer.sinks.preview)."""
    name, _ = _split_authority(host or "")
    return name is not None and (name in allowed or name in _local_names(address))


def _local_names(address: str | None) -> set[str]:
    """The address a connection reached, and `localhost` when that is a loopback address."""
    if not address:
        return set()
    address = str(address).lower()
    names = {address}
    try:
        if ipaddress.ip_address(address.split("%")[0]).is_loopback:
            names.add("localhost")
    except ValueError:
        pass
    return names


def check_same_origin(request: web.Request) -> None:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(f"{request.path[:80]}: refused a {site[:20]} request; use this server's own page")
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return  # not a browser: a browser sends Origin with every POST
    parts = _origin(origin)
    host = _split_authority(request.headers.get(hdrs.HOST, ""))
    default = 443 if request.scheme == "https" else 80
    if parts is None or (parts[0], parts[1] or default) != (host[0], host[1] or default):
        raise Forbidden(
            f"{request.path[:80]}: refused a request from another site ({origin[:80]!r}); "
            "use this server's own page"
        )


def _origin(origin: str) -> tuple[str, int | None] | None:
    scheme, sep, authority = origin.partition("://")
    if not sep or scheme not in ("http", "https") or "/" in authority:
        return None
    name, port = _split_authority(authority)
    if name is None:
        return None
    return name, port or (443 if scheme == "https" else 80)


# -- bodies -------------------------------------------------------------------------------------
def content_type(request: web.Request) -> str:
    """The body's media type, lower case, without parameters ('' when there is none)."""
    return request.headers.get(hdrs.CONTENT_TYPE, "").split(";")[0].strip().lower()


def require_type(request: web.Request, accepted: tuple[str, ...], fix: str) -> None:
    kind = content_type(request)
    if not any(kind == a or (a.endswith("/") and kind.startswith(a)) for a in accepted):
        raise Forbidden(f"{request.path[:80]}: Content-Type {kind[:60]!r} is not accepted; {fix}")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to be over `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"{request.path[:80]}: the body is over {limit // 1024} KiB; send less")
    data = bytearray()
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > limit:
                raise TooLarge(f"{request.path[:80]}: the body is over {limit // 1024} KiB; send less")
    except (HttpProcessingError, RequestPayloadError) as err:
        raise BadRequest(f"{request.path[:80]}: the body is malformed ({str(err)[:80]})") from None
    return bytes(data)


async def read_json(request: web.Request) -> dict:
    """The JSON object a state-changing request carries, checked as described above."""
    require_type(request, ("application/json",), "send JSON with Content-Type: application/json")
    return parse_json(await read_body(request, MAX_JSON_BYTES), request.path[:80])


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is out of range; send finite numbers")
    return number


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows; send finite numbers")


def parse_json(data: bytes, where: str) -> dict:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{where}: the body is not UTF-8 text; send a JSON object") from None
    try:
        body = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest(
            f"{where}: the JSON is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
        ) from None
    except json.JSONDecodeError as err:
        raise BadRequest(f"{where}: the body is not valid JSON ({err.msg}); send a JSON object") from None
    except ValueError as err:  # our number checks, or an integer of thousands of digits
        raise BadRequest(f"{where}: {err}") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"{where}: the JSON is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    if not isinstance(body, dict):
        raise BadRequest(f"{where}: the body must be a JSON object, not {type(body).__name__}")
    return body


def _depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend(
                    (child, level + 1) for child in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


# -- pictures -----------------------------------------------------------------------------------
async def read_upload(request: web.Request) -> bytes:
    require_type(request, UPLOAD_TYPES, "send the file with its image type (e.g. image/png)")
    return await read_body(request, MAX_UPLOAD_BYTES)


def decode_image(data: bytes, what: str = "background") -> np.ndarray:
    """uint8 RGB (H, W, 3), at most KEEP_SIDE on each side, from PNG/JPEG/... bytes.

    The size is read from the header and checked before anything is decoded; runs in a
    thread (decoding a large picture takes a while). `what` names the picture in errors."""
    from PIL import Image

    from streamer.stills import upright_rgb

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as picture:
                width, height = picture.size
                if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
                    raise TooLarge(
                        f"{what}: {width}x{height} is too large (at most {MAX_PIXELS // 10**6} "
                        f"megapixels, {MAX_SIDE} on a side); upload a smaller picture"
                    )
                picture.draft("RGB", (KEEP_SIDE, KEEP_SIDE))  # JPEG: decode at a reduced scale
                rgb = Image.fromarray(upright_rgb(picture))
                rgb.thumbnail((KEEP_SIDE, KEEP_SIDE))
                return np.asarray(rgb)
        except HTTPProblem:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            # Pillow's own check, made while reading the header: its message gives the size.
            raise TooLarge(
                f"{what}: the picture is too large ({str(err)[:90]}); upload a smaller one"
            ) from None
        except Image.UnidentifiedImageError:
            names = [{"WEBP": "WebP"}.get(f, f) for f in IMAGE_FORMATS]
            kinds = ", ".join(names[:-1]) + f" or {names[-1]}"
            raise BadRequest(f"{what}: not a {kinds} picture; upload a PNG or JPEG file") from None
        except Exception as err:  # Pillow's many complaints about a broken file are the client's to fix
            reason = str(err)[:80] or type(err).__name__
            raise BadRequest(f"{what}: not a readable image ({reason}); upload a PNG or JPEG file") from None
