"""The WebSocket server front end: listeners, the opening handshake, per-client limits,
keepalive, and a drain that closes before it cancels.

Shape (after hypercorn's trio worker): listeners and connection handlers run in separate
nurseries. Each TCP connection is one task: the handshake is read with h11
(:mod:`actorcore.ws.handshake`), the upgraded connection is framed by wsproto
(:class:`~actorcore.ws.connection.WebSocketConnection`), and the dispatcher's read loop reads
it directly (no reader task per connection). One keepalive task pings every open connection
each ``ping_interval`` and drops the peers that stay silent for ``ping_timeout``.

On shutdown the listeners stop first, every connection gets its 1012 close frame
(concurrently, bounded), actors then sleep with their state saved, and only then is anything
cancelled.

Every resource a client can make the server hold is bounded (see ``docs/security.md``):
upgraded connections and HTTP connections together (``max_connections``), connections per
client address (``max_connections_per_client``), handshakes in progress (``max_handshakes``,
each bounded by ``handshake_timeout``), the request head (16 KiB), a message and its fragments
(``max_message_size``, ``fragment_timeout``), an HTTP request (its body by the actor's
``max_message_size``, its time by ``http_request_timeout``) and a kept-alive HTTP connection
(``http_keepalive_timeout``, ``http_max_requests``).

The first request head of a connection decides what it is: a WebSocket upgrade goes to the
dispatcher (``/actors/...``) or the inspector (``/inspector/ws``); any other request is HTTP
(:mod:`actorcore.http`: health, readiness, metrics, actions, ``on_request``, the inspector),
on the same listener.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import heapq
import itertools
import logging
import os
import ssl
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

import attrs
import h11
import trio
from wsproto import ConnectionType
from wsproto.connection import Connection as WSProtoConnection

from .. import closecodes
from ..conn import TransportClosed
from ..http.app import HttpApp, text_answer
from ..http.connection import HttpConnection, HttpLimits
from ..http.inspector import Inspector
from ..http.metrics import Metrics
from ..registry import host_of
from ..request import ClientAddress, ConnectRequest
from .connection import WebSocketConnection
from .dispatch import Dispatcher
from .handshake import (
    HandshakeRefused,
    UpgradeRequest,
    accept_response,
    is_upgrade,
    new_connection,
    read_request_head,
    refuse,
    upgrade_request,
)
from .origin import OriginPolicy, is_loopback_name
from .routes import route_name

if TYPE_CHECKING:
    from ..registry import Registry

__all__ = ["ServerOptions", "ServerStatistics", "WebSocketServer", "serve", "serve_listeners"]

log = logging.getLogger("actorcore.ws")

#: Bytes asked of the socket per read. Not trio's 64 KiB default: CPython allocates the whole
#: buffer for each read, and thousands of idle connections each pinning a remnant of a 64 KiB
#: block fragment the heap (the soak measured +20 MB in 10 minutes); with 4 KiB reads it
#: stays flat.
RECEIVE_BUFFER: Final = 4096

#: ``accept()`` errors that mean "out of a resource, try again" (as in trio.serve_listeners).
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)
#: The accept loop's backoff on those errors: doubles from the first to the last value.
ACCEPT_BACKOFF: Final = (0.01, 1.0)

#: Connections of an address already at its limit that are still answered with a close frame
#: (1013) at one time; more from that address are closed at once, before any handshake.
_REFUSALS_PER_CLIENT: Final = 8


@attrs.frozen(kw_only=True)
class ServerOptions:
    """The server's limits and timers (the keyword arguments of :func:`serve`)."""

    max_connections: int = 10_000
    """Upgraded connections at once; more are refused with 1013 ``actor.overloaded``."""
    max_connections_per_client: int = 256
    """Connections (handshaking or open) from one client address; more are refused with 1013
    ``actor.overloaded``. Streams without an address (in-memory) are not counted."""
    max_handshakes: int = 1024
    """Handshakes in progress at once, apart from upgraded connections; at the limit the
    server stops accepting until one ends (the kernel's backlog holds the rest)."""
    handshake_timeout: float = 10.0
    """Bound on a TLS and WebSocket opening handshake."""
    ping_interval: float = 20.0
    """Seconds between keepalive pings to every open connection (0 disables them)."""
    ping_timeout: float = 20.0
    """A peer that sends nothing for this long after a ping is dropped as lost (0: never)."""
    fragment_timeout: float = 30.0
    """Bound on the time from a message's first fragment to its last (1008
    ``message.incomplete`` past it)."""
    allowed_origins: tuple[str, ...] | None = None
    """Browser origins that may connect (``*``: any); None: same-origin only (see
    :mod:`actorcore.ws.origin`)."""
    ssl_context: ssl.SSLContext | None = None
    """Serve ``wss://`` directly with this server-side context."""
    http_request_timeout: float = 30.0
    """Bound on one HTTP request, from its head to its answer written (408 past it)."""
    http_keepalive_timeout: float = 5.0
    """An HTTP connection idle this long between requests is closed."""
    http_max_requests: int = 100
    """Requests answered on one HTTP connection before it is closed (keep-alive)."""
    metrics: bool = True
    """Serve ``GET /metrics`` and count what it reports (False: 404, nothing counted)."""
    inspector: bool = False
    """Serve the live inspector at ``/inspector`` (see ``docs/http.md``)."""
    inspector_token: str | None = None
    """The inspector's token (``?token=`` or ``Authorization: Bearer``); None: only
    loopback clients may use it."""

    def __attrs_post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_connections_per_client",
            "max_handshakes",
            "http_max_requests",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "handshake_timeout",
            "fragment_timeout",
            "http_request_timeout",
            "http_keepalive_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("ping_interval", "ping_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be 0 (off) or positive")


