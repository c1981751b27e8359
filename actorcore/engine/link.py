"""EnvoyLink: one process's connection to a Rivet engine, as an envoy of it.

The engine speaks the envoy protocol (version :data:`~actorcore.engine.bare.VERSION`, BARE
over one WebSocket, ``/envoys/connect``). The link

* connects with the protocol version, namespace, this process's envoy key, the app version
  and the pool name, subprotocol ``rivet`` (and ``rivet_token.<T>`` with a token), after making
  sure the pool has a runner config (:func:`~actorcore.engine.admin.ensure_runner_config`);
* waits for ``ToEnvoyInit`` (the engine's lost threshold and limits), sends the metadata (the
  registry's actor names), answers every ping;
* hands commands to its handler once each: the engine replays the commands it has no
  acknowledgement for after a reconnect, and the link drops those it has seen (by actor,
  generation and index); it acknowledges what it handed over every ``ack_interval``;
* numbers the events it sends per actor generation (from 0), keeps them until the engine
  acknowledges them, and sends the rest again after a reconnect;
* multiplexes KV requests by request id, each bounded by ``kv_timeout``;
* reconnects with exponential backoff and jitter (to the next of the engine's node URLs, if it
  has several), and when it has been cut off for longer than
  the engine's lost threshold less ``lost_margin`` it tells its handler (``on_lost``): the
  engine is about to give this envoy's actors to another one, so they must stop here first;
* ends with :class:`EnvoyEvicted` if another process connects with the same envoy key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .admin import EngineAdmin, EngineApiError
from .bare import VERSION, BareError, Variant, decode, encode
from .messages_v8 import (
    ActorCheckpoint,
    CommandWrapper,
    EventWrapper,
    MessageId,
    ProtocolMetadata,
    ToEnvoyTunnelMessage,
)

__all__ = [
    "EngineUnavailable",
    "EnvoyEvicted",
    "EnvoyHandler",
    "EnvoyLink",
    "EnvoyOptions",
    "LinkStatistics",
]

log = logging.getLogger("actorcore.engine")

#: Bound on the engine's ``ToEnvoyInit`` after the WebSocket opened.
INIT_TIMEOUT: Final = 10.0
#: Bound on opening the TCP connection, and on the WebSocket handshake.
CONNECT_TIMEOUT: Final = 10.0
#: Bound on the close handshake when a session ends.
CLOSE_TIMEOUT: Final = 0.5
#: A link that stayed up this long resets the reconnect backoff.
STABLE_AFTER: Final = 60.0
#: How often the engine pings an envoy (its ``pegboard.envoy_update_ping_interval``, 3 s by
#: default, plus up to 128 ms of jitter), with slack for scheduling: a connection silent for
#: less than this is not taken for down.
PING_INTERVAL_BOUND: Final = 4.0


class EngineUnavailable(Exception):
    """The engine cannot be reached now (the link is down, or a request timed out)."""


class EnvoyEvicted(Exception):
    """Another process connected with this envoy key; this one must stop."""


@attrs.frozen
class EnvoyOptions:
    """How to reach the engine and how to behave on its link."""

    url: str
    """The engine's base URL, ``http://host:port`` (the guard port, 6420 by default)."""
    fallback_urls: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """Other nodes of the same engine cluster (sharing PostgreSQL and NATS). After a failed
    connect, or a connection that ended, the link tries the next URL of :attr:`urls`, in
    turn."""
    namespace: str = "default"
    pool: str = "default"
    """The pool (the engine's "runner name") this envoy serves."""
    token: str | None = None
    """The engine's admin token, if it has one (``auth.admin_token``)."""
    envoy_key: str = attrs.field(factory=lambda: f"actorcore-{uuid.uuid4().hex[:16]}")
    """Unique per process: a second connection with the same key evicts the first."""
    version: int = 1
    """The app's build version (the engine drains envoys of an older version)."""
    lost_margin: float = 3.0
    """Stop local actors this many seconds before the engine's lost threshold passes."""
    ack_interval: float = 5.0
    """Seconds between acknowledgements of the commands handled."""
    kv_timeout: float = 10.0
    """Bound on one KV request."""
    max_event_history: int = 10_000
    """Events kept for a resend until the engine acknowledges them, over all generations."""
    reconnect_first: float = 0.25
    reconnect_max: float = 10.0
    ping_timeout: float = 10.0
    """A connection on which nothing arrives for this long is down (the engine pings every
    3 s): a silent connection, with no close and no TCP error, is not waited on forever. The
    link waits less when the engine's lost threshold requires it (see
    :meth:`EnvoyLink.silence_timeout`)."""
    connect_timeout: float = CONNECT_TIMEOUT
    """Bound on opening the TCP connection, and on the WebSocket handshake: a peer that
    accepts and closes without answering the upgrade costs a whole bound before the retry."""
    metadata: dict[str, Any] = attrs.field(factory=dict)
    """Free-form envoy metadata (shown by the engine's ``GET /envoys``)."""

    @property
    def urls(self) -> tuple[str, ...]:
        """Every engine URL the link connects to, the first one first."""
        return (self.url, *self.fallback_urls)

    @property
    def ws_url(self) -> str:
        """The ``/envoys/connect`` URL with its query (of :attr:`url`)."""
        return self.ws_url_of(self.url)

    def ws_url_of(self, url: str) -> str:
        """The ``/envoys/connect`` URL with its query, on the engine node ``url``."""
        base = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        return (
            f"{base}/envoys/connect?protocol_version={VERSION}&namespace={self.namespace}"
            f"&envoy_key={self.envoy_key}&version={self.version}&pool_name={self.pool}"
        )


