"""Mount actorcore in an ASGI 3 server or app: ``actorcore.asgi.app(registry)``.

The application serves actorcore's WebSocket routes (``/actors/...``) through the registry's
:class:`~actorcore.Dispatcher`, exactly as actorcore's own server does: the same check points,
hibernation, close codes and drain. Each ASGI WebSocket becomes a
:class:`~actorcore.conn.Transport` (:class:`AsgiTransport`); nothing else is different. Written
for and tested with hypercorn's trio worker (any ASGI server running on trio will do; the app
awaits trio primitives).

Routing: a WebSocket whose path (after ``root_path``) starts with ``/actors/`` is actorcore's.
Anything else goes to ``fallback`` (another ASGI app) if given, else an HTTP request gets 404
and a WebSocket is refused before its upgrade (the server answers 403).

Lifespan: on ``lifespan.startup`` the app runs the registry for the server's lifetime if it is
not running yet (so ``hypercorn module:app`` works as it is), and drains it on
``lifespan.shutdown``. An embedder that runs the registry itself keeps it: the app then only
serves. For a graceful stop where every client gets its 1012 ``runtime.shutdown``, drain the
registry *before* the server stops (see ``docs/dispatcher.md``): an ASGI server waits only its
own graceful timeout for open WebSockets, then drops them, before it runs the lifespan
shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from . import closecodes
from .conn import TransportClosed
from .registry import Registry
from .request import ClientAddress, ConnectRequest
from .ws.dispatch import Dispatcher

__all__ = ["ASGIApp", "AsgiTransport", "app"]

log = logging.getLogger("actorcore.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""

ROUTE_PREFIX = "/actors/"


class AsgiTransport:
    """One accepted ASGI WebSocket as the dispatcher's :class:`~actorcore.conn.Transport`.

    The ASGI server answers the peer's close frame and pings itself. What ASGI cannot do:
    report the peer's close code faithfully (hypercorn 0.18 reports a client's close as 1006,
    or 1000 after our own close), and abort a connection without a close frame (``abort``
    cancels sends blocked on a peer that does not read, and ends the transport; the server
    closes the socket when the app returns).
    """

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._closed: TransportClosed | None = None
        self._disconnected = trio.Event()
        self._receiving = False
        self._sends: set[trio.CancelScope] = set()
        self._send_lock = trio.Lock()
        self._close_sent = False

    def _gone(self, code: int, reason: str) -> TransportClosed:
        if self._closed is None:
            self._closed = TransportClosed(code, reason)
            self._disconnected.set()
        return self._closed

    async def receive(self) -> str | bytes:
        """The next whole message; TransportClosed once the peer is gone."""
        while True:
            if self._closed is not None:
                raise self._closed
            self._receiving = True
            try:
                message = await self._receive()
            finally:
                self._receiving = False
            kind = message.get("type")
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    return str(text)
                data = message.get("bytes")
                if data is not None:
                    return bytes(data)
            elif kind == "websocket.disconnect":
                raise self._gone(int(message.get("code", 1005)), str(message.get("reason") or ""))

    async def send(self, message: str | bytes) -> None:
        """Send one message; TransportClosed if the connection is gone or was aborted."""
        if self._closed is not None or self._close_sent:
            raise TransportClosed(*self._closed_args())
        event: Message = {"type": "websocket.send"}
        event["bytes" if isinstance(message, bytes) else "text"] = message
        await self._send_bounded(event)

    def _closed_args(self) -> tuple[int, str]:
        if self._closed is not None:
            return self._closed.code, self._closed.reason
        return 1006, ""

    async def _send_bounded(self, event: Message) -> None:
        """Send ``event``; ``abort`` cancels it (it then raises TransportClosed)."""
        with trio.CancelScope() as scope:
            self._sends.add(scope)
            try:
                async with self._send_lock:
                    await self._send(event)
            except (OSError, RuntimeError) as exc:  # the server's "connection is gone"
                raise TransportClosed(1006, "") from exc
            finally:
                self._sends.discard(scope)
        if scope.cancelled_caught:
            raise TransportClosed(*self._closed_args())

    def start_close(self, code: int, reason: str) -> bool:
        """ASGI has no way to send without awaiting: ``close`` follows."""
        return False

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame (once) and wait until the peer is gone; the caller bounds it."""
        if self._closed is None and not self._close_sent:
            self._close_sent = True
            try:
                await self._send_bounded(
                    {"type": "websocket.close", "code": code, "reason": reason}
                )
            except TransportClosed:
                return
        if self._receiving:
            await self._disconnected.wait()  # the reader sees the disconnect
            return
        while self._closed is None:
            try:
                await self.receive()
            except TransportClosed:
                return

    async def abort(self) -> None:
        """End the transport now: blocked sends fail with TransportClosed."""
        self._gone(1006, "")
        for scope in list(self._sends):
            scope.cancel()
        await trio.lowlevel.checkpoint()


def app(
    registry: Registry,
    *,
    fallback: ASGIApp | None = None,
    max_connections: int = 10_000,
    close_timeout: float = 2.0,
) -> ASGIApp:
    """An ASGI 3 application serving ``registry``'s actors over WebSockets (``/actors/...``;
    see the module docstring). ``max_connections`` and ``close_timeout`` are those of the
    :class:`~actorcore.Dispatcher` it makes (and ``registry`` drains it: 1012 at shutdown)."""
    dispatcher = Dispatcher(registry, max_connections=max_connections, close_timeout=close_timeout)

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(registry, receive, send)
            return
        path = _path(scope)
        if kind == "websocket" and path.startswith(ROUTE_PREFIX):
            await _websocket(dispatcher, scope, path, receive, send)
        elif fallback is not None:
            await fallback(scope, receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": closecodes.NOT_FOUND.code})
        elif kind == "http":
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"9")],
                }
            )
            await send({"type": "http.response.body", "body": b"not found"})

    return application


def _path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", "") or "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


async def _websocket(
    dispatcher: Dispatcher, scope: Scope, path: str, receive: Receive, send: Send
) -> None:
    first = await receive()
    if first.get("type") != "websocket.connect":
        return
    query = bytes(scope.get("query_string", b""))
    target = path + ("?" + query.decode("latin-1") if query else "")
    client = scope.get("client")
    request = ConnectRequest(
        path=target,
        headers=tuple((bytes(k).lower(), bytes(v)) for k, v in scope.get("headers", ())),
        subprotocols=tuple(scope.get("subprotocols", ())),
        client=ClientAddress(str(client[0]), int(client[1])) if client else None,
    )
    transport = AsgiTransport(receive, send)

    async def accept() -> AsgiTransport:
        await send({"type": "websocket.accept"})
        return transport

    await dispatcher.handle(target, request, accept)


async def _lifespan(registry: Registry, receive: Receive, send: Send) -> None:
    """Run ``registry`` from startup to shutdown if nobody else runs it."""
    message = await receive()
    if message.get("type") != "lifespan.startup":
        return
    if registry.running:
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    try:
        async with registry:
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown: leaving the block drains the registry
    except Exception as exc:
        log.exception("the registry failed")
        await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
        return
    await send({"type": "lifespan.shutdown.complete"})