@attrs.frozen
class ServerStatistics:
    """A snapshot of :meth:`WebSocketServer.statistics`."""

    connections: int
    """Upgraded connections open now."""
    handshakes: int
    """Handshakes in progress now."""
    clients: int
    """Client addresses with at least one connection."""
    refused_per_client: int
    """Connections refused because their address was at ``max_connections_per_client``."""
    refused_origin: int
    """Upgrades refused because of their ``Origin``."""
    refused_handshakes: int
    """Requests answered with an HTTP error or that failed their handshake."""
    handshake_timeouts: int
    """Handshakes cut by ``handshake_timeout``."""
    pings_sent: int
    """Keepalive pings sent."""
    peers_lost: int
    """Connections dropped because their peer did not answer a ping in time."""
    accept_errors: int
    """``accept()`` failures for lack of descriptors or memory (the loop backed off)."""
    http_connections: int = 0
    """HTTP connections open now (counted with upgraded ones against ``max_connections``)."""


class _Slots:
    """A counter with a wait for ``count < limit`` (the handshake bound)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._freed = trio.Event()

    async def wait_free(self) -> None:
        while self.count >= self.limit:
            await self._freed.wait()
        await trio.lowlevel.checkpoint()

    def take(self) -> None:
        self.count += 1

    def give(self) -> None:
        self.count -= 1
        if self.count < self.limit:
            self._freed.set()
            self._freed = trio.Event()


def _peer(stream: trio.abc.Stream) -> ClientAddress | None:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return None
    try:
        name = stream.socket.getpeername()
    except OSError:
        return None
    if isinstance(name, tuple) and len(name) >= 2:
        return ClientAddress(str(name[0]), int(name[1]))
    return None


def _listener_is_loopback(listener: trio.abc.Listener[Any]) -> bool:
    if not isinstance(listener, trio.SocketListener):
        return False
    name = listener.socket.getsockname()
    return isinstance(name, tuple) and is_loopback_name(str(name[0]))


class WebSocketServer:
    """A running server: its listeners, its bound port and its statistics."""

    def __init__(
        self,
        registry: Registry,
        dispatcher: Dispatcher,
        listeners: Sequence[trio.abc.Listener[Any]],
        options: ServerOptions,
        close_timeout: float,
    ) -> None:
        self.registry = registry
        self.dispatcher = dispatcher
        self.listeners = list(listeners)
        """The listeners being served."""
        self.options = options
        self._close_timeout = close_timeout
        loopback = bool(self.listeners) and all(map(_listener_is_loopback, self.listeners))
        self._origins = OriginPolicy.make(options.allowed_origins, loopback=loopback)
        self.metrics: Metrics | None = Metrics(registry) if options.metrics else None
        """The Prometheus metrics (None when ``metrics=False``)."""
        self.inspector: Inspector | None = (
            Inspector(registry, self, token=options.inspector_token) if options.inspector else None
        )
        """The live inspector (None unless ``inspector=True``)."""
        self.http = HttpApp(registry, self._origins, metrics=self.metrics, inspector=self.inspector)
        """Answers the HTTP requests."""
        if self.metrics is not None:
            self.metrics.http_requests = self.http.requests
        self._http_limits = HttpLimits(
            request_timeout=options.http_request_timeout,
            keepalive_timeout=options.http_keepalive_timeout,
            max_requests=options.http_max_requests,
        )
        self._http: set[HttpConnection] = set()
        self._closing = False
        self._handshakes = _Slots(options.max_handshakes)
        self._per_client: collections.Counter[str] = collections.Counter()
        self._refusing: collections.Counter[str] = collections.Counter()
        self._open: set[WebSocketConnection] = set()
        self._ping_ids = itertools.count()
        self._keepalive: list[tuple[float, int, WebSocketConnection, float | None]] = []
        """(when, sequence, connection, when its unanswered ping went out): the keepalive's
        schedule, one entry per open connection."""
        self._keepalive_seq = itertools.count()
        self._keepalive_wake: trio.Event | None = None
        self._stats = dict.fromkeys(
            (
                "refused_per_client",
                "refused_origin",
                "refused_handshakes",
                "handshake_timeouts",
                "pings_sent",
                "peers_lost",
                "accept_errors",
            ),
            0,
        )

    @property
    def port(self) -> int:
        """The bound TCP port (RuntimeError if the listeners have none, or several)."""
        ports = set()
        for listener in self.listeners:
            if isinstance(listener, trio.SocketListener):
                name = listener.socket.getsockname()
                if isinstance(name, tuple):
                    ports.add(int(name[1]))
        if len(ports) != 1:
            raise RuntimeError(f"listeners have {len(ports)} ports")
        return ports.pop()

    def statistics(self) -> ServerStatistics:
        """Counts of connections, handshakes and refusals."""
        return ServerStatistics(
            connections=len(self._open),
            handshakes=self._handshakes.count,
            clients=len(self._per_client),
            **self._stats,
            http_connections=len(self._http),
        )

    def stop_http(self) -> None:
        """The registry stopped: kept-alive HTTP connections close (idle ones now, busy ones
        after their answer, which says ``Connection: close``), and inspector WebSockets."""
        self._closing = True
        if self.inspector is not None:
            self.inspector.stop()
        for connection in self._http:
            if connection.idle_scope is not None:
                connection.idle_scope.cancel()

    # ---------------------------------------------------------------- accepting

    async def run(
        self,
        handler_nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Accept on every listener until cancelled; connections run in ``handler_nursery``."""
        async with trio.open_nursery() as nursery:
            for listener in self.listeners:
                nursery.start_soon(self._accept_loop, listener, handler_nursery)
            task_status.started(self)
            await trio.sleep_forever()

    async def _accept_loop(
        self, listener: trio.abc.Listener[Any], handlers: trio.Nursery
    ) -> NoReturn:
        backoff = 0.0
        failures = 0
        async with listener:
            while True:
                await self._handshakes.wait_free()
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    # Out of descriptors or memory: back off (doubling) and log once per
                    # episode, not once per attempt.
                    self._stats["accept_errors"] += 1
                    if failures == 0:
                        log.error(
                            "accept failed (%s): backing off; raise the open-file limit or "
                            "lower max_connections",
                            os.strerror(exc.errno or 0),
                        )
                    failures += 1
                    backoff = min(max(backoff * 2, ACCEPT_BACKOFF[0]), ACCEPT_BACKOFF[1])
                    await trio.sleep(backoff)
                    continue
                if failures:
                    log.warning("accepting again after %d failed accept() calls", failures)
                    failures = 0
                    backoff = 0.0
                self._admit(stream, handlers)

    def _admit(self, stream: trio.abc.Stream, handlers: trio.Nursery) -> None:
        """Start the connection's task, or close the stream at once if its address is
        flooding (at its limit, with its refusals already in progress)."""
        client = _peer(stream)
        host = client.host if client is not None else None
        limit = self.options.max_connections_per_client
        over = host is not None and self._per_client[host] >= limit
        if over and host is not None and self._refusing[host] >= _REFUSALS_PER_CLIENT:
            self._stats["refused_per_client"] += 1
            if isinstance(stream, trio.SocketStream):
                stream.socket.close()
                return
        if host is not None:
            self._per_client[host] += 1
            if over:
                self._refusing[host] += 1
        self._handshakes.take()
        handlers.start_soon(self._handle, stream, client, over)

    # ---------------------------------------------------------------- one connection

    async def _handle(
        self, stream: trio.abc.Stream, client: ClientAddress | None, over: bool
    ) -> None:
        conn: WebSocketConnection | None = None
        handshaking = True
        try:
            if self.options.ssl_context is not None:
                stream = trio.SSLStream(
                    stream, self.options.ssl_context, server_side=True, https_compatible=True
                )
            request: UpgradeRequest | None = None
            http_head: h11.Request | None = None
            h11_conn = new_connection()
            with trio.move_on_after(self.options.handshake_timeout) as scope:
                try:
                    head = await read_request_head(stream, h11_conn, RECEIVE_BUFFER)
                    if is_upgrade(head):
                        request = await upgrade_request(stream, h11_conn, head)
                    else:
                        http_head = head
                except h11.RemoteProtocolError as exc:
                    self._stats["refused_handshakes"] += 1
                    status = exc.error_status_hint
                    self.http.count_bad_head(status)
                    await refuse(stream, h11_conn, HandshakeRefused(status, f"bad request: {exc}"))
                except HandshakeRefused as refused:
                    self._stats["refused_handshakes"] += 1
                    self.http.count_bad_head(refused.status)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the client left (or its TLS failed) during the handshake
            if scope.cancelled_caught:
                self._stats["handshake_timeouts"] += 1
            self._handshakes.give()
            handshaking = False
            if http_head is not None:
                request = await self._serve_http(stream, h11_conn, http_head, client, over)
            if request is None:
                return
            conn = WebSocketConnection(
                stream,
                WSProtoConnection(ConnectionType.SERVER, trailing_data=request.trailing),
                max_message_size=self._max_message_size(request.target),
                fragment_timeout=self.options.fragment_timeout,
                receive_size=RECEIVE_BUFFER,
                client=client,
            )
            async with trio.open_nursery() as nursery:
                await self._serve(conn, request, over, nursery)
        except Exception:
            # A bug in one connection's tasks must not end the accept loop, and with it
            # every connection of the server.
            log.exception("connection crashed; closing its stream")
        finally:
            if handshaking:
                self._handshakes.give()
            with trio.CancelScope(shield=True):  # bounded: a socket closes at once
                if conn is not None:
                    self._open.discard(conn)
                    if not conn.closed:
                        await conn.abort()
                else:
                    await _close_stream(stream)
            if client is not None:
                self._release(client.host, over)

    async def _serve_http(
        self,
        stream: trio.abc.Stream,
        h11_conn: h11.Connection,
        head: h11.Request,
        client: ClientAddress | None,
        over: bool,
    ) -> UpgradeRequest | None:
        """Serve an HTTP connection (counted against ``max_connections`` with the upgraded
        ones); a WebSocket upgrade asked on it later is returned to :meth:`_handle`."""
        connection = HttpConnection(
            stream,
            h11_conn,
            self.http,
            self._http_limits,
            client=client,
            receive_size=RECEIVE_BUFFER,
            closing=lambda: self._closing or self.registry.draining,
        )
        full = len(self._open) + len(self._http) >= self.options.max_connections
        if over or full:
            if over:
                self._stats["refused_per_client"] += 1
            target = head.target.decode("ascii", "replace")
            self.http.count(target, 503)
            answer = text_answer(503, "overloaded\n", [(b"retry-after", b"1")])
            with trio.move_on_after(self.options.handshake_timeout):
                await connection.refuse(answer)
            return None
        self._http.add(connection)
        try:
            return await connection.run(head)
        finally:
            self._http.discard(connection)

    def _release(self, host: str, over: bool) -> None:
        counts = self._per_client
        counts[host] -= 1
        if counts[host] <= 0:
            del counts[host]
        if over:
            self._refusing[host] -= 1
            if self._refusing[host] <= 0:
                del self._refusing[host]

    async def _serve(
        self,
        conn: WebSocketConnection,
        request: UpgradeRequest,
        over: bool,
        nursery: trio.Nursery,
    ) -> None:
        refusal: closecodes.CloseCode | None = None
        # HTTP connections count against max_connections too (the dispatcher counts only
        # the upgraded ones, and refuses those past it itself).
        full = bool(self._http) and (
            len(self._open) + len(self._http) >= self.options.max_connections
        )
        if over or full:
            if over:
                self._stats["refused_per_client"] += 1
            refusal = closecodes.OVERLOADED
        elif not self._origins.allows(request.origin, request.host):
            self._stats["refused_origin"] += 1
            log.info("refused an upgrade from origin %r", (request.origin or "")[:100])
            refusal = closecodes.FORBIDDEN
        if refusal is not None:
            if await self._send_accept(conn, request):
                if full and not over:  # as the dispatcher counts its own 1013
                    host_of(self.registry).counters.closes_by_code[refusal.code] += 1
                with trio.move_on_after(self._close_timeout), contextlib.suppress(TransportClosed):
                    await conn.close(refusal.code, refusal.reason)
            return
        if self.inspector is not None and self.inspector.owns(request.target):
            if await self._send_accept(conn, request):
                self._open.add(conn)
                try:
                    await self.inspector.serve_websocket(conn, request)
                finally:
                    self._open.discard(conn)
            return

        accepted = False

        async def accept() -> WebSocketConnection:
            nonlocal accepted
            if not await self._send_accept(conn, request):
                raise TransportClosed(1006, "")
            accepted = True
            self._open.add(conn)
            self._keepalive_track(conn)
            return conn

        try:
            await self.dispatcher.handle(
                request.target,
                ConnectRequest(
                    path=request.target,
                    headers=request.headers,
                    subprotocols=request.subprotocols,
                    client=conn.client,
                ),
                accept,
                task_nursery=nursery,
            )
        finally:
            self._open.discard(conn)
            if accepted and not conn.closed:
                # Bounded cleanup: the close handshake the handler did not finish.
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(self._close_timeout),
                    contextlib.suppress(TransportClosed),
                ):
                    await conn.close(1000, "")

    async def _send_accept(self, conn: WebSocketConnection, request: UpgradeRequest) -> bool:
        try:
            with trio.move_on_after(self.options.handshake_timeout) as scope:
                await conn.write(accept_response(request))
        except TransportClosed:
            return False
        return not scope.cancelled_caught

    def _max_message_size(self, target: str) -> int:
        """The route's actor's ``max_message_size`` (the largest of all for a by-id route);
        the dispatcher refuses a bad route itself."""
        definitions = self.registry.definitions
        name = route_name(target)
        definition = definitions.get(name) if name is not None else None
        if definition is not None:
            return definition.options.max_message_size
        return max((d.options.max_message_size for d in definitions.values()), default=1 << 20)

    # ---------------------------------------------------------------- keepalive

    async def keepalive(self) -> NoReturn:
        """Ping every open connection whose peer has sent nothing for ``ping_interval``, and
        drop those that then send nothing within ``ping_timeout`` (so a dead peer goes at
        most ``ping_interval + ping_timeout`` after its last byte). One task for all
        connections: a heap of when each one is next due, re-checked lazily (a connection
        that was heard from meanwhile is pushed back, not pinged)."""
        if self.options.ping_interval <= 0:
            await trio.sleep_forever()
        heap = self._keepalive
        async with trio.open_nursery() as sends:
            while True:
                if not heap:
                    self._keepalive_wake = trio.Event()
                    await self._keepalive_wake.wait()
                    continue
                await trio.sleep_until(heap[0][0])
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    _, _, conn, pinged_at = heapq.heappop(heap)
                    self._keepalive_due(conn, pinged_at, now, sends)

    def _keepalive_track(self, conn: WebSocketConnection) -> None:
        """Schedule ``conn``'s first keepalive check (it has just been upgraded)."""
        if self.options.ping_interval <= 0:
            return
        self._keepalive_push(conn.last_heard + self.options.ping_interval, conn, None)
        wake = self._keepalive_wake
        if wake is not None:
            wake.set()

    def _keepalive_push(
        self, when: float, conn: WebSocketConnection, pinged_at: float | None
    ) -> None:
        heapq.heappush(self._keepalive, (when, next(self._keepalive_seq), conn, pinged_at))

    def _keepalive_due(
        self,
        conn: WebSocketConnection,
        pinged_at: float | None,
        now: float,
        sends: trio.Nursery,
    ) -> None:
        if conn.closed or conn not in self._open:
            return  # forgotten: it left the heap with this pop
        interval, timeout = self.options.ping_interval, self.options.ping_timeout
        if pinged_at is not None and conn.last_heard < pinged_at:
            # Its ping went unanswered for ping_timeout.
            if conn.reading:
                self._stats["peers_lost"] += 1
                log.info("dropping %s: no answer to a ping within the timeout", conn)
                self._open.discard(conn)
                sends.start_soon(conn.abort)
                return
            # The read loop is busy in a hook: that is the application, not the peer.
            self._keepalive_push(now + interval, conn, None)
            return
        due = conn.last_heard + interval
        if due > now:
            # Heard meanwhile. (The same sum decides and schedules: with ``now - last_heard
            # < interval`` rounding could push an entry that is already due, forever.)
            self._keepalive_push(due, conn, None)
            return
        self._stats["pings_sent"] += 1
        payload = next(self._ping_ids).to_bytes(8, "big")
        sends.start_soon(conn.send_ping, payload, timeout if timeout > 0 else interval)
        if timeout > 0:
            self._keepalive_push(now + timeout, conn, now)
        else:
            self._keepalive_push(now + interval, conn, None)


