"""The image API of `streamer serve`: still pictures in, mattes, cut-outs or composites out.

  POST /v1/images/edits  OpenAI-compatible (what the official `openai` package's
                         `client.images.edit(...)` sends): multipart with `image`, optional
                         `model`, `prompt`, `background`, `response_format` (b64_json) ->
                         {"created", "data": [{"b64_json": <PNG>}], "background", "output_format"}
  POST /v1/matte         the picture as a multipart file `image`, a `url` (http, https, data:),
                         JSON {"image": <base64>} or {"url": ...}, or the raw bytes
                         (Content-Type image/*); `format` mask | cutout | composite (on `color`),
                         `response_format` png (the PNG's bytes) | b64_json
  GET  /v1/models        the one model this server runs

Every request goes through the server's guard (`http_guard`: Host and same-origin checks, one
error path) and, when the operator set an API key (`--api-key`, `STREAMER_API_KEY`), must carry
it as `Authorization: Bearer KEY` (401 otherwise). Pictures are read to the upload limit and
decoded by the code `/background` uses; the network is the live streams' one worker, where
images wait behind live frames (`streamer.live.worker`); compositing is `streamer image`'s.
Decoding, compositing and PNG encoding run in the API's own threads, below the live threads'
priority; at most `MAX_ACTIVE` requests are handled at a time, the others wait their turn.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from aiohttp import web

from streamer.commands.image import FORMATS, make_compositor, to_pil
from streamer.frame import Frame
from streamer.live.fetch import decode_base64, fetch_image_bytes
from streamer.live.http_guard import (
    MAX_UPLOAD_BYTES,
    BadRequest,
    HTTPProblem,
    TooLarge,
    Unauthorized,
    bearer_matches,
    content_type,
    decode_image,
    parse_json,
    read_body,
    read_upload,
    require_type,
)
from streamer.live.worker import SlotClosed
from streamer.priority import lower_thread_priority

log = logging.getLogger(__name__)

MAX_ACTIVE = 4
"""Requests decoded, matted and encoded at once: bounds the memory of decoded pictures."""
FORM_BYTES = MAX_UPLOAD_BYTES + 64 * 1024
"""A multipart body: the picture and a few short fields."""
JSON_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 64 * 1024
"""A JSON body: the picture in base64 and a few short fields."""
MAX_PARTS = 32
MAX_FIELD = 4096
"""Characters of a text field other than the picture or its URL."""
PICTURE_FIELDS = ("image", "url", "image_url")
IGNORED_EDIT_FIELDS = (
    "prompt",
    "user",
    "quality",
    "input_fidelity",
    "safety_identifier",
    "output_compression",
)
"""OpenAI fields that mean nothing to a matting network: accepted and not used."""
EDIT_FIELDS = (*PICTURE_FIELDS, "model", "background", "response_format", "n", "size", "output_format")
EDIT_FIELDS += ("stream", "format", "color", *IGNORED_EDIT_FIELDS)
MATTE_FIELDS = (*PICTURE_FIELDS, "format", "color", "response_format")


@dataclass
class Form:
    """A request's fields (text) and the picture, wherever it came from in the request."""

    fields: dict[str, object]
    picture: bytes | None = None


