"""`streamer serve` over WebRTC: the shared inference worker, an in-process aiortc peer
talking to the aiohttp app, malformed offers, controls, preview mode and clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import re
import socket
import threading
import time
from fractions import Fraction
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from streamer.frame import Frame
from streamer.live.app import LiveServer
from streamer.live.serve import build_server
from streamer.live.worker import InferenceWorker, SlotClosed
from tests.harness import until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """aioice leaves 127.0.0.1 out of host candidates; keep the test traffic on loopback."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.mark.parametrize("size", [(48, 64), (47, 63)])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_composited_pictures_become_video_frames_with_their_timing(size, channels):
    from streamer.live.peer import video_from_output

    picture = torch.zeros(*size, channels, dtype=torch.uint8)
    picture[..., 0] = 200  # a flat colour survives the YUV round trip within a few levels
    picture[size[0] // 2 :, :, :1] = 40  # and so does a straight edge on an even row
    frame = Frame(picture, 1234, Fraction(1, 90000), 0, 0.0)
    video = video_from_output(picture, frame)
    assert (video.pts, video.time_base) == (1234, Fraction(1, 90000))
    # Even sizes are handed over as I420 (what the encoder takes), odd ones as RGB.
    assert video.format.name == ("yuv420p" if size[0] % 2 == 0 else "rgb24")
    shown = torch.from_numpy(video.to_ndarray(format="rgb24")).int()
    expected = picture[..., :3].int() if channels > 1 else picture.int().expand(*size, 3)
    assert shown.shape == (*size, 3)
    assert int((shown - expected).abs().max()) <= 4


async def test_the_track_says_a_frame_is_done_when_the_sender_comes_back_for_more():
    from streamer.live.tracks import LatestFrameTrack

    done = []
    track = LatestFrameTrack(on_done=lambda: done.append(track.sent))
    track.publish(VideoFrame(16, 16), captured_at=time.monotonic())
    await track.recv()
    assert done == []  # pulled, but the sender is still encoding and sending it
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    assert done == [1]
    track.stop()
    with pytest.raises(MediaStreamError):
        await pending


# -- the worker, with an engine the test controls ------------------------------------------------
class GatedEngine:
    """Returns alpha = red channel / 255; each predict waits for the test to open the gate."""

    device = torch.device("cpu")

    def __init__(self, gated: bool = True, patience: float = 10) -> None:
        from streamer.engine import EngineParams

        self.params = EngineParams(variant="lite", size=(64, 64))
        self.calls: list[int] = []
        self.gate = threading.Semaphore(0)
        self.gated = gated
        self.patience = patience

    def predict(self, images):
        if self.gated:
            assert self.gate.acquire(timeout=self.patience), "the test never released the engine"
        if isinstance(images, list):
            self.calls.append(len(images))
            return [image[..., 0].float() / 255 for image in images]
        self.calls.append(images.shape[0] if images.ndim == 4 else 1)
        return images[..., 0].float() / 255


def make_frame(index: int, value: int = 0, size: tuple[int, int] = (8, 8)) -> Frame:
    image = torch.full((*size, 3), value, dtype=torch.uint8)
    return Frame(image, index, Fraction(1, 30), index, time.monotonic())


async def started(engine) -> InferenceWorker:
    worker = InferenceWorker(engine)
    worker.start()
    return worker


async def test_worker_keeps_one_in_flight_and_the_newest_waiting():
    engine = GatedEngine()
    worker = await started(engine)
    slot = worker.open_slot()
    slot.put(make_frame(0))
    await until(lambda: slot.busy, "frame 0 never went into the engine")
    for i in range(1, 6):
        slot.put(make_frame(i))
    assert slot.dropped == 4  # 1..4 replaced while waiting; 5 waits
    engine.gate.release()
    first = await asyncio.wait_for(slot.get(), 30)
    engine.gate.release()
    second = await asyncio.wait_for(slot.get(), 30)
    assert (first.index, second.index) == (0, 5)
    assert engine.calls == [1, 1]
    await worker.aclose()


async def test_worker_batches_all_peers_into_one_predict():
    engine = GatedEngine()
    worker = await started(engine)
    blocker, *peers = [worker.open_slot() for _ in range(4)]
    blocker.put(make_frame(0))
    await until(lambda: blocker.busy, "frame 0 never went into the engine")
    for n, slot in enumerate(peers):
        slot.put(make_frame(10 + n, value=10 * n))
    engine.gate.release()
    engine.gate.release()
    results = [await asyncio.wait_for(slot.get(), 30) for slot in peers]
    assert engine.calls == [1, 3]
    for n, frame in enumerate(results):
        assert frame.index == 10 + n
        assert torch.allclose(frame.alpha, torch.full((8, 8), 10 * n / 255))
    await worker.aclose()


async def test_worker_mixed_sizes_and_closed_slot():
    worker = await started(GatedEngine(gated=False))
    a, b = worker.open_slot(), worker.open_slot()
    a.put(make_frame(0, 255, (4, 6)))
    b.put(make_frame(1, 0, (8, 8)))
    assert (await a.get()).alpha.shape == (4, 6)
    assert (await b.get()).alpha.shape == (8, 8)
    waiter = asyncio.ensure_future(a.get())
    await asyncio.sleep(0.01)
    a.close()
    with pytest.raises(SlotClosed):
        await asyncio.wait_for(waiter, 30)
    assert worker.peers == 1
    await worker.aclose()
    assert not any(t.name == "streamer-infer" for t in threading.enumerate())


# -- an in-process browser stand-in ---------------------------------------------------------------
class PictureTrack(VideoStreamTrack):
    """A paced 30 fps camera showing a fixed picture."""

    def __init__(self, picture: np.ndarray) -> None:
        super().__init__()
        self.picture = picture

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(self.picture, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class OneFrameTrack(PictureTrack):
    """A camera that sends one frame and then nothing more."""

    async def recv(self) -> VideoFrame:
        if self.sent:
            await asyncio.Event().wait()
        self.sent = True
        return await super().recv()

    sent = False


def halves(height: int = 96, width: int = 128) -> np.ndarray:
    """Left half red, right half blue."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:, : width // 2, 0] = 255
    picture[:, width // 2 :, 2] = 255
    return picture


HALVES = halves()


class Client:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base
        self.pc = RTCPeerConnection()
        self.frames: list[VideoFrame] = []
        self.arrived = asyncio.Event()
        self.peer: str | None = None
        self._reader: asyncio.Task | None = None

        @self.pc.on("track")
        def _track(track) -> None:
            self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track) -> None:
        try:
            while True:
                self.frames.append(await track.recv())
                self.arrived.set()
        except MediaStreamError:
            pass

    async def connect(
        self, picture: np.ndarray | None = HALVES, track: VideoStreamTrack | None = None
    ) -> dict:
        if track is not None:
            self.pc.addTrack(track)
        elif picture is None:
            self.pc.addTransceiver("video", direction="recvonly")
        else:
            self.pc.addTrack(PictureTrack(picture))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        async with self.http.post(f"{self.base}/offer", json=offer) as response:
            answer = await response.json()
            assert response.status == 200, answer
        self.peer = answer["peer"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return answer

    async def wait_frames(self, count: int, timeout: float = 30) -> list[np.ndarray]:
        start = len(self.frames)
        deadline = time.monotonic() + timeout
        while len(self.frames) < start + count:
            assert time.monotonic() < deadline, f"only {len(self.frames) - start} of {count} frames came back"
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), max(0.01, deadline - time.monotonic()))
        return [frame.to_ndarray(format="rgb24") for frame in self.frames[start : start + count]]

    async def shows(self, ok, what: str, timeout: float = 30) -> np.ndarray:
        """The first frame from now on for which `ok(picture)` holds (a change has landed); the
        frame after it must hold too (it stays). Frames composited before the change may still be
        on their way, however many a loaded machine has in flight."""
        deadline = time.monotonic() + timeout
        while not ok((await self.wait_frames(1, timeout))[0]):
            assert time.monotonic() < deadline, f"no frame showed {what} within {timeout} s"
        following = (await self.wait_frames(1, timeout))[0]
        assert ok(following), f"{what} showed once, then went away"
        return following

    async def post(self, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
        url, body = f"{self.base}{path}", {"peer": self.peer, **body}
        async with self.http.post(url, json=body, headers=headers) as response:
            return response.status, await response.json()

    async def close(self, hang_up: bool = True) -> None:
        if hang_up and self.peer:
            await self.post("/close", {})
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


@pytest.fixture(scope="module")
def engine(recipe_weights):
    """The real engine: lite network with the recipe weights at 64x64 on the CPU."""
    from streamer.engine import EngineParams, MattingEngine

    params = EngineParams(variant="lite", weights=str(recipe_weights("lite")), size=(64, 64), device="cpu")
    return MattingEngine.from_params(params)


# -- the app under test ---------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def serving(server: LiveServer):
    runner = web.AppRunner(server.build())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            yield http, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


ADMIN_TOKEN = "operator-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def make_server(engine=None, source: str | None = None, **serve) -> LiveServer:
    """The app as `streamer serve` builds it, starting in mode matte without smoothing;
    `serve` holds further ServeParams (the admin token, --max-size, --backgrounds...)."""
    from streamer.config import load_config
    from streamer.live.serve import ServeParams

    model = {"variant": "lite", "size": "64x64", "device": "cpu"}
    config = load_config(
        None, {"model": model, "composite": {"mode": "matte"}, "smoothing": {"enabled": False}}
    )
    params = ServeParams(**{"source": source, "admin_token": ADMIN_TOKEN, **serve})
    return build_server(config, source=source, engine=engine or GatedEngine(gated=False), params=params)


def expected_output(engine, composite) -> np.ndarray:
    """What the server should send for HALVES: the Compositor applied to the engine's alpha."""
    from streamer.compose.compositor import Compositor

    image = torch.from_numpy(HALVES)
    output = Compositor(composite)(image, engine.predict(image), 0.0).numpy()
    return np.repeat(output, 3, axis=2) if output.shape[2] == 1 else output


def mean_error(picture: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.abs(picture.astype(np.float32) - expected.astype(np.float32)).mean(axis=(0, 1))


def assert_close(picture: np.ndarray, expected: np.ndarray, tolerance: float = 10.0) -> None:
    # VP8 both ways blurs edges and shifts colours a little: compare means, not pixels.
    error = np.abs(picture.astype(np.float32) - expected.astype(np.float32)).mean(axis=(0, 1))
    assert error.max() < tolerance, f"mean error per channel {error} (tolerance {tolerance})"


async def test_frames_flow_both_ways_and_controls_apply_live(engine):
    from streamer.compose.compositor import CompositeParams

    server = make_server(engine, max_size=96)
    async with serving(server) as (http, base):
        client = Client(http, base)
        await client.connect()
        # Frames come back from the first on; those before the network's first result have no
        # matte (black here), then the matte shows.
        matte = expected_output(engine, CompositeParams(mode="matte"))
        first = (await client.wait_frames(1))[0]
        assert first.shape == HALVES.shape
        await client.shows(lambda picture: mean_error(picture, matte).max() < 10, "the matte")
        status, reply = await client.post("/params", {"composite": {"mode": "color", "color": "#ff00ff"}})
        assert status == 200 and reply["composite"]["color"] == [255, 0, 255]
        expected = expected_output(engine, CompositeParams(mode="color", color=(255, 0, 255)))
        await client.shows(lambda picture: mean_error(picture, expected).max() < 10, "magenta")
        status, reply = await client.post("/params", {"composite": {"mode": "sepia"}})
        assert status == 400 and reply["error"].startswith("composite.mode: bad value 'sepia': expected")
        status, reply = await client.post("/params", {"smoothing": {"strength": 0.9, "enabled": "on"}})
        assert status == 200 and reply["smoothing"]["strength"] == 0.9 and reply["smoothing"]["enabled"]
        async with http.get(f"{base}/stats", params={"peer": client.peer}) as response:
            stats = await response.json()
        # fps is a rate over the last 2 s (RateMeter, tested on its own clock in test_stats): a
        # starved network may have sent nothing in that window, so only its presence is checked.
        assert stats["sent"] >= 6 and stats["received"] >= stats["sent"] and stats["fps"] >= 0
        assert stats["latency_ms_p50"] is not None and stats["size"] == [64, 64]
        assert stats["video"] == "VP8 (streamer encoder)"
        assert stats["compat"]["encoder"] == stats["compat"]["jitter_buffer"] == "ok"
        assert stats["keyframes"] >= 1 and stats["infer_ms"] >= 0 and "keyframe_hz" in stats
        status, reply = await client.post("/params", {"propagation": {"keyframe_every": 2}})
        assert status == 200 and reply["propagation"]["keyframe_every"] == 2
        assert server.peers[client.peer].stream.settings.params.keyframe_every == 2
        status, reply = await client.post("/params", {"propagation": {"keyframe_every": 0}})
        assert status == 400 and reply["error"].startswith("propagation.keyframe_every")
        # The model size is the shared engine's: it changes between two batches, for every peer,
        # so only the operator (the admin token) changes it, up to --max-size.
        status, reply = await client.post("/params", {"size": 96})
        assert status == 403 and "operator" in reply["error"]
        status, reply = await client.post("/params", {"size": 128}, ADMIN)
        assert status == 400 and "over this server's limit of 96x96" in reply["error"]
        status, reply = await client.post("/params", {"size": 96}, ADMIN)
        assert status == 200 and reply["size"] == [96, 96]
        # Frames keep flowing on propagated mattes meanwhile: wait for the worker's next batch.
        deadline = time.monotonic() + 20
        while server.worker.size != (96, 96):
            assert time.monotonic() < deadline, "the worker never took the new size"
            await client.wait_frames(1)
        assert engine.size == (96, 96)
        await client.post("/params", {"size": 64}, ADMIN)
        await client.wait_frames(2)
        await client.close()
    assert server.peers == {}


async def test_a_new_peer_sees_frames_before_the_networks_first_pass():
    """A starved CPU may take seconds over the network's first pass: the video starts at once,
    with no matte (the background alone, never the room unmatted), and the matte shows as soon as
    the network is done."""
    from streamer.compose.compositor import CompositeParams

    engine = GatedEngine(patience=120)  # a loaded machine may take a while over three frames
    server = make_server(engine)
    async with serving(server) as (http, base):
        client = Client(http, base)
        await client.connect()
        frames = await client.wait_frames(3)
        assert engine.calls == []  # the network has not finished a pass yet
        black = np.zeros_like(HALVES)  # mode matte: no matte is a black picture
        assert all(mean_error(picture, black).max() < 10 for picture in frames)
        engine.gated = False
        engine.gate.release()
        matte = expected_output(engine, CompositeParams(mode="matte"))
        await client.shows(lambda picture: mean_error(picture, matte).max() < 10, "the matte")
        stats = server.peers[client.peer].stream.stats()
        assert stats["unmatted"] >= 3 and stats["delivered"] > stats["unmatted"]
        await client.close()


async def test_a_lone_frame_is_matted_without_waiting_for_the_next():
    # aiortc's own jitter buffer would hold this frame until a next frame's packets arrived:
    # the server releases a frame on its last (marked) packet instead.
    server = make_server()
    async with serving(server) as (http, base):
        client = Client(http, base)
        await client.connect(track=OneFrameTrack(HALVES))
        peer = server.peers[client.peer]
        deadline = time.monotonic() + 20
        while peer.track.published == 0:
            assert time.monotonic() < deadline, (
                f"the frame never reached the worker ({peer.received} received)"
            )
            await asyncio.sleep(0.02)
        assert peer.received == 1
        await client.close()


async def test_peers_share_the_worker_but_not_their_settings():
    from streamer.compose.compositor import CompositeParams

    engine = GatedEngine(gated=False)
    server = make_server(engine)
    async with serving(server) as (http, base):
        grey, magenta = Client(http, base), Client(http, base)
        await grey.connect()
        await magenta.connect()
        assert server.worker.peers == 2
        status, _ = await magenta.post("/params", {"composite": {"mode": "color", "color": "magenta"}})
        assert status == 200
        expected = expected_output(engine, CompositeParams(mode="color", color=(255, 0, 255)))
        await magenta.shows(lambda picture: mean_error(picture, expected).max() < 10, "magenta")
        matte = expected_output(engine, CompositeParams(mode="matte"))
        await grey.shows(lambda picture: mean_error(picture, matte).max() < 10, "the matte")
        assert sum(thread.name == "streamer-infer" for thread in threading.enumerate()) == 1
        await grey.close()
        await magenta.close()
    assert server.worker.peers == 0


async def test_shutdown_closes_every_peer():
    server = make_server()
    async with serving(server) as (http, base):
        clients = [Client(http, base) for _ in range(2)]
        for client in clients:
            await client.connect()
            await client.wait_frames(1)
        peers = list(server.peers.values())
    assert server.peers == {} and all(peer.pc.connectionState == "closed" for peer in peers)
    assert not any(
        thread.name.startswith(("streamer-infer", "streamer-compose")) for thread in threading.enumerate()
    )
    for client in clients:
        await client.close(hang_up=False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"type": "offer"}', 'expected {"sdp"'),
        ('{"sdp": "v=0", "type": "answer"}', 'expected {"sdp"'),
        ('{"sdp": "garbage", "type": "offer"}', "no video section"),
        ('{"sdp": "v=0\\r\\nm=video 9 UDP/TLS/RTP/SAVPF 96\\r\\n", "type": "offer"}', "SDP was refused"),
    ],
)
async def test_malformed_offer_is_a_400_with_one_line(body, message):
    server = make_server()
    async with serving(server) as (http, base):
        headers = {"Content-Type": "application/json"}
        async with http.post(f"{base}/offer", data=body, headers=headers) as response:
            reply = await response.json()
        assert response.status == 400
        assert message in reply["error"] and "\n" not in reply["error"]
        assert server.peers == {}


async def test_offer_without_a_camera_is_refused_in_camera_mode():
    server = make_server()
    async with serving(server) as (http, base):
        client = Client(http, base)
        with pytest.raises(AssertionError, match="sends no video"):
            await client.connect(picture=None)
        await client.close(hang_up=False)
        assert server.peers == {}


async def test_unknown_peer_and_bad_size_are_400():
    async with serving(make_server()) as (http, base):
        async with http.get(f"{base}/stats", params={"peer": "nobody"}) as response:
            assert response.status == 400 and "unknown peer" in (await response.json())["error"]
        client = Client(http, base)
        await client.connect()
        status, reply = await client.post("/params", {"size": 100}, ADMIN)
        assert status == 400 and reply["error"].startswith(
            "model.size: bad value 100: expected two multiples of 32"
        )
        async with http.post(f"{base}/background", params={"peer": client.peer}, data=b"not a picture") as r:
            assert r.status == 400 and "not a PNG, JPEG" in (await r.json())["error"]
        await client.close()


async def test_background_upload_switches_that_peer_to_the_picture():
    from PIL import Image

    server = make_server()
    async with serving(server) as (http, base):
        client = Client(http, base)
        await client.connect()
        png = io.BytesIO()
        Image.new("RGB", (32, 24), (255, 255, 0)).save(png, format="PNG")
        async with http.post(f"{base}/background", params={"peer": client.peer}, data=png.getvalue()) as r:
            assert r.status == 200 and (await r.json())["background"] == [24, 32, 3]
        params = server.peers[client.peer].finisher.compositor.params
        assert params.mode == "image" and Path(params.background).is_file()

        # Alpha is the red channel here: the blue right half is all background, now yellow.
        def yellow_right_half(picture: np.ndarray) -> bool:
            right = picture[:, -40:].reshape(-1, 3).mean(axis=0)
            return right[0] > 200 and right[1] > 200 and right[2] < 60

        await client.shows(yellow_right_half, "the yellow background")
        await client.close()
        assert not Path(params.background).exists()


@pytest.mark.parametrize("replaced_for", [60.0, 0.0])
async def test_older_uploads_stay_while_frames_may_read_them(monkeypatch, replaced_for):
    """The last few uploads always stay; older ones go once replaced for KEPT_UPLOAD_S."""
    from PIL import Image

    from streamer.live import app as app_module

    monkeypatch.setattr(app_module, "KEPT_UPLOAD_S", replaced_for)
    server = make_server()
    async with serving(server) as (http, base):
        client = Client(http, base)
        await client.connect()
        for shade in range(7):
            png = io.BytesIO()
            Image.new("RGB", (16, 12), (shade * 30, 0, 0)).save(png, format="PNG")
            async with http.post(
                f"{base}/background", params={"peer": client.peer}, data=png.getvalue()
            ) as r:
                assert r.status == 200
        files = sorted(server.uploads.glob(f"{client.peer}.*.png"))
        newest = Path(server.peers[client.peer].finisher.compositor.params.background)
        assert newest in files
        assert len(files) == (7 if replaced_for else app_module.KEPT_UPLOADS)
        await client.close()
        assert not list(server.uploads.glob(f"{client.peer}.*.png"))


async def test_page_and_script_are_served_locally():
    async with serving(make_server()) as (http, base):
        async with http.get(base + "/") as response:
            page = await response.text()
        assert response.status == 200 and "/static/app.js" in page and "http" not in page.split("<body>")[1]
        async with http.get(base + "/static/app.js") as response:
            assert response.status == 200 and "RTCPeerConnection" in await response.text()
        async with http.get(base + "/config") as response:
            config = await response.json()
        assert config["mode"] == "camera" and config["composite"]["mode"] == "matte"


def live_counts() -> tuple[int, set[str], int]:
    """Tasks, kinds of threads and RTCPeerConnection objects alive now.

    Pool threads ("asyncio_3", "streamer-compose_1") are counted by pool: pools are bounded and
    reuse their threads, so a per-peer leak would show up as a new name, not a new index."""
    gc.collect()
    tasks = len(asyncio.all_tasks())
    threads = {re.sub(r"_\d+$", "", thread.name) for thread in threading.enumerate()}
    pcs = sum(type(o) is RTCPeerConnection for o in gc.get_objects())
    return tasks, threads, pcs


async def settled_counts(timeout: float = 30) -> tuple[int, set[str], int]:
    """`live_counts()` once it stops changing (a closed peer's tasks end a moment later)."""
    deadline = time.monotonic() + timeout
    counts = live_counts()
    while True:
        await asyncio.sleep(0.2)
        if (now := live_counts()) == counts or time.monotonic() > deadline:
            return now
        counts = now


@pytest.mark.slow
async def test_fifty_connect_disconnect_cycles_leak_nothing():
    # Lifetimes, not pixels: the quick stand-in engine keeps 50 cycles well inside a minute.
    server = make_server()
    async with serving(server) as (http, base):

        async def cycle(n: int) -> None:
            client = Client(http, base)
            await client.connect()
            await client.wait_frames(1)
            # half hang up politely, half just drop the connection
            await client.close(hang_up=n % 2 == 0)

        await cycle(0)  # warm-up: thread pools and caches that live as long as the server
        before = await settled_counts()
        for n in range(50):
            await cycle(n)

        def leaked() -> bool:
            # No more than before: a task of the warm-up still ending when `before` was taken
            # may be gone now, and that is no leak.
            (tasks, threads, pcs), (tasks0, threads0, pcs0) = live_counts(), before
            return tasks > tasks0 or not threads <= threads0 or pcs > pcs0

        await until(  # every 0.2 s: each check collects garbage and scans every object
            lambda: not server.peers and not leaked(),
            "every peer's tasks, threads and connection gone",
            interval=0.2,
        )
        assert server.worker.peers == 0


async def test_preview_of_a_server_side_file(tmp_path, engine):
    from media import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=10, size=(64, 48), fps=25, audio=False)
    server = make_server(engine, source=str(clip))
    async with serving(server) as (http, base):
        async with http.get(base + "/config") as response:
            assert (await response.json())["mode"] == "source"
        client = Client(http, base)
        await client.connect(picture=None)
        # The 10-frame clip loops (the hub plays it on its own clock, whatever the network's
        # speed: on a busy CPU the network, at a lower priority, may return a frame a second).
        deadline = time.monotonic() + 120
        while server.hub._version <= 20:
            assert time.monotonic() < deadline, f"the hub played only {server.hub._version} frames"
            await asyncio.sleep(0.05)
        # What comes back is at the clip's size, in mode matte (grey).
        frames = await client.wait_frames(2, timeout=120)
        assert frames[-1].shape == (48, 64, 3)
        assert np.abs(frames[-1][..., 0].astype(int) - frames[-1][..., 2]).mean() < 8
        assert server.peers[client.peer].video_out == "VP8 (streamer encoder)"  # a send-only answer too
        await client.close()
    assert server.hub._thread is None


def test_serve_options_reach_the_config():
    from streamer.cli import build_parser
    from streamer.commands.serve import config_from_args

    args = build_parser().parse_args(
        ["serve", "--mode", "blur", "--blur", "10", "--smoothing", "off", "--set", "composite.mirror=on"]
    )
    config = config_from_args(args)
    assert (config.composite.mode, config.composite.blur_radius, config.composite.mirror) == (
        "blur",
        10,
        True,
    )
    assert config.smoothing.enabled is False
    assert config.model.size == (512, 512)  # a live default, unless --size or a config file says otherwise
    sized = config_from_args(build_parser().parse_args(["serve", "--size", "256"]))
    assert sized.model.size == (256, 256)


@pytest.mark.parametrize(
    ("settings", "noted"),
    [
        ({}, False),
        ({"host": "localhost"}, False),
        ({"host": "::1"}, False),
        ({"host": "0.0.0.0"}, True),
        ({"host": "192.168.1.20"}, True),
        ({"host": "0.0.0.0", "source": "clip.mp4"}, False),  # no browser camera asked for
        ({"host": "0.0.0.0", "webrtc": False}, False),
    ],
)
def test_serving_beyond_this_machine_says_browsers_lend_cameras_to_https_only(settings, noted):
    from streamer.live.params import ServeParams
    from streamer.live.serve import camera_note

    note = camera_note(ServeParams(**settings))
    assert (note is not None) == noted
    if noted:
        assert "https" in note and "http://127.0.0.1:8080" in note and "--source" in note


def test_serve_reports_a_busy_port_in_one_line(capsys):
    from streamer.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port" in err and err.count("\n") == 1


def test_serve_reports_a_missing_source_before_loading_the_model(capsys, tmp_path):
    from streamer.cli import main

    missing = tmp_path / "nowhere.mp4"
    assert main(["serve", "--port", "0", "--source", str(missing), "--weights", str(tmp_path / "w.pt")]) == 2
    err = capsys.readouterr().err
    assert "nowhere.mp4" in err and err.count("\n") == 1