async def _close_stream(stream: trio.abc.Stream) -> None:
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()  # synchronous and idempotent
        return
    with trio.CancelScope(shield=True), trio.move_on_after(2.0):
        await trio.aclose_forcefully(stream)


def _close_timeout(registry: Registry) -> float:
    return max([2.0, *(d.options.close_timeout for d in registry.definitions.values())])


async def serve(  # noqa: ASYNC128 - task_status is passed on to serve_listeners
    registry: Registry,
    host: str | None,
    port: int,
    *,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``registry`` on ``host:port`` until ``registry.shutdown()``; then drain.

    Runs the registry too if it is not already running. ``options`` are the fields of
    :class:`ServerOptions`. ``task_status`` receives the :class:`WebSocketServer`
    (``server.port`` is the bound port).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    await serve_listeners(registry, listeners, task_status=task_status, **options)


async def serve_listeners(
    registry: Registry,
    listeners: Sequence[trio.abc.Listener[Any]],
    *,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Like :func:`serve` on listeners you made (in-memory listeners in tests)."""
    if isinstance(options.get("allowed_origins"), Iterable) and not isinstance(
        options.get("allowed_origins"), tuple
    ):
        options["allowed_origins"] = tuple(options["allowed_origins"])
    server_options = ServerOptions(**options)
    close_timeout = _close_timeout(registry)
    dispatcher = Dispatcher(
        registry, max_connections=server_options.max_connections, close_timeout=close_timeout
    )

    async with trio.open_nursery() as registry_nursery:
        if not registry.running:
            await registry_nursery.start(registry.run)
        server = WebSocketServer(registry, dispatcher, listeners, server_options, close_timeout)
        if server.metrics is not None:
            server.metrics.attach()
        try:
            async with trio.open_nursery() as handler_nursery:
                async with trio.open_nursery() as listener_nursery:
                    # The keepalive stops with the listeners: the drain closes every connection.
                    listener_nursery.start_soon(server.keepalive, name="actorcore keepalive")
                    if server.inspector is not None:
                        listener_nursery.start_soon(
                            server.inspector.run, name="actorcore inspector"
                        )
                    await listener_nursery.start(server.run, handler_nursery)
                    log.info("serving on %s", ", ".join(str(x) for x in server.listeners))
                    task_status.started(server)
                    await registry.wait_shutdown_requested()
                    listener_nursery.cancel_scope.cancel()  # stop accepting
                # Kept-alive HTTP connections are answered during the drain (/readyz says
                # 503, each answer says Connection: close); idle ones close once it is over.
                await registry.wait_stopped()
                server.stop_http()
                # Every connection has had its close frame; what is left is a bounded handshake.
                handler_nursery.cancel_scope.deadline = trio.current_time() + close_timeout
        finally:
            if server.metrics is not None:
                server.metrics.detach()
