"""Wiring for `streamer serve`: the model, a smoother and compositor per peer, and the web server.

The engine (and so the model input size) is shared by every peer; smoothing and compositing
state and parameters are each peer's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket

from streamer.config import JobConfig, merge_params
from streamer.errors import ConfigError
from streamer.live.api import ImageAPI
from streamer.live.app import LiveServer
from streamer.live.backgrounds import BackgroundFolder
from streamer.live.http_guard import Access
from streamer.live.params import ServeParams
from streamer.live.source_hub import SourceHub
from streamer.live.worker import InferenceWorker
from streamer.pipeline.stages import Finisher
from streamer.signals import exit_status, install_stop_handlers


def build_server(
    config: JobConfig, source: str | None = None, engine=None, params: ServeParams | None = None
) -> LiveServer:
    """A LiveServer for `config`; `engine` (a MattingEngine) is loaded from config.model when None.

    The source and the backgrounds folder are checked before the model is loaded, so a wrong
    path fails at once.
    """
    params = params or ServeParams(source=source)
    if source is not None and not params.webrtc:
        raise ConfigError("--source is previewed over WebRTC: drop --no-webrtc, or drop --source")
    backgrounds = BackgroundFolder(params.backgrounds) if params.backgrounds else None
    hub = None
    if source is not None:
        from streamer.sources.open import open_source

        hub = SourceHub(lambda: open_source(source))
    try:
        engine = engine if engine is not None else load_engine(config.model)
    except BaseException:
        if hub is not None:
            hub.close_now()
        raise

    def resize(size: tuple[int, int]):
        # The engine reads its input size on every call, so it changes in place (no weight
        # reload), between two batches of the worker thread: every peer gets the new size.
        engine.params = merge_params(engine.params, "model", {"size": size})
        engine.size = engine.params.size
        return engine

    worker = InferenceWorker(engine, resize=resize, size=tuple(config.model.size))
    return LiveServer(
        worker,
        finisher_factory(config.composite, config.smoothing, engine.device),
        hub=hub,
        propagation=config.propagation,
        access=Access(frozenset(params.allowed_hosts), params.admin_token),
        max_size=params.max_size or tuple(config.model.size),
        backgrounds=backgrounds,
        api=ImageAPI(worker, params),
        webrtc=params.webrtc,
    )


def load_engine(params):
    from streamer.engine import MattingEngine

    return MattingEngine.from_params(params)


def finisher_factory(composite, smoothing, device):
    """Makes each peer's own smoother and compositor, starting from the server's settings."""
    from streamer.compose.compositor import Compositor
    from streamer.smoothing import TemporalSmoother

    return lambda: Finisher(TemporalSmoother(smoothing, device), Compositor(composite, device))


def camera_note(params: ServeParams) -> str | None:
    """What a page opened from another device will meet: browsers lend the camera only to a
    secure context (https, or a page on the browser's own machine)."""
    if params.source or not params.webrtc or params.host == "localhost":
        return None
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(params.host).is_loopback:
            return None
    return (
        "a browser on another device lends its camera only to https pages: open "
        f"http://127.0.0.1:{params.port} on this machine, put the page behind an https proxy, "
        "or preview an input of this machine with --source"
    )


def serve(params: ServeParams, config: JobConfig) -> int:
    """Run the page until Ctrl-C or SIGTERM; every peer is closed on the way out."""

    check_port_free(params)
    server = build_server(config, source=params.source, params=params)
    host = f"[{params.host}]" if ":" in params.host else params.host
    url = f"http://{host}:{params.port}"
    if params.webrtc:
        what = f"previewing {params.source}" if params.source else "matting the browser's camera"
        print(f"streamer: serving {url} ({what}); press Ctrl-C to stop", flush=True)
        if (note := camera_note(params)) is not None:
            print(f"streamer: note: {note}", flush=True)
    key = " (with the API key: Authorization: Bearer KEY)" if params.api_key else ""
    stop = "" if params.webrtc else "; press Ctrl-C to stop"
    print(f"streamer: image API at {url}/v1/images/edits and {url}/v1/matte{key}{stop}", flush=True)
    if params.admin_token:
        print(f"streamer: the operator's page (may change the model size): {url}/#admin=<--admin-token>")
    return asyncio.run(_serve_until_signal(server.build(), params))


async def _serve_until_signal(app, params: ServeParams) -> int:
    """Serve until Ctrl-C or SIGTERM, then close every peer; the exit status names the signal
    (130, 143), as a shell's job ended by one would (service managers read it)."""
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    stops: list[int] = []
    stopped = asyncio.Event()

    def on_signal(signum: int) -> None:
        stops.append(signum)
        stopped.set()

    undo = install_stop_handlers(asyncio.get_running_loop(), on_signal)
    try:
        await web.TCPSite(runner, params.host, params.port).start()
        await stopped.wait()
    finally:
        undo()
        await runner.cleanup()
    return exit_status(stops[0])


def check_port_free(params: ServeParams) -> None:
    # Fail before loading the model, with a fix, rather than with aiohttp's OSError traceback.
    try:
        with socket.create_server((params.host, params.port)):
            pass
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {params.port} on {params.host} is in use (stop the other server or choose --port)"
            ) from None
        raise ConfigError(
            f"cannot listen on {params.host}:{params.port}: {err.strerror} (check --host)"
        ) from None