class EnvoyHandler(Protocol):
    """What the link delivers, synchronously and in order (the handler must not block)."""

    def on_command(self, actor_id: str, generation: int, command: Variant) -> None:
        """A ``CommandStartActor`` or ``CommandStopActor``, once."""
        ...

    def on_tunnel(self, message: ToEnvoyTunnelMessage) -> None:
        """A ``ToEnvoyTunnelMessage`` (``messageId``, ``messageKind``)."""
        ...

    def on_lost(self) -> None:
        """The link was down for the engine's lost threshold less the margin."""
        ...


@attrs.define
class LinkStatistics:
    """Counters of one link."""

    connects: int = 0
    commands: int = 0
    duplicate_commands: int = 0
    events_sent: int = 0
    events_resent: int = 0
    event_acks: int = 0
    events_dropped: int = 0
    kv_requests: int = 0
    pings: int = 0
    tunnel_in: int = 0
    tunnel_out: int = 0
    handler_errors: int = 0
    """Commands and tunnel messages whose handler raised (logged; the link stays up)."""


@attrs.define(eq=False)
class _Events:
    """The events of one actor generation: the next index and those not acknowledged."""

    next_index: int = 0
    unacked: list[EventWrapper] = attrs.field(factory=list)


class EnvoyLink:
    """The connection to the engine (see the module docstring). Run it with ``await
    nursery.start(link.run)``; it returns when cancelled or evicted."""

    def __init__(
        self, options: EnvoyOptions, handler: EnvoyHandler, actor_names: list[str]
    ) -> None:
        self.options = options
        self._handler = handler
        self._actor_names = actor_names
        self._ws: WebSocketConnection | None = None
        self._configured = False
        self._connected_again = trio.Event()
        self._connected = trio.Event()
        self._down_since: float | None = None
        self._went_down = trio.Event()
        self._last_heard = 0.0
        """When the engine last sent something on the current connection."""
        self._lost_reported = False
        self._seen: dict[tuple[str, int], int] = {}
        """Last command index handed over, per (actor, generation)."""
        self._to_ack: dict[tuple[str, int], int] = {}
        self._ended: set[tuple[str, int]] = set()
        """Generations that ended here (see forget_generation)."""
        self._events: dict[tuple[str, int], _Events] = {}
        self._outbox: list[EventWrapper] = []
        """Events queued and not sent on this connection yet."""
        self._outbox_ready = trio.Event()
        self._sent = trio.Event()
        self._sending = False
        self._history = 0
        """Events kept for a resend (not acknowledged yet), over every generation."""
        self._kv_next = 0
        self._kv_waiting: dict[int, tuple[trio.Event, list[Variant]]] = {}
        self._send_lock = trio.Lock()
        self.lost_threshold: float = 15.0
        """The engine's lost threshold in seconds (from ``ToEnvoyInit``)."""
        self.actor_stop_threshold: float | None = None
        """How long the engine waits for an actor to stop, in seconds (from ``ToEnvoyInit``)."""
        self.max_response_payload_size: int | None = None
        """The largest response the engine takes through its tunnel (from ``ToEnvoyInit``)."""
        self.stats = LinkStatistics()
        self._url_index = 0

    @property
    def url(self) -> str:
        """The engine URL the link is connected to, or tries next."""
        return self.options.urls[self._url_index]

    # ---------------------------------------------------------------- running

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, options: EnvoyOptions, handler: EnvoyHandler, actor_names: list[str]
    ) -> AsyncIterator[EnvoyLink]:
        """A link run in a nursery of its own, entered once its first connection is up and
        stopped (cancelled) on exit. If the engine evicts it, :class:`EnvoyEvicted` is raised
        out of the block (as part of an exception group, like any nursery error)."""
        link = cls(options, handler, actor_names)
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            try:
                yield link
            finally:
                nursery.cancel_scope.cancel()

    @property
    def connected(self) -> bool:
        """The link is up (Init received)."""
        return self._ws is not None

    async def wait_connected(self) -> None:
        """Return once the link is up."""
        await self._connected.wait()

    async def wait_connects(self, count: int) -> None:
        """Return once the link has come up ``count`` times since it started (monitoring and
        tests: a reconnect after the engine restarted is ``wait_connects(2)``)."""
        while self.stats.connects < count:
            await self._connected_again.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[EnvoyLink] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, serve, reconnect; started once the first connection is up. Returns
        only by cancellation, or raises EnvoyEvicted."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_lost)
            nursery.start_soon(self._connect_forever)
            await self.wait_connected()
            task_status.started(self)

    async def _connect_forever(self) -> None:
        delay = self.options.reconnect_first
        while True:
            began = trio.current_time()
            try:
                await self._session()
            except* _LINK_DOWN as group:
                # The session's tasks run in nurseries: its errors arrive grouped.
                log.warning("engine link to %s down: %s", self.url, _first_leaf(group))
                self._url_index = (self._url_index + 1) % len(self.options.urls)
            if trio.current_time() - began > STABLE_AFTER:
                delay = self.options.reconnect_first
            await trio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, self.options.reconnect_max)

    async def _session(self) -> None:
        options = self.options
        if not self._configured:
            # Each attempt until it succeeds: an engine that is still starting has no
            # namespace yet.
            admin = EngineAdmin(self.url, options.token)
            await admin.ensure_runner_config(options.namespace, options.pool)
            self._configured = True
        subprotocols = ["rivet"]
        if options.token:
            subprotocols.append(f"rivet_token.{options.token}")
        async with _engine_websocket(options, self.url, subprotocols) as ws:
            with trio.fail_after(INIT_TIMEOUT):
                first = await ws.get_message()
            if isinstance(first, str):
                raise BareError("the engine sent a text message")
            init = decode("ToEnvoy", first)
            if init.tag != "ToEnvoyInit":
                raise BareError(f"expected ToEnvoyInit first, got {init.tag}")
            self._last_heard = trio.current_time()
            meta: ProtocolMetadata = init.val["metadata"]
            self.lost_threshold = meta["envoyLostThreshold"] / 1000
            self.actor_stop_threshold = meta["actorStopThreshold"] / 1000
            self.max_response_payload_size = meta["maxResponsePayloadSize"]
            self._ws = ws
            self.stats.connects += 1
            try:
                await self._send_raw(
                    ws,
                    Variant(
                        "ToRivetMetadata",
                        {
                            "prepopulateActorNames": {
                                name: {"metadata": "{}"} for name in self._actor_names
                            },
                            "metadata": _json({"runtime": "actorcore", **options.metadata}),
                        },
                    ),
                )
                await self._resend_events(ws)
                self._down_since = None
                self._lost_reported = False
                self._connected.set()
                self._connected_again.set()
                self._connected_again = trio.Event()
                log.info("engine link up (%s, envoy %s)", self.url, options.envoy_key)
                async with trio.open_nursery() as session:
                    session.start_soon(self._ack_loop, ws)
                    session.start_soon(self._send_events, ws)
                    await self._read(ws)
                    session.cancel_scope.cancel()
            finally:
                self._ws = None
                self._connected = trio.Event()
                # The outage counts from the last sign of life: a connection that went
                # silent before it was seen to end was already down then.
                self._down_since = self._last_heard
                self._went_down.set()
                self._went_down = trio.Event()
                self._fail_kv()

    def silence_timeout(self) -> float:
        """How long a connection may stay silent before it is taken for down:
        ``ping_timeout``, but no more than the lost threshold less ``lost_margin``, so that a
        half-open connection (no close, no TCP error) is noticed, and the local actors
        stopped, before the engine gives them to another envoy; never less than the engine's
        ping interval (:data:`PING_INTERVAL_BOUND`), or a healthy link would be dropped
        between two pings."""
        return min(self.options.ping_timeout, max(self._lost_after(), PING_INTERVAL_BOUND))

    def _lost_after(self) -> float:
        """How long the link may be down before the local actors must stop: the engine's
        lost threshold less ``lost_margin``."""
        return max(0.0, self.lost_threshold - self.options.lost_margin)

    async def _read(self, ws: WebSocketConnection) -> None:
        silence = self.silence_timeout()
        while True:
            try:
                with trio.fail_after(silence):
                    raw = await ws.get_message()
            except ConnectionClosed as exc:
                reason = exc.reason
                if reason is not None and (reason.reason or "").startswith("ws.eviction"):
                    raise EnvoyEvicted(reason.reason) from None
                raise
            self._last_heard = trio.current_time()
            if isinstance(raw, str):
                raise BareError("the engine sent a text message")
            message = decode("ToEnvoy", raw)
            tag = message.tag
            if tag == "ToEnvoyTunnelMessage":
                self.stats.tunnel_in += 1
                try:
                    self._handler.on_tunnel(message.val)
                except Exception:
                    # One request's failure must not take the link, and every actor, down.
                    self.stats.handler_errors += 1
                    log.exception("the envoy's handler failed on a tunnel message")
            elif tag == "ToEnvoyPing":
                self.stats.pings += 1
                await self._send_raw(ws, Variant("ToRivetPong", {"ts": message.val["ts"]}))
            elif tag == "ToEnvoyCommands":
                self._on_commands(message.val)
            elif tag == "ToEnvoyAckEvents":
                self._on_ack_events(message.val["lastEventCheckpoints"])
            elif tag == "ToEnvoyKvResponse":
                waiting = self._kv_waiting.pop(message.val["requestId"], None)
                if waiting is not None:
                    waiting[1].append(message.val["data"])
                    waiting[0].set()
            else:
                log.debug("engine message ignored: %s", tag)

    async def _watch_lost(self) -> None:
        """Tell the handler when the link has been down too long (once per outage)."""
        while True:
            down = self._down_since
            if down is None or self._lost_reported:
                await self._went_down.wait()
                continue
            deadline = down + self._lost_after()
            if trio.current_time() >= deadline:
                self._lost_reported = True
                log.error(
                    "engine link down for %.1f s (lost threshold %.1f s): stopping local actors",
                    trio.current_time() - down,
                    self.lost_threshold,
                )
                self._handler.on_lost()
            else:
                await trio.sleep(min(0.5, deadline - trio.current_time()))

    # ---------------------------------------------------------------- commands and events

    def _on_commands(self, commands: list[CommandWrapper]) -> None:
        for wrapper in commands:
            checkpoint = wrapper["checkpoint"]
            slot = (checkpoint["actorId"], checkpoint["generation"])
            index = checkpoint["index"]
            if index <= self._seen.get(slot, -1):
                self.stats.duplicate_commands += 1
                continue
            self._seen[slot] = index
            self._to_ack[slot] = index
            self.stats.commands += 1
            try:
                self._handler.on_command(slot[0], slot[1], wrapper["inner"])
            except Exception:
                # The engine times out a start nobody answers and places the actor again.
                self.stats.handler_errors += 1
                log.exception("the envoy's handler failed on %s", wrapper["inner"].tag)

    async def _ack_loop(self, ws: WebSocketConnection) -> None:
        while True:
            await trio.sleep(self.options.ack_interval)
            await self.ack_commands()

    async def ack_commands(self) -> None:
        """Acknowledge every command handed over (the engine then forgets them)."""
        ws = self._ws
        if ws is None or not self._to_ack:
            return
        checkpoints: list[ActorCheckpoint] = [
            {"actorId": actor, "generation": gen, "index": index}
            for (actor, gen), index in self._to_ack.items()
        ]
        self._to_ack.clear()
        # Acknowledged commands are not replayed: the dedup records of ended generations go.
        for slot in self._ended:
            self._seen.pop(slot, None)
        self._ended = {slot for slot in self._ended if slot in self._events}
        await self._send_raw(
            ws, Variant("ToRivetAckCommands", {"lastCommandCheckpoints": checkpoints})
        )

    def forget_generation(self, actor_id: str, generation: int) -> None:
        """The generation has ended here: its dedup record goes once its commands are
        acknowledged, its events once the engine acknowledges them (or the history is
        trimmed)."""
        slot = (actor_id, generation)
        self._ended.add(slot)
        events = self._events.get(slot)
        if events is not None and not events.unacked:
            del self._events[slot]

    def queue_event(self, actor_id: str, generation: int, inner: Variant) -> None:
        """Queue one event of an actor generation (numbered now, so events keep the order of
        these calls); sent at once if the link is up, kept until the engine acknowledges it,
        and sent again after a reconnect."""
        events = self._events.setdefault((actor_id, generation), _Events())
        wrapper: EventWrapper = {
            "checkpoint": {
                "actorId": actor_id,
                "generation": generation,
                "index": events.next_index,
            },
            "inner": inner,
        }
        events.next_index += 1
        events.unacked.append(wrapper)
        self._history += 1
        if self._history > self.options.max_event_history:
            self._trim_history()
        self._outbox.append(wrapper)
        self._outbox_ready.set()

    def _trim_history(self) -> None:
        """Keep the resend history bounded: drop the oldest events of generations that have
        ended (their Stopped was sent) until it fits. The engine acknowledges only now and
        then; what is dropped is only resent if the link drops before it does."""
        for slot in list(self._events):
            if self._history <= self.options.max_event_history:
                return
            if slot not in self._ended:
                continue  # still running here: keep all of it
            dropped = self._events.pop(slot)
            self._history -= len(dropped.unacked)
            self.stats.events_dropped += len(dropped.unacked)

    async def _send_events(self, ws: WebSocketConnection) -> None:
        """The session's event sender: what :meth:`queue_event` queued, in order."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = trio.Event()
            batch, self._outbox = self._outbox, []
            if batch:
                self.stats.events_sent += len(batch)
                self._sending = True
                try:
                    await self._send_raw(ws, Variant("ToRivetEvents", batch))
                finally:
                    self._sending = False
            self._sent.set()

    async def wait_events_sent(self) -> None:
        """Return once every queued event was written to the engine's socket (the engine
        acknowledges events only now and then: this is what a process about to exit can
        wait for; the WebSocket close that follows comes after them)."""
        while self._outbox or self._sending:
            self._sent = trio.Event()
            await self._sent.wait()

    def _on_ack_events(self, checkpoints: list[ActorCheckpoint]) -> None:
        self.stats.event_acks += 1
        for checkpoint in checkpoints:
            slot = (checkpoint["actorId"], checkpoint["generation"])
            events = self._events.get(slot)
            if events is None:
                continue
            acked = checkpoint["index"]
            kept = [e for e in events.unacked if e["checkpoint"]["index"] > acked]
            self._history -= len(events.unacked) - len(kept)
            events.unacked = kept
            if not kept and slot in self._ended:
                del self._events[slot]  # the generation has ended and all of it is delivered

    async def _resend_events(self, ws: WebSocketConnection) -> None:
        self._outbox = []  # all of it is in the unacknowledged events
        pending = [e for events in self._events.values() for e in events.unacked]
        if pending:
            self.stats.events_resent += len(pending)
            await self._send_raw(ws, Variant("ToRivetEvents", pending))

    # ---------------------------------------------------------------- KV, tunnel, stopping

    async def kv(self, actor_id: str, request: Variant) -> Variant:
        """One KV request of ``actor_id``; its ``KvResponseData``. Raises EngineUnavailable
        if the link is down or the answer does not come within ``kv_timeout``."""
        ws = self._ws
        if ws is None:
            raise EngineUnavailable("the engine link is down")
        self._kv_next = (self._kv_next + 1) % (1 << 32)
        request_id = self._kv_next
        done = trio.Event()
        answer: list[Variant] = []
        self._kv_waiting[request_id] = (done, answer)
        self.stats.kv_requests += 1
        try:
            await self._send_raw(
                ws,
                Variant(
                    "ToRivetKvRequest",
                    {"actorId": actor_id, "requestId": request_id, "data": request},
                ),
            )
            with trio.move_on_after(self.options.kv_timeout):
                await done.wait()
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise EngineUnavailable(f"the engine link closed: {exc}") from None
        finally:
            self._kv_waiting.pop(request_id, None)
        if not answer:
            raise EngineUnavailable(
                f"no KV answer within {self.options.kv_timeout}s (or the link closed)"
            )
        return answer[0]

    def _fail_kv(self) -> None:
        for done, _ in self._kv_waiting.values():
            done.set()  # with no answer: EngineUnavailable
        self._kv_waiting.clear()

    async def send_tunnel(self, message_id: MessageId, kind: Variant) -> None:
        """Send one tunnel message (to a gateway request). Raises EngineUnavailable if the
        link is down."""
        ws = self._ws
        if ws is None:
            raise EngineUnavailable("the engine link is down")
        self.stats.tunnel_out += 1
        try:
            await self._send_raw(
                ws, Variant("ToRivetTunnelMessage", {"messageId": message_id, "messageKind": kind})
            )
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise EngineUnavailable(f"the engine link closed: {exc}") from None

    async def stopping(self) -> None:
        """Tell the engine this envoy is draining: it stops this envoy's actors (GOING_AWAY)
        and places them elsewhere."""
        ws = self._ws
        if ws is not None:
            await self._send_raw(ws, Variant("ToRivetStopping"))

    async def _send_raw(self, ws: WebSocketConnection, message: Variant) -> None:
        data = encode("ToRivet", message)
        async with self._send_lock:
            await ws.send_message(data)


@contextlib.asynccontextmanager
async def _engine_websocket(
    options: EnvoyOptions, url: str, subprotocols: list[str]
) -> AsyncIterator[WebSocketConnection]:
    """The WebSocket to ``/envoys/connect`` on ``url``, over a TCP stream this link owns and
    closes: trio-websocket's client leaves its stream open after a close the server started."""
    parts = urlsplit(options.ws_url_of(url))
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    resource = f"{parts.path}?{parts.query}"
    async with trio.open_nursery() as nursery:
        with trio.fail_after(options.connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
        async with stream:
            with trio.fail_after(options.connect_timeout):
                ws = await wrap_client_stream(
                    nursery, stream, f"{host}:{port}", resource, subprotocols=subprotocols
                )
            try:
                yield ws
            finally:
                with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                    await ws.aclose()
        nursery.cancel_scope.cancel()


#: What ends a session and is retried (anything else, EnvoyEvicted included, ends the link).
_LINK_DOWN: Final = (
    EngineApiError,
    OSError,
    HandshakeError,
    ConnectionClosed,
    BareError,
    trio.TooSlowError,
    EngineUnavailable,
)


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