class ImageAPI:
    """The API's handlers; `params` is the serve section (`api_key`, `allow_local_urls`,
    `url_timeout`)."""

    def __init__(self, worker, params) -> None:
        self.worker = worker
        self.params = params
        engine_params = getattr(worker.engine, "params", None)
        self.variant = getattr(engine_params, "variant", "portrait")
        self.model = f"birefnet-{self.variant}"
        self._names = {self.model.lower(), self.variant.lower(), *_repo_names(self.variant)}
        self._active = asyncio.Semaphore(MAX_ACTIVE)
        self._count = itertools.count(1)
        self.executor: ThreadPoolExecutor | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/edits", self.edits)
        app.router.add_post("/v1/matte", self.matte)
        app.router.add_get("/v1/models", self.models)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)

    async def _startup(self, app: web.Application) -> None:
        self.executor = ThreadPoolExecutor(
            2, thread_name_prefix="streamer-api", initializer=lower_thread_priority
        )

    async def _cleanup(self, app: web.Application) -> None:
        if self.executor is not None:
            await asyncio.to_thread(self.executor.shutdown)

    # -- handlers -------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        self._authorize(request)
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "streamer"}
        return web.json_response({"object": "list", "data": [model]})

    async def edits(self, request: web.Request) -> web.Response:
        self._authorize(request)
        async with self._active:
            form = await read_form(request, EDIT_FIELDS)
            fmt, color = self._edit_options(form.fields)
            png = await self._process(form, fmt, color)
        background = "transparent" if fmt == "cutout" else "opaque"
        return web.json_response(
            {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(png).decode("ascii")}],
                "background": background,
                "output_format": "png",
            }
        )

    async def matte(self, request: web.Request) -> web.Response:
        self._authorize(request)
        async with self._active:
            form = await read_form(request, MATTE_FIELDS)
            fields = form.fields
            fmt = _choice(fields, "format", tuple(FORMATS), "cutout")
            reply = _choice(fields, "response_format", ("png", "b64_json"), "png")
            png = await self._process(form, fmt, _text(fields, "color", "white"))
        if reply == "png":
            return web.Response(body=png, content_type="image/png")
        return web.json_response(
            {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(png).decode("ascii")}]}
        )

    # -- the steps ------------------------------------------------------------------------------
    def _authorize(self, request: web.Request) -> None:
        key = self.params.api_key
        if key and not bearer_matches(request, key):
            raise Unauthorized(
                f"{request.path[:40]}: send this server's API key as Authorization: Bearer KEY"
            )

    def _edit_options(self, fields: dict) -> tuple[str, str]:
        model = _text(fields, "model", "")
        if model and model.lower() not in self._names:
            raise BadRequest(
                f"model: {model[:60]!r} is not served here; this server runs {self.model} (or leave model out)"
            )
        if _text(fields, "response_format", "b64_json") != "b64_json":
            raise BadRequest(
                "response_format: only b64_json is offered (this server keeps no files to link to)"
            )
        if _text(fields, "n", "1").strip() != "1":
            raise BadRequest("n: one picture per request (a matte has one answer); leave n out or send 1")
        if _text(fields, "size", "auto") != "auto":
            raise BadRequest("size: the result has the picture's own size; leave size out or send auto")
        if _text(fields, "output_format", "png").lower() != "png":
            raise BadRequest("output_format: only png is offered (it keeps the transparency)")
        if _text(fields, "stream", "false").lower() not in ("false", "0"):
            raise BadRequest("stream: not offered; leave stream out")
        background = _choice(fields, "background", ("transparent", "opaque", "auto"), "auto")
        fmt = "composite" if background == "opaque" else "cutout"
        fmt = _choice(fields, "format", tuple(FORMATS), fmt)
        return fmt, _text(fields, "color", "white")

    async def _process(self, form: Form, fmt: str, color: str) -> bytes:
        compositor = make_compositor(fmt, color, getattr(self.worker.engine, "device", "cpu"))
        data = await self._picture_bytes(form)
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self.executor, decode_image, data, "image")
        frame = Frame(torch.from_numpy(np.require(image, requirements="W")), None, Fraction(1), 0, 0.0)
        try:
            slot = self.worker.open_slot(f"image-{next(self._count)}", image=True)
        except RuntimeError:
            raise web.HTTPServiceUnavailable(reason="the server is stopping") from None
        try:
            slot.put(frame)
            result = await slot.get()
        except SlotClosed:
            raise web.HTTPServiceUnavailable(reason="the server is stopping") from None
        finally:
            slot.close()
        return await loop.run_in_executor(self.executor, _encode, compositor, result)

    async def _picture_bytes(self, form: Form) -> bytes:
        if form.picture is not None:
            return form.picture
        image = form.fields.get("image")
        url = form.fields.get("url", form.fields.get("image_url"))
        if image is not None:
            if not isinstance(image, str):
                raise BadRequest("image: expected the file's bytes base64-encoded in a string")
            if image.lstrip()[:5].lower() == "data:":
                url = image.strip()
            else:
                if len(image) > JSON_BYTES:
                    raise TooLarge("image: over the upload limit; send a smaller picture")
                return await asyncio.to_thread(decode_base64, image, "image")
        if url is None:
            raise BadRequest(
                "no picture: send it as a file field 'image' (multipart), JSON "
                '{"image": "<base64>"}, or a "url" (http, https, data:)'
            )
        return await fetch_image_bytes(
            url,
            limit=MAX_UPLOAD_BYTES,
            timeout_s=self.params.url_timeout,
            allow_local=self.params.allow_local_urls,
        )


def _encode(compositor, frame: Frame) -> bytes:
    picture = compositor(frame.image, frame.alpha, 0.0)
    data = io.BytesIO()
    # The lowest zlib level: 3-5x quicker than the default on a large cut-out, for a bigger file.
    to_pil(picture).save(data, format="PNG", compress_level=1)
    return data.getvalue()


