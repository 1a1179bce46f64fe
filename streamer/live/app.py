"""The aiohttp application behind `streamer serve`: the page, signalling, controls and stats.

Endpoints (JSON unless noted):
  GET  /                 the page (static/index.html); GET /static/... its script and style
  GET  /config           {"mode": "camera"|"source", "size": [h, w], "composite", "smoothing", "propagation"}
  POST /offer            {"sdp", "type": "offer"} -> {"sdp", "type": "answer", "peer"}
  POST /close            {"peer"}: hang up and free the peer
  POST /params           {"peer", "composite": {...}, "smoothing": {...}, "propagation": {...}, "size": N}
  POST /background?peer= raw image bytes (PNG/JPEG): this peer's background picture
  GET  /stats?peer=      counters of that peer (delivered fps, latency, drops, keyframe rate, the
                         network's time); "compat": which aiortc patches are in use
                         (streamer.live.aiortc_compat)
Mistakes in a request get HTTP 400 with a one-line message naming the problem and the fix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from streamer.compose.compositor import MODES
from streamer.config import update_params
from streamer.errors import ConfigError
from streamer.live import aiortc_compat
from streamer.live.aiortc_compat import answered_video_codec, release_on_marker, use_live_encoder
from streamer.live.core import Settings
from streamer.live.peer import PeerSession
from streamer.live.source_hub import SourceHub
from streamer.live.worker import InferenceWorker
from streamer.pipeline.stages import Finisher
from streamer.propagation import PropagationParams

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")


class BadRequest(Exception):
    """A request the client must fix; becomes HTTP 400 with this one-line message."""


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


@web.middleware
async def _one_line_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except (BadRequest, ConfigError) as err:
        return _bad(str(err))


async def _json_body(request: web.Request) -> dict:
    try:
        body = json.loads(await request.text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(
            f"{request.path}: the body is not valid JSON ({err.msg}); send a JSON object"
        ) from None
    if not isinstance(body, dict):
        raise BadRequest(f"{request.path}: the body must be a JSON object, not {type(body).__name__}")
    return body


def _check_offer(body: dict) -> RTCSessionDescription:
    sdp, kind = body.get("sdp"), body.get("type")
    if not isinstance(sdp, str) or kind != "offer":
        raise BadRequest('offer: expected {"sdp": "<session description>", "type": "offer"}')
    # aiortc accepts any text as an empty description, so check the basics ourselves.
    if not sdp.lstrip().startswith("v=0") or "\nm=video" not in sdp.replace("\r", ""):
        raise BadRequest(
            "offer: the SDP has no video section (m=video); send the offer made by createOffer()"
        )
    return RTCSessionDescription(sdp=sdp, type="offer")


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image.numpy()).save(path)


def decode_image(data: bytes) -> torch.Tensor:
    """uint8 RGB (H, W, 3) from PNG/JPEG/... bytes, or BadRequest."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as picture:
            return torch.from_numpy(np.array(picture.convert("RGB")))
    except (UnidentifiedImageError, OSError) as err:
        raise BadRequest(f"background: not a readable image ({err}); upload a PNG or JPEG file") from None


