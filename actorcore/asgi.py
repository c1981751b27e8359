"""Mount actorcore in an ASGI 3 server or app: ``actorcore.asgi.app(registry)``.

The application serves actorcore's WebSocket routes (``/actors/...``) through the registry's
:class:`~actorcore.Dispatcher`, exactly as actorcore's own server does: the same check points,
hibernation, close codes and drain. Each ASGI WebSocket becomes a
:class:`~actorcore.conn.Transport` (:class:`AsgiTransport`) handed to
:meth:`Dispatcher.handle <actorcore.Dispatcher.handle>`, the entry point the server uses.
Written for and tested with hypercorn's trio worker (any ASGI server running on trio will do:
the app awaits trio primitives). Nothing here imports an ASGI server.

Routing: a WebSocket whose raw path (after ``root_path``) starts with ``/actors/`` is
actorcore's; it is routed on the percent-encoded path (``raw_path``) as the server routes the
request target, so a key with ``/`` or ``%`` in it names the same actor as over the server.
Anything else goes to ``fallback`` (another ASGI app) if given; otherwise an HTTP request gets
404 and a WebSocket is refused before its upgrade (hypercorn answers 403).

Refusals on an actor route are as the server's: the upgrade is accepted and the close frame
carries the code (``docs/close-codes.md``), including the ``Origin`` check (1008
``auth.forbidden``, same default as :class:`~actorcore.ws.server.ServerOptions`).

Lifespan: on ``lifespan.startup`` the app runs the registry for the server's lifetime if it is
not running yet (so ``hypercorn --worker-class trio module:app`` works as it is), and drains
it on ``lifespan.shutdown``; a ``fallback`` app gets its lifespan events too (its startup after
the registry's, its shutdown before). An embedder that runs the registry itself keeps it: the
app then only serves. hypercorn runs the lifespan shutdown only after its ``graceful_timeout``
for open connections: when it then cancels a connection, the app sends 1012
``runtime.shutdown`` (shielded, bounded) before the socket goes. To drain first (every
client gets its 1012 while actors still answer), shut the registry down before the server
stops (see ``docs/dispatcher.md``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote, unquote

import trio

from . import closecodes
from .closecodes import CloseCode
from .conn import TransportClosed
from .registry import Registry
from .request import ClientAddress, ConnectRequest
from .ws.dispatch import Dispatcher
from .ws.origin import OriginPolicy, is_loopback_name

__all__ = ["ASGIApp", "AsgiTransport", "app"]

log = logging.getLogger("actorcore.asgi")

# Typed loosely enough that the app type-checks as hypercorn's app (TypedDict messages) and
# as a Starlette-style mount (MutableMapping messages) alike.
Scope = Mapping[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Any], Awaitable[None]]
ASGICallable = Callable[[Any, Any, Any], Awaitable[None]]
"""Any ASGI 3 application (the type of ``fallback``)."""

#: What a WebSocket path starts with (after ``root_path``) to be actorcore's.
ROUTE_PREFIX: Final = "/actors/"

#: Bound on the 1012 frame sent when the ASGI server cancels a connection (its reader is gone
#: by then, so no answer is awaited).
CANCEL_CLOSE_TIMEOUT: Final = 1.0


class AsgiTransport:
    """One accepted ASGI WebSocket as the dispatcher's :class:`~actorcore.conn.Transport`.

    The ASGI server answers the peer's close frame and pings itself. One task at a time waits
    in the ASGI ``receive``; another caller (:meth:`close` waiting for the peer's answer while
    the read loop also reads) waits for it to leave and then reads in turn. Both drop what
    arrives after our close frame, as the dispatcher does.

    What ASGI cannot do: report the peer's close code faithfully (hypercorn 0.18 reports a
    client's close as 1006, or 1000 after our own close), put a close frame on the wire without
    awaiting (:meth:`start_close` is always False), and drop the socket (:meth:`abort` ends the
    transport: a blocked ``receive`` and sends waiting their turn fail with TransportClosed;
    a write the ASGI server has begun is its own, hypercorn shields it; the server closes the
    socket when the app returns).
    """

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._closed: tuple[int, str] | None = None
        """The connection ended (the peer's disconnect, or abort): code and reason."""
        self._reader_left: trio.Event | None = None
        """Set when the task waiting in the ASGI ``receive`` leaves it (None: nobody waits)."""
        self._read_scope: trio.CancelScope | None = None
        self._sends: set[trio.CancelScope] = set()
        self._send_lock = trio.Lock()
        self._close_sent = False

    @property
    def open(self) -> bool:
        """Neither ended nor closed by us (no close frame sent)."""
        return self._closed is None and not self._close_sent

    def _end(self, code: int, reason: str) -> None:
        if self._closed is None:
            self._closed = (code, reason)

    def _error(self) -> TransportClosed:
        code, reason = self._closed if self._closed is not None else (1006, "")
        return TransportClosed(code, reason)

    async def receive(self) -> str | bytes:
        """The next whole message; TransportClosed once the peer is gone."""
        while True:
            if self._closed is not None:
                raise self._error()
            if self._reader_left is not None:
                # One reader at a time (see the class docstring): take over when it leaves,
                # whether it got a message, the disconnect, or was cancelled.
                await self._reader_left.wait()
                continue
            message: Message | None = None
            left = self._reader_left = trio.Event()
            try:
                with trio.CancelScope() as self._read_scope:
                    message = await self._receive()
            finally:
                self._reader_left = None
                self._read_scope = None
                left.set()
            if message is None:
                continue  # abort cancelled the read
            kind = message.get("type")
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    return str(text)
                data = message.get("bytes")
                if data is not None:
                    return bytes(data)
            elif kind == "websocket.disconnect":
                self._end(int(message.get("code", 1005)), str(message.get("reason") or ""))

    async def send(self, message: str | bytes) -> None:
        """Send one message; TransportClosed if the connection is gone, closed or aborted."""
        event: dict[str, Any] = {"type": "websocket.send"}
        event["bytes" if isinstance(message, bytes) else "text"] = message
        await self._send_event(event)

    async def _send_event(self, event: Message, *, closing: bool = False) -> None:
        """Send ``event`` in turn (nothing may follow a close); :meth:`abort` cancels it."""
        with trio.CancelScope() as scope:
            self._sends.add(scope)
            try:
                async with self._send_lock:
                    if not self.open:
                        raise self._error()
                    if closing:
                        self._close_sent = True  # nothing is sent after it
                    await self._send(event)
            except (OSError, RuntimeError) as exc:  # an ASGI server's "connection is gone"
                self._end(1006, "")
                raise TransportClosed(1006, "") from exc
            finally:
                self._sends.discard(scope)
        if scope.cancelled_caught:
            raise self._error()

    def start_close(self, code: int, reason: str) -> bool:
        """ASGI has no way to send without awaiting: ``close`` follows."""
        return False

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame (once) and wait until the peer is gone; the caller bounds it."""
        if self.open:
            try:
                await self._send_event(
                    {"type": "websocket.close", "code": code, "reason": reason}, closing=True
                )
            except TransportClosed:
                return
        while self._closed is None:
            try:
                await self.receive()  # dropped: nothing is delivered after a close
            except TransportClosed:
                return

    async def send_close(self, close: CloseCode) -> None:
        """Send a close frame without waiting for the answer, if nothing closed yet (the ASGI
        server finishes the handshake, or drops the socket, once the app returns)."""
        if self.open:
            with contextlib.suppress(TransportClosed):
                await self._send_event(
                    {"type": "websocket.close", "code": close.code, "reason": close.reason},
                    closing=True,
                )

    async def abort(self) -> None:
        """End the transport now: a blocked receive and waiting sends fail with
        TransportClosed."""
        self._end(1006, "")
        if self._read_scope is not None:
            self._read_scope.cancel()
        for scope in list(self._sends):
            scope.cancel()
        await trio.lowlevel.checkpoint()


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("ascii", "replace")
    return None


def _raw_path(scope: Scope) -> str:
    """The percent-encoded request path (``raw_path``; re-encoded from ``path`` if the ASGI
    server gives none, where an encoded ``/`` can no longer be told from a separator)."""
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw).decode("latin-1")
    return quote(str(scope.get("path", "")), safe="/!$&'()*+,;=:@-._~")


def _below_root(raw_path: str, root_path: str) -> str:
    """``raw_path`` without the (decoded) ``root_path`` it starts with, segment by segment;
    unchanged if it does not start with it (a proxy that strips the prefix itself)."""
    root = root_path.rstrip("/").split("/")
    if len(root) <= 1:
        return raw_path
    segments = raw_path.split("/")
    if len(segments) < len(root) or [unquote(s) for s in segments[: len(root)]] != root:
        return raw_path
    return "/" + "/".join(segments[len(root) :])


def _require_trio(kind: str) -> None:
    """Raise a RuntimeError that says so when the ASGI server does not run on trio."""
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        message = (
            "actorcore.asgi runs on trio: serve it with a trio worker "
            "(hypercorn --worker-class trio module:app)"
        )
        if kind == "lifespan":  # hypercorn does not log why a lifespan failed
            log.error(message)
        raise RuntimeError(message) from None


class ASGIApp:
    """An ASGI 3 application serving a registry's actors; made by :func:`app`."""

    def __init__(
        self,
        registry: Registry,
        dispatcher: Dispatcher,
        *,
        fallback: ASGICallable | None,
        allowed_origins: Iterable[str] | None,
        close_timeout: float,
    ) -> None:
        self.registry = registry
        """The registry served."""
        self.dispatcher = dispatcher
        """The dispatcher the connections go to (``dispatcher.connections`` counts them)."""
        self.fallback = fallback
        """Where every other request goes (None: 404, or 403 for a WebSocket)."""
        self.close_timeout = close_timeout
        allowed = None if allowed_origins is None else tuple(allowed_origins)
        self._origins = {
            loopback: OriginPolicy.make(allowed, loopback=loopback) for loopback in (False, True)
        }
        self._warned_not_running = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        _require_trio(kind)
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind == "websocket":
            full = _raw_path(scope)
            path = _below_root(full, str(scope.get("root_path") or ""))
            if path.startswith(ROUTE_PREFIX):
                await self._websocket(scope, path, full, receive, send)
                return
        if self.fallback is not None:
            await self.fallback(scope, receive, send)
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
        else:
            raise ValueError(f"actorcore.asgi: unsupported ASGI scope type {kind!r}")

    # ---------------------------------------------------------------- WebSockets

    async def _websocket(
        self, scope: Scope, path: str, full: str, receive: Receive, send: Send
    ) -> None:
        first = await receive()
        if first.get("type") != "websocket.connect":
            return
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        suffix = "?" + query if query else ""
        headers = tuple((bytes(k).lower(), bytes(v)) for k, v in scope.get("headers", ()))
        client = scope.get("client")
        request = ConnectRequest(
            path=full + suffix,
            headers=headers,
            subprotocols=tuple(scope.get("subprotocols", ())),
            client=ClientAddress(str(client[0]), int(client[1])) if client else None,
        )
        transport = AsgiTransport(receive, send)
        accepted = False

        async def accept() -> AsgiTransport:
            nonlocal accepted
            await send({"type": "websocket.accept"})
            accepted = True
            return transport

        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await accept()
            with trio.move_on_after(self.close_timeout):
                await transport.close(refusal.code, refusal.reason)
            return
        try:
            await self.dispatcher.handle(path + suffix, request, accept)
        finally:
            if accepted and transport.open:
                # Cancelled from outside: the ASGI server stops (hypercorn cancels its
                # connections at the end of its graceful_timeout, before the lifespan shutdown
                # drains the registry); the client is told to come back later. Otherwise the
                # handler ended without a close frame (as the server, 1000).
                cancelled = trio.current_effective_deadline() == -math.inf
                leftover = closecodes.RUNTIME_SHUTDOWN if cancelled else closecodes.NORMAL
                with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_CLOSE_TIMEOUT):
                    await transport.send_close(leftover)

    def _refusal(self, scope: Scope, headers: tuple[tuple[bytes, bytes], ...]) -> CloseCode | None:
        """What actorcore's server refuses before the dispatcher, as far as ASGI tells."""
        # As the server's policy for its listeners: is the socket that accepted loopback?
        server = scope.get("server")
        loopback = server is not None and is_loopback_name(str(server[0]))
        origin = _header(headers, b"origin")
        host = _header(headers, b"host")
        if not self._origins[loopback].allows(origin, host.lower() if host else None):
            log.info("refused an upgrade from origin %r", (origin or "")[:100])
            return closecodes.FORBIDDEN
        registry = self.registry
        if not registry.running and not registry.draining:
            if not self._warned_not_running:
                self._warned_not_running = True
                log.error(
                    "actorcore.asgi: the registry is not running: serve the app with its "
                    "lifespan, or run the registry yourself (`async with registry:`)"
                )
            return closecodes.INTERNAL_ERROR
        return None

    # ---------------------------------------------------------------- lifespan

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the registry (unless someone else does) and the fallback's lifespan: the
        registry starts first and stops last, so the fallback may use it throughout."""
        message = await receive()
        if message.get("type") != "lifespan.startup":
            return
        phase = "startup"
        answer: dict[str, Any] = {"type": "lifespan.shutdown.complete"}
        async with trio.open_nursery() as nursery:
            other = None
            if self.fallback is not None:
                other = _Lifespan(self.fallback, scope)
                await nursery.start(other.run)
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if not self.registry.running:
                        await stack.enter_async_context(self.registry)
                    reply = await other.ask("lifespan.startup") if other is not None else None
                    if reply is not None and reply.get("type") == "lifespan.startup.failed":
                        answer = dict(reply)
                    else:
                        await send({"type": "lifespan.startup.complete"})
                        phase = "shutdown"
                        await receive()  # lifespan.shutdown
                        reply = await other.ask("lifespan.shutdown") if other else None
                        if reply is not None and reply.get("type") == "lifespan.shutdown.failed":
                            answer = dict(reply)
                    # Leaving the block drains a registry the app runs (1012 to every client
                    # still connected).
            except Exception as exc:
                log.exception("the registry failed")
                answer = {"type": f"lifespan.{phase}.failed", "message": repr(exc)}
            nursery.cancel_scope.cancel()  # the fallback has answered (or has no lifespan)
        await send(answer)


class _Lifespan:
    """The fallback app's lifespan, driven by ours."""

    def __init__(self, fallback: ASGICallable, scope: Scope) -> None:
        self._app = fallback
        self._scope = scope
        self._inbox, self._outbox = trio.open_memory_channel[Message](math.inf)
        self._answer: Message | None = None
        self._changed = trio.Event()
        self._ended = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await self._app(self._scope, self._outbox.receive, self._reply)
        except Exception:
            # ASGI: an app without lifespan support raises; the server goes on without it.
            log.info("the fallback app does not support lifespan", exc_info=True)
        finally:
            self._ended = True
            self._changed.set()

    async def _reply(self, message: Message) -> None:
        self._answer = message
        self._changed.set()
        await trio.lowlevel.checkpoint()

    async def ask(self, kind: str) -> Message | None:
        """Send ``kind`` and wait for the answer; None if the app has ended (no lifespan)."""
        if self._ended:
            await trio.lowlevel.checkpoint()
            return None
        self._answer = None
        self._changed = trio.Event()
        self._inbox.send_nowait({"type": kind})
        await self._changed.wait()
        return self._answer


def app(
    registry: Registry,
    *,
    fallback: ASGICallable | None = None,
    allowed_origins: Iterable[str] | None = None,
    max_connections: int = 10_000,
    close_timeout: float | None = None,
) -> ASGIApp:
    """An ASGI 3 application serving ``registry``'s actors over WebSockets (``/actors/...``;
    see the module docstring).

    - ``fallback``: an ASGI app for every other request (and lifespan event).
    - ``allowed_origins``: browser origins that may connect, as the server's option of that
      name (None: same origin only; ``["*"]``: any).
    - ``max_connections``: the :class:`~actorcore.Dispatcher`'s bound (1013 past it).
    - ``close_timeout``: bound on the close handshakes of a drain (default as the server's:
      the largest ``close_timeout`` of the registry's actors, at least 2 s).
    """
    if close_timeout is None:
        # As serve() does for its dispatcher.
        definitions = registry.definitions.values()
        close_timeout = max([2.0, *(d.options.close_timeout for d in definitions)])
    dispatcher = Dispatcher(registry, max_connections=max_connections, close_timeout=close_timeout)
    return ASGIApp(
        registry,
        dispatcher,
        fallback=fallback,
        allowed_origins=allowed_origins,
        close_timeout=close_timeout,
    )