def _repo_names(variant: str) -> set[str]:
    from streamer.model import VARIANTS

    repo = getattr(VARIANTS.get(variant), "repo_id", None)
    return {repo.lower(), repo.split("/")[-1].lower()} if repo else set()


def _text(fields: dict, name: str, default: str) -> str:
    value = fields.get(name, default)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"{name}: expected a string, not {type(value).__name__}")
    return str(value)


def _choice(fields: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    value = _text(fields, name, default).strip().lower()
    if value not in choices:
        raise BadRequest(f"{name}: {value[:40]!r} is not one of {', '.join(choices)}")
    return value


# -- reading the request --------------------------------------------------------------------------
async def read_form(request: web.Request, known: tuple[str, ...]) -> Form:
    """The fields and picture of a multipart, JSON or raw-picture request, with query fields
    under them; unknown fields are refused (a typo must not pass silently)."""
    kind = content_type(request)
    if kind == "multipart/form-data":
        form = await _read_multipart(request)
    elif kind == "application/json":
        # Off the event loop: megabytes of base64 take a while to parse, and live frames wait.
        data = await read_body(request, JSON_BYTES)
        form = Form(await asyncio.to_thread(parse_json, data, request.path[:80]))
    else:
        require_type(
            request,
            ("multipart/form-data", "application/json", "image/", "application/octet-stream"),
            "send multipart/form-data, application/json, or the picture with its image type",
        )
        form = Form({}, await read_upload(request))
    query = {key: value for key, value in request.query.items()}
    fields = {**query, **form.fields}
    if "mask" in fields:
        raise _no_mask()
    for name in fields:
        if name not in known:
            raise BadRequest(f"unknown field {name[:40]!r} (known: {', '.join(known)})")
    pictures = [name for name in PICTURE_FIELDS if name in fields] + (["image"] if form.picture else [])
    if len(pictures) > 1:
        raise BadRequest(f"{' and '.join(pictures)}: send one picture per request")
    return Form(fields, form.picture)


async def _read_multipart(request: web.Request) -> Form:
    if request.content_length is not None and request.content_length > FORM_BYTES:
        raise TooLarge(f"{request.path[:80]}: the body is over {FORM_BYTES // 1024} KiB; send less")
    fields: dict[str, object] = {}
    picture: bytes | None = None
    budget = FORM_BYTES
    try:
        reader = await request.multipart()
        for _ in range(MAX_PARTS + 1):
            part = await reader.next()
            if part is None:
                return Form(fields, picture)
            if not hasattr(part, "read_chunk"):
                raise BadRequest("multipart: nested multipart parts are not accepted")
            name = "image" if part.name == "image[]" else part.name or ""  # the SDK's list form
            if name == "mask":
                raise _no_mask()
            data = bytearray()
            while chunk := await part.read_chunk(64 * 1024):
                data += chunk
                budget -= len(chunk)
                if budget < 0:
                    raise TooLarge(
                        f"{request.path[:80]}: the body is over {FORM_BYTES // 1024} KiB; send less"
                    )
            if name in fields or (picture is not None and name.startswith("image")):
                raise BadRequest(f"multipart: the field {name[:40]!r} came twice; send it once")
            if part.filename is not None or name == "image" and not _looks_textual(data):
                picture = bytes(data)
                if name != "image":
                    raise BadRequest(f"multipart: a file in field {name[:40]!r}; send the picture as 'image'")
                continue
            if len(data) > MAX_FIELD and name not in PICTURE_FIELDS:
                raise BadRequest(f"multipart: the field {name[:40]!r} is over {MAX_FIELD} characters")
            fields[name] = data.decode("utf-8")
        raise BadRequest(f"multipart: more than {MAX_PARTS} parts")
    except HTTPProblem:
        raise
    except UnicodeDecodeError:
        raise BadRequest("multipart: a text field is not UTF-8; send files with a file name") from None
    except Exception as err:
        # aiohttp's complaints about a broken form (ValueError, KeyError for a missing boundary,
        # payload errors...) are the client's to fix: reading a form runs no code of ours.
        reason = str(err)[:80] or type(err).__name__
        raise BadRequest(f"multipart: the form is malformed ({reason})") from None


def _no_mask() -> BadRequest:
    return BadRequest("mask: not used (the network finds the subject itself); send only the image")


def _looks_textual(data: bytearray) -> bool:
    """A picture sent as a text field (curl -F image=<file) is bytes; base64 or a data: URL is text."""
    try:
        text = data[:64].decode("ascii")
    except UnicodeDecodeError:
        return False
    return text.isprintable()
