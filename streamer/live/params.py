"""The `serve` config section (`streamer serve`, `run --sink webrtc`), apart from the server's
code so that loading a config does not import aiohttp and aiortc."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

from streamer.config import Items, Maybe, Number, Params, Size, Whole


def _host_name(value):
    # 'Cam.LAN' and '[::1]' are how people write them; requests are compared in lower case.
    return value.strip().lower().strip("[]") if isinstance(value, str) else value


HostName = Annotated[str, BeforeValidator(_host_name), Field(pattern=r"^[a-z0-9._:\-]{1,253}$")]


class ServeParams(Params):
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    """Address to listen on; the default keeps the page private to this machine."""
    port: Whole(0, 65535) = 8080
    source: Maybe(str) = None
    """A server-side input to preview (file, webcam:N, image folder); None = the browser's camera."""
    allowed_hosts: Annotated[
        tuple[HostName, ...], Items, Field(description="host names or addresses, e.g. myhost.lan")
    ] = ()
    """Host names the page may be opened by, besides the bound address (behind a proxy, a LAN name)."""
    max_size: Maybe(Size) = None
    """The largest model size an admin request may set; None = the starting size."""
    admin_token: Maybe(Annotated[str, Field(min_length=16)]) = None
    """Secret that lets a request change what every peer shares (the model size); at least 16
    characters, e.g. from `openssl rand -hex 16`."""
    backgrounds: Maybe(str) = None
    """Folder whose pictures and videos the page may pick by name."""
    webrtc: bool = True
    """Serve the page and WebRTC peers; False: the image API only (`--no-webrtc`)."""
    api_key: Maybe(Annotated[str, Field(min_length=16)]) = None
    """Bearer key every image API request must carry (`--api-key`, or STREAMER_API_KEY); at least
    16 characters. None: no key is asked."""
    allow_local_urls: bool = False
    """Let an image API request's `url` name local and private addresses (a trusted network only)."""
    url_timeout: Number(0.1, 300) = 10.0
    """Seconds an image API URL fetch may take, redirects included."""
