"""Pictures named by URL in image API requests (`streamer.live.api`): `data:`, http and https.

A request must not make the server reach what the client cannot: other programs on this
machine, the local network, a cloud's metadata address. So every address a host name resolves
to must be public, checked by the resolver the connection itself uses (the answer cannot change
between the check and the connect), and redirects are followed by hand so that each hop, an
address literal included, goes through the same check. `--allow-local-urls` lifts the check
(for a trusted network). The whole fetch has a time limit and the body a byte limit; no
`file:` or other schemes, no proxy from the environment.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from urllib.parse import unquote_to_bytes, urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from streamer.live.http_guard import BadRequest, Forbidden, TooLarge

MAX_REDIRECTS = 3
MAX_URL = 8192
"""Characters of an http(s) URL (a data: URL is bounded by the request's own size)."""


def is_public(address: str) -> bool:
    """Whether an IP address is one on the public internet (not loopback, private, link-local,
    multicast, reserved or unspecified); IPv4 inside IPv6 is judged as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _refusal(host: str, address: str) -> Forbidden:
    shown = host if host == address else f"{host} ({address})"
    return Forbidden(
        f"url: {shown[:80]} is a local or private address; this server fetches public URLs only "
        "(its operator may start it with --allow-local-urls)"
    )


class PublicResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, and refuses hosts with any non-public address."""

    def __init__(self) -> None:
        self._resolver = ThreadedResolver()
        self.refused: Forbidden | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            if not is_public(result["host"]):
                self.refused = _refusal(host, result["host"])
                raise OSError(f"{host} resolves to a local address")
        return results

    async def close(self) -> None:
        await self._resolver.close()


def decode_data_url(url: str, limit: int) -> bytes:
    """The bytes of a `data:[type][;base64],...` URL."""
    head, comma, payload = url.partition(",")
    if not comma:
        raise BadRequest("url: a data: URL needs a comma before its data (data:image/png;base64,...)")
    if head.lower().endswith(";base64"):
        if len(payload) > limit * 4 // 3 + 4:
            raise TooLarge(f"url: the data: URL holds over {limit // 1024} KiB; send a smaller picture")
        return decode_base64(payload, "url")
    data = unquote_to_bytes(payload)
    if len(data) > limit:
        raise TooLarge(f"url: the data: URL holds over {limit // 1024} KiB; send a smaller picture")
    return data


def decode_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what}: not valid base64; send the file's bytes base64-encoded") from None


async def fetch_image_bytes(url: str, *, limit: int, timeout_s: float, allow_local: bool = False) -> bytes:
    """The body at `url`, at most `limit` bytes, within `timeout_s` seconds (redirects included)."""
    if not isinstance(url, str) or not url.strip():
        raise BadRequest("url: expected the picture's address as a string (http, https or data:)")
    url = url.strip()
    scheme = url.partition(":")[0].lower()
    if scheme == "data":
        return await asyncio.to_thread(decode_data_url, url, limit)  # megabytes: off the event loop
    if scheme not in ("http", "https"):
        raise BadRequest(
            f"url: {scheme[:20]!r} URLs are not fetched; send an http, https or data: URL, or upload the file"
        )
    if len(url) > MAX_URL:
        raise BadRequest(f"url: longer than {MAX_URL} characters")
    resolver = None if allow_local else PublicResolver()
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=2)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:
            async with asyncio.timeout(timeout_s):
                return await _follow(session, url, limit, allow_local)
    except TimeoutError:
        raise BadRequest(
            f"url: no complete answer within {timeout_s:g} s; use a quicker host, or upload the file"
        ) from None
    except (aiohttp.ClientError, OSError, ValueError) as err:
        if resolver is not None and resolver.refused is not None:
            raise resolver.refused from None
        reason = str(err)[:100] or type(err).__name__
        raise BadRequest(f"url: could not fetch it ({reason}); check the address") from None


async def _follow(session: aiohttp.ClientSession, url: str, limit: int, allow_local: bool) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise BadRequest(f"url: {url[:80]!r} is not an http or https address with a host name")
        if not allow_local:
            _check_literal(parsed.host)
        async with session.get(parsed, allow_redirects=False) as response:
            if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                url = urljoin(str(parsed), response.headers["Location"])
                continue
            if response.status != 200:
                raise BadRequest(f"url: the host answered {response.status} {response.reason or ''}".strip())
            if response.content_length is not None and response.content_length > limit:
                raise TooLarge(f"url: the picture is over {limit // 1024} KiB; use a smaller one")
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > limit:
                    raise TooLarge(f"url: the picture is over {limit // 1024} KiB; use a smaller one")
            return bytes(data)
    raise BadRequest(f"url: more than {MAX_REDIRECTS} redirects; give the picture's own address")


def _check_literal(host: str) -> None:
    """An address written in the URL never reaches the resolver: check it here."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    if not is_public(host.strip("[]")):
        raise _refusal(host, host)
