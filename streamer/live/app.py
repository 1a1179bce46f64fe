"""The aiohttp application behind `streamer serve`: the page, signalling, controls and stats.

Endpoints (JSON unless noted):
  GET  /                 the page (static/index.html); GET /static/... its script and style
  GET  /config           {"mode": "camera"|"source", "size": [h, w], "max_size": [h, w],
                          "backgrounds": [{"name", "mode"}], "composite": {...}, "smoothing": {...},
                          "propagation": {...}}
  POST /offer            {"sdp", "type": "offer"} -> {"sdp", "type": "answer", "peer"}
  POST /close            {"peer"}: hang up and free the peer
  POST /params           {"peer", "composite": {...}, "smoothing": {...}, "propagation": {...},
                          "size": N}; all or nothing
  POST /background?peer= raw image bytes (PNG/JPEG, Content-Type image/*): this peer's background
  GET  /stats?peer=      counters of that peer (delivered fps, latency, drops, keyframe rate, the
                         network's time); "compat": which aiortc patches are in use
                         (streamer.live.aiortc_compat)
  /v1/...                the image API (streamer.live.api), on the same worker; with
                         `webrtc=False` (`serve --no-webrtc`) the only endpoints

What a request may carry, and the one error path for everything else (400, 403, 404, 405, 413
with a one-line JSON reason), is `http_guard`'s job. Peers change only their own look and
propagation; the model size is every peer's, so only the operator changes it (`--admin-token`),
up to `--max-size`. Backgrounds come from an upload or by name from the operator's
`--backgrounds` folder, never by a path in a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from streamer.compose.compositor import MODES
from streamer.config import merge_params
from streamer.live import aiortc_compat
from streamer.live.aiortc_compat import answered_video_codec, release_on_marker, use_live_encoder
from streamer.live.api import ImageAPI
from streamer.live.backgrounds import BackgroundFolder
from streamer.live.core import Settings
from streamer.live.http_guard import (
    MAX_UPLOAD_BYTES,
    Access,
    BadRequest,
    Forbidden,
    decode_image,
    handler_args,
    read_json,
    read_upload,
)
from streamer.live.peer import PeerSession
from streamer.live.source_hub import SourceHub
from streamer.live.worker import InferenceWorker
from streamer.memory import release_freed_memory
from streamer.pipeline.stages import Finisher
from streamer.propagation import PropagationParams

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
KEPT_UPLOADS = 4
"""Background uploads kept per peer: frames in flight may still read the recent ones."""
KEPT_UPLOAD_S = 60.0
"""...and older ones until they have been replaced for this long."""

PARAMS_KEYS = ("peer", "composite", "smoothing", "propagation", "size")
SHARED_KEYS = ("size",)
"""/params keys that change every peer's video: the operator's (admin token) only."""
UPLOADED = "(uploaded picture)"
"""How replies name an uploaded background (its file on the server is nobody's business)."""


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


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def _settings(body: dict, section: str) -> dict:
    value = body.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f'params: {section!r} must be a JSON object of settings, e.g. {{"mode": "blur"}}')
    return value


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
        access: Access | None = None,
        max_size: tuple[int, int] | None = None,
        backgrounds: BackgroundFolder | None = None,
        api: ImageAPI | None = None,
        webrtc: bool = True,
    ) -> None:
        self.worker = worker
        self.api = api
        self.webrtc = webrtc
        self.make_finisher = make_finisher
        self.propagation = propagation or PropagationParams()
        """Each new peer's starting keyframe and propagation settings (a peer may change its own)."""
        self.peers: dict[str, PeerSession] = {}
        self.hub = hub
        self.access = access or Access()
        self.max_size = tuple(max_size or worker.size or ()) or None
        """The largest model size a request may ask for (`--max-size`, default the starting size)."""
        self.backgrounds = backgrounds
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
        # The guard reads bodies itself, each to its own limit; this is only the backstop.
        app = web.Application(
            middlewares=[self.access.middleware()],
            client_max_size=MAX_UPLOAD_BYTES,
            handler_args=handler_args(),
        )
        if self.webrtc:
            app.router.add_get("/", self.index)
            app.router.add_static("/static", STATIC)
            app.router.add_get("/config", self.config)
            app.router.add_post("/offer", self.offer)
            app.router.add_post("/close", self.close)
            app.router.add_post("/params", self.params)
            app.router.add_post("/background", self.background)
            app.router.add_get("/stats", self.stats)
        app.on_startup.append(self._startup)  # the worker starts before the API's own startup
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        if self.api is not None:
            self.api.add_routes(app)
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
        # What the peer held is free now; without this the allocator keeps it for good.
        release_freed_memory()

    def _peer(self, peer_id) -> PeerSession:
        peer = self.peers.get(peer_id) if isinstance(peer_id, str) else None
        if peer is None:
            shown = repr(peer_id)[:40]
            raise BadRequest(f"unknown peer: {shown} (connect first: POST /offer returns the peer id)")
        return peer

    def _public(self, composite: dict) -> dict:
        """Settings as a client may see them: a background by its name, never its path."""
        background = composite.get("background")
        if background:
            path = Path(background)
            composite["background"] = UPLOADED if self.uploads and path.parent == self.uploads else path.name
        return composite

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
                "max_size": list(self.max_size) if self.max_size else None,
                "backgrounds": self.backgrounds.entries() if self.backgrounds else [],
                "composite": self._public(_plain(self._template.compositor.params)),
                "smoothing": _plain(smoother.params) if smoother is not None else None,
                "propagation": _plain(self.propagation),
            }
        )

    async def offer(self, request: web.Request) -> web.Response:
        description = _check_offer(await read_json(request))
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
            reason = str(err)[:120] or type(err).__name__
            raise BadRequest(
                f"offer: the SDP was refused ({reason}); send the offer made by createOffer()"
            ) from None
        answer = pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "peer": peer.id})

    async def close(self, request: web.Request) -> web.Response:
        peer = self._peer((await read_json(request)).get("peer"))
        await peer.close()
        return web.json_response({"closed": peer.id})

    async def params(self, request: web.Request) -> web.Response:
        """Every change is checked first, then all are applied: a bad one changes nothing."""
        body = await read_json(request)
        unknown = [key for key in body if key not in PARAMS_KEYS]
        if unknown:
            shown = repr(unknown[0])[:40]
            raise BadRequest(f"params: unknown key {shown} (known: {', '.join(PARAMS_KEYS)})")
        peer = self._peer(body.get("peer"))
        composite, smoothing = _settings(body, "composite"), _settings(body, "smoothing")
        propagation = _settings(body, "propagation")
        if "background" in composite:
            composite = {**composite, "background": self._named_background(composite["background"])}
        size = self._requested_size(request, body.get("size"))
        # Validates every section, then applies them all; propagation is this peer's own.
        peer.update(composite, smoothing, propagation)
        if size is not None and size != self.worker.requested_size:
            self.worker.set_size(size)  # applied by the worker thread between two batches
        finisher = peer.finisher
        return web.json_response(
            {
                "composite": self._public(_plain(finisher.compositor.params)),
                "smoothing": _plain(finisher.smoother.params) if finisher.smoother is not None else None,
                "propagation": _plain(peer.stream.settings.params),
                "size": list(self.worker.requested_size or ()),
            }
        )

    def _named_background(self, name) -> str | None:
        if name is None:
            return None
        if self.backgrounds is None:
            raise Forbidden(
                "composite.background: this server has no pictures to choose from; upload one "
                "(POST /background), or start the server with --backgrounds FOLDER"
            )
        return str(self.backgrounds.path(name))

    def _requested_size(self, request: web.Request, raw) -> tuple[int, int] | None:
        """The model size asked for, checked: the operator's to change, and within --max-size."""
        if raw is None:
            return None
        if not self.access.is_admin(request):
            raise Forbidden(
                "size: the model size is shared by every viewer, so only the operator changes it "
                "(restart with --size, or send the server's --admin-token)"
            )
        engine_params = getattr(self.worker.engine, "params", None)
        if engine_params is None:
            raise Forbidden("size: this server's model size is fixed")
        size = merge_params(engine_params, "model", {"size": raw}).size
        if self.max_size and (size[0] > self.max_size[0] or size[1] > self.max_size[1]):
            raise BadRequest(
                f"model.size: {size[0]}x{size[1]} is over this server's limit of "
                f"{self.max_size[0]}x{self.max_size[1]} (the operator sets --max-size)"
            )
        return size

    async def background(self, request: web.Request) -> web.Response:
        """Store the picture for this peer and switch it to the image background."""
        peer = self._peer(request.query.get("peer"))
        data = await read_upload(request)
        image = await asyncio.to_thread(decode_image, data)
        if peer.id not in self.peers:
            raise BadRequest("background: the peer closed during the upload")
        # The compositor takes backgrounds by path; one file per peer, replaced on each upload.
        path = self.uploads / f"{peer.id}.{next(self._uploads)}.png"
        await asyncio.to_thread(_save_png, image, path)
        previous = peer.finisher.compositor.params.background
        try:
            peer.update({"background": str(path), "mode": "image"})
        except Exception:
            path.unlink(missing_ok=True)
            raise
        if previous and Path(previous).parent == self.uploads:
            # A frame being composited may still hold an earlier path in its params snapshot (on
            # a starved CPU, for a while), so the last few uploads stay, and older ones only once
            # they have been replaced for a minute; all of a peer's go when it closes.
            kept = sorted(self.uploads.glob(f"{peer.id}.*.png"), key=lambda p: int(p.stem.rsplit(".", 1)[1]))
            replaced_before = time.time() - KEPT_UPLOAD_S
            for old, newer in zip(kept[:-KEPT_UPLOADS], kept[1:], strict=False):
                with contextlib.suppress(OSError):
                    if newer.stat().st_mtime < replaced_before:
                        old.unlink()
        return web.json_response({"background": list(image.shape)})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {**self._peer(request.query.get("peer")).stats(), "compat": aiortc_compat.status()}
        )


def _plain(params) -> dict:
    """A config section (a Params model) as JSON values."""
    return params.model_dump(mode="json")