class LiveServer:
    """State shared by the handlers: the worker, the peers and, in preview mode, the source."""

    def __init__(
        self,
        worker: InferenceWorker,
        make_finisher: Callable[[], Finisher],
        *,
        hub: SourceHub | None = None,
        compose_threads: int = 2,
        propagation: PropagationParams | None = None,
    ) -> None:
        self.worker = worker
        self.make_finisher = make_finisher
        self.propagation = propagation or PropagationParams()
        """Each new peer's starting keyframe and propagation settings (a peer may change its own)."""
        self.peers: dict[str, PeerSession] = {}
        self.hub = hub
        self._uploads = itertools.count(1)
        self.uploads: Path | None = None
        """Folder of uploaded background pictures, while the server runs."""
        self._compose_threads = compose_threads
        self.executor: ThreadPoolExecutor | None = None
        self._template: Finisher | None = None

    @property
    def mode(self) -> str:
        return "camera" if self.hub is None else "source"

    def build(self) -> web.Application:
        app = web.Application(middlewares=[_one_line_errors], client_max_size=32 * 1024**2)
        app.router.add_get("/", self.index)
        app.router.add_static("/static", STATIC)
        app.router.add_get("/config", self.config)
        app.router.add_post("/offer", self.offer)
        app.router.add_post("/close", self.close)
        app.router.add_post("/params", self.params)
        app.router.add_post("/background", self.background)
        app.router.add_get("/stats", self.stats)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        return app

    # -- lifetime -------------------------------------------------------------------------------
    async def _startup(self, app: web.Application) -> None:
        self.executor = ThreadPoolExecutor(self._compose_threads, thread_name_prefix="streamer-compose")
        self.uploads = Path(tempfile.mkdtemp(prefix="streamer-backgrounds-"))
        self.worker.start()
        if self.hub is not None:
            self.hub.start()

    async def _shutdown(self, app: web.Application) -> None:
        await asyncio.gather(*(peer.close() for peer in list(self.peers.values())))

    async def _cleanup(self, app: web.Application) -> None:
        if self.hub is not None:
            await self.hub.aclose()
        await self.worker.aclose()
        if self.executor is not None:
            await asyncio.to_thread(self.executor.shutdown)
        if self.uploads is not None:
            shutil.rmtree(self.uploads, ignore_errors=True)

    def _forget(self, peer: PeerSession) -> None:
        self.peers.pop(peer.id, None)
        if self.uploads is not None:
            for upload in self.uploads.glob(f"{peer.id}.*"):
                upload.unlink(missing_ok=True)

    def _peer(self, peer_id) -> PeerSession:
        peer = self.peers.get(peer_id) if isinstance(peer_id, str) else None
        if peer is None:
            raise BadRequest(f"unknown peer: {peer_id!r} (connect first: POST /offer returns the peer id)")
        return peer

    # -- handlers -------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def config(self, request: web.Request) -> web.Response:
        if self._template is None:
            self._template = self.make_finisher()
        smoother = self._template.smoother
        return web.json_response(
            {
                "mode": self.mode,
                "modes": list(MODES),
                "size": list(self.worker.size) if self.worker.size else None,
                "composite": _plain(self._template.compositor.params),
                "smoothing": _plain(smoother.params) if smoother is not None else None,
                "propagation": _plain(self.propagation),
            }
        )

    async def offer(self, request: web.Request) -> web.Response:
        description = _check_offer(await _json_body(request))
        pc = RTCPeerConnection()
        peer = PeerSession(
            pc,
            self.worker,
            self.make_finisher(),
            self.executor,
            on_closed=self._forget,
            settings=Settings(self.propagation),
        )
        self.peers[peer.id] = peer

        @pc.on("track")
        def _track(track) -> None:
            if track.kind == "video" and self.hub is None and not peer._inputs:
                peer.attach_track(track)
                pc.addTrack(peer.track)

        try:
            await pc.setRemoteDescription(description)
            for receiver in pc.getReceivers():
                if receiver.track is not None and receiver.track.kind == "video":
                    release_on_marker(receiver)
            if self.hub is not None:
                pc.addTrack(peer.track)
                peer.attach_frames(self.hub.frames)
            elif not peer._inputs:
                raise BadRequest(
                    "offer: it sends no video; share a camera (or start the server with --source to preview)"
                )
            await pc.setLocalDescription(await pc.createAnswer())
            codec = answered_video_codec(pc.localDescription.sdp)
            sender = next(s for s in pc.getSenders() if s.track is peer.track)
            ours = use_live_encoder(sender, codec)
            peer.video_out = (
                f"{(codec or 'none').removeprefix('video/')} ({'streamer' if ours else 'aiortc'} encoder)"
            )
        except BadRequest:
            await peer.close()
            raise
        except Exception as err:  # aiortc's complaints about the SDP are the client's to fix
            await peer.close()
            raise BadRequest(
                f"offer: the SDP was refused ({err}); send the offer made by createOffer()"
            ) from None
        answer = pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "peer": peer.id})

    async def close(self, request: web.Request) -> web.Response:
        peer = self._peer((await _json_body(request)).get("peer"))
        await peer.close()
        return web.json_response({"closed": peer.id})

    async def params(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        peer = self._peer(body.get("peer"))
        sections = [body.get(name) or {} for name in ("composite", "smoothing", "propagation")]
        if not all(isinstance(section, dict) for section in sections):
            raise BadRequest(
                "params: 'composite', 'smoothing' and 'propagation' must be JSON objects of settings"
            )
        peer.update(*sections)
        if body.get("size") is not None:
            # Validated like `--size`; applied by the worker thread between two batches.
            model = update_params(self.worker.engine.params, "model", "size", body["size"])
            self.worker.set_size(model.size)
        finisher = peer.finisher
        return web.json_response(
            {
                "composite": _plain(finisher.compositor.params),
                "smoothing": _plain(finisher.smoother.params) if finisher.smoother is not None else None,
                "propagation": _plain(peer.stream.settings.params),
                "size": list(self.worker.requested_size or ()),
            }
        )

    async def background(self, request: web.Request) -> web.Response:
        """Store the picture for this peer and switch it to the image background."""
        peer = self._peer(request.query.get("peer"))
        data = await request.read()
        image = decode_image(data)
        # The compositor takes backgrounds by path; one file per peer, replaced on each upload.
        path = self.uploads / f"{peer.id}.{next(self._uploads)}.png"
        await asyncio.to_thread(_save_png, image, path)
        previous = peer.finisher.compositor.params.background
        peer.update({"background": str(path), "mode": "image"})
        if previous and Path(previous).parent == self.uploads:
            Path(previous).unlink(missing_ok=True)
        return web.json_response({"background": list(image.shape)})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {**self._peer(request.query.get("peer")).stats(), "compat": aiortc_compat.status()}
        )


def _plain(params) -> dict:
    """A parameters dataclass as JSON-friendly values (tensors and paths left out or stringified)."""
    out = {}
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        if isinstance(value, torch.Tensor | np.ndarray):
            continue
        if isinstance(value, Path):
            value = str(value)
        out[field.name] = value
    return out
