"""The opening handshake: an HTTP/1.1 request head read with h11, checked against RFC 6455
section 4.2.1, and the ``101 Switching Protocols`` answer. No I/O policy lives here beyond
reading one request and writing one response; the server bounds the time.

A request that is not a WebSocket upgrade gets an HTTP error response with a short plain-text
body and ``Connection: close``, never a dropped socket.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Sequence
from typing import Final

import attrs
import h11
import trio
from wsproto.utilities import generate_accept_token

__all__ = [
    "HandshakeRefused",
    "UpgradeRequest",
    "accept_response",
    "is_upgrade",
    "new_connection",
    "read_request_head",
    "read_upgrade_request",
    "refuse",
    "upgrade_request",
]

#: Bound on the request head (h11's incomplete-event limit): longer heads get 431.
MAX_REQUEST_HEAD: Final = 16 * 1024


@attrs.frozen(slots=True)
class UpgradeRequest:
    """A checked WebSocket upgrade request."""

    target: str
    """The request target, query string included."""
    headers: tuple[tuple[bytes, bytes], ...]
    """The request headers, names lower-cased."""
    key: bytes
    """``Sec-WebSocket-Key``."""
    subprotocols: tuple[str, ...]
    """``Sec-WebSocket-Protocol`` values the client proposed."""
    host: str | None
    """The ``Host`` header (lower-cased), if any."""
    origin: str | None
    """The ``Origin`` header, if any (browsers always send one)."""
    trailing: bytes
    """Bytes the client sent after the head (its first frames, if it did not wait)."""


class HandshakeRefused(Exception):
    """The request was answered with an HTTP error (the connection then ends)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    values = [v for n, v in headers if n == name]
    return b", ".join(values) if values else None


def _tokens(value: bytes | None) -> set[bytes]:
    if value is None:
        return set()
    return {t.strip().lower() for t in value.split(b",")}


def _check(method: bytes, headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, tuple[str, ...]]:
    """The key and subprotocols of a valid upgrade; HandshakeRefused otherwise."""
    if method != b"GET":
        raise HandshakeRefused(405, "only GET upgrades to a WebSocket")
    if b"websocket" not in _tokens(_header(headers, b"upgrade")):
        raise HandshakeRefused(426, "this server speaks WebSocket: send an upgrade request")
    if b"upgrade" not in _tokens(_header(headers, b"connection")):
        raise HandshakeRefused(400, "missing Connection: Upgrade")
    if _header(headers, b"sec-websocket-version") != b"13":
        raise HandshakeRefused(426, "unsupported Sec-WebSocket-Version (13 is supported)")
    key = _header(headers, b"sec-websocket-key")
    try:
        valid_key = key is not None and len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key or key is None:
        raise HandshakeRefused(400, "missing or invalid Sec-WebSocket-Key")
    protocols = _header(headers, b"sec-websocket-protocol")
    subprotocols = tuple(
        p.strip().decode("ascii", "replace") for p in (protocols or b"").split(b",") if p.strip()
    )
    return key, subprotocols


async def read_upgrade_request(
    stream: trio.abc.Stream, *, receive_size: int = 4096
) -> UpgradeRequest:
    """Read one request head from ``stream``. A valid WebSocket upgrade is returned (not yet
    answered: see :func:`accept_response`); anything else is answered here with an HTTP error
    and raises :class:`HandshakeRefused`. Raises ``trio.BrokenResourceError`` (or
    ``ClosedResourceError``) if the client leaves first. The caller bounds the time."""
    conn = new_connection()
    refused: HandshakeRefused | None = None
    try:
        event = await read_request_head(stream, conn, receive_size)
    except h11.RemoteProtocolError as exc:
        refused = HandshakeRefused(exc.error_status_hint, f"bad request: {exc}")
    if refused is not None:
        await refuse(stream, conn, refused)
        raise refused
    return await upgrade_request(stream, conn, event)


def new_connection() -> h11.Connection:
    """A server-side h11 connection with the request head bounded (MAX_REQUEST_HEAD)."""
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)


def is_upgrade(event: h11.Request) -> bool:
    """Whether a request asks for a WebSocket (``Upgrade: websocket``): it is then checked
    as an opening handshake; anything else is a plain HTTP request."""
    return b"websocket" in _tokens(_header(event.headers, b"upgrade"))


async def read_request_head(
    stream: trio.abc.Stream, conn: h11.Connection, receive_size: int = 4096
) -> h11.Request:
    """Read the next request head. Raises ``h11.RemoteProtocolError`` for a malformed or
    too long head (see its ``error_status_hint``) and ``trio.BrokenResourceError`` when the
    client leaves first. The caller bounds the time."""
    return await _next_request(stream, conn, receive_size)


async def upgrade_request(
    stream: trio.abc.Stream, conn: h11.Connection, event: h11.Request
) -> UpgradeRequest:
    """Check the request head ``event`` as a WebSocket opening handshake: a valid one is
    returned (with the bytes that followed it); otherwise the request is answered with an
    HTTP error and :class:`HandshakeRefused` is raised."""
    headers = tuple((n, v) for n, v in event.headers)
    refused: HandshakeRefused | None = None
    try:
        key, subprotocols = _check(event.method, headers)
    except HandshakeRefused as exc:
        refused = exc
    if refused is not None:
        await refuse(stream, conn, refused)
        raise refused
    # An upgrade request has no body; h11 pauses after it and keeps what followed.
    while (nxt := conn.next_event()) is not h11.PAUSED:
        if nxt is h11.NEED_DATA:  # pragma: no cover - a GET upgrade has no body
            no_body = HandshakeRefused(400, "an upgrade request has no body")
            await refuse(stream, conn, no_body)
            raise no_body
    trailing, _ = conn.trailing_data
    host = _header(headers, b"host")
    origin = _header(headers, b"origin")
    return UpgradeRequest(
        target=event.target.decode("ascii", "replace"),
        headers=headers,
        key=key,
        subprotocols=subprotocols,
        host=host.decode("ascii", "replace").lower() if host is not None else None,
        origin=origin.decode("ascii", "replace") if origin is not None else None,
        trailing=bytes(trailing),
    )


async def _next_request(
    stream: trio.abc.Stream, conn: h11.Connection, receive_size: int
) -> h11.Request:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(receive_size)
            if not data:
                raise trio.BrokenResourceError("client left during the handshake")
            conn.receive_data(bytes(data))
        elif isinstance(event, h11.Request):
            return event
        else:  # pragma: no cover - the first event of a server connection is a Request
            raise trio.BrokenResourceError("client left during the handshake")


def accept_response(request: UpgradeRequest) -> bytes:
    """The ``101 Switching Protocols`` response for ``request``."""
    accept: bytes = generate_accept_token(request.key)
    return (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


async def refuse(stream: trio.abc.Stream, conn: h11.Connection, refused: HandshakeRefused) -> None:
    """Answer the request with ``refused``'s status and reason (plain text,
    ``Connection: close``)."""
    body = (refused.reason + "\n").encode("ascii", "replace")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if refused.status == 426:
        headers += [(b"upgrade", b"websocket"), (b"sec-websocket-version", b"13")]
    try:
        data = conn.send(h11.Response(status_code=refused.status, headers=headers))
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return  # h11 cannot answer in this state: the stream is just closed
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
