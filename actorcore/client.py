"""The trio client of the ``/connect`` actor protocol, with reconnection driven by close codes.

::

    async with actorcore.connect("ws://127.0.0.1:8080", "counter", "room-1") as actor:
        await actor.subscribe("changed")
        print(await actor.call("increment", 2))
        async for event in actor.events():
            print(event.name, event.args)

:func:`connect` returns an :class:`ActorConnection`, an async context manager. Entering it
opens the connection and waits for the server's ``init`` frame; leaving it closes with 1000
(the handshake bounded by ``close_timeout``). Everything the connection runs (its reader,
writer and reconnect loop) lives in a nursery owned by the ``async with`` block.

**Reconnection** follows the close-code table of :mod:`actorcore.closecodes`
(:func:`policy_for_close`):

* 1000 (normal, ``actor.destroyed``) and 1008 (``actor.not_found``, ``auth.forbidden``,
  ``protocol.invalid_message``): never reconnect. The connection *finishes*: pending and later
  calls raise the typed error (:attr:`ActorConnection.final_error`), :meth:`~ActorConnection.events`
  and :meth:`~ActorConnection.messages` end.
* 1001 (``actor.sleeping``): reconnect at once. If that attempt fails too, later attempts back
  off (so a server that keeps refusing cannot cause a hot loop).
* 1012 (``runtime.shutdown``), 1013 (``actor.overloaded``, ``actor.ready_timeout``), and also
  1006, 1011, 1009, any other code, network errors and handshake timeouts: reconnect after a
  jittered exponential backoff (full jitter: a uniform delay in ``[0, min(max_backoff,
  initial_backoff * 2**n)]`` where ``n`` counts the failures since the last successful
  ``init``; :func:`backoff_delay`).
* An HTTP refusal of the upgrade (a proxy, not actorcore, which always accepts and then
  closes): 5xx, 408 and 429 back off; any other status finishes the connection.

With ``reconnect=False`` the first close of any kind finishes the connection.

**Calls are exactly once across a lost socket or a server restart** (``docs/zero-loss.md``).
The client connects with ``seq=1`` (numbered outputs, which it acknowledges: piggybacked on
its calls as ``"ack"``, or an ``ack`` frame after ``ACK_EVERY`` outputs or ``ACK_DELAY``
seconds) and keeps the ``resume_token`` of the ``init`` frame. When the connection closes
before an answer arrives, and the client reconnects after that close (1006, 1011, 1012, 1013,
network errors ...), the call stays pending: the next attempt connects with
``?resume=TOKEN&ack=N``, and once the server took the connection back (``resumed``), every
call without an answer is sent again with its id; the server answers those that ran from its
record instead of running them again. Numbered frames seen before (``seq`` not above the
highest one) are dropped, so every answer and event arrives once, in order. A refused resume
(4001) fails those calls with :class:`ConnectionLost` (``retryable`` false: their outcome is
unknown) and connects again without it; 4002 ends the connection.

Without a resume token (``resume=False``, or a server that gives none: under the Rivet
engine), calls are **at most once**: when the connection closes before the answer arrives, the
call fails at once with the error mapped from the close code (:func:`error_for_close`: 1001 →
:class:`~actorcore.ActorStopping`, 1000 ``actor.destroyed`` →
:class:`~actorcore.ActorDestroyed`, 1012 → :class:`~actorcore.RuntimeShutdown`, 1013 →
:class:`~actorcore.ActorOverloaded` or :class:`~actorcore.ActorReadyTimeout`, ...). So does a
call pending at a close that is not reconnected. A call made *while* the client is
reconnecting has not been sent yet, so it waits for the next connection (bounded by its
timeout). Error frames raise the
:class:`~actorcore.ActorError` subclass named by their ``code`` (a :class:`RemoteError` for codes
actorcore does not define, e.g. a :class:`~actorcore.UserError` code), with the frame's
``message`` and ``retryable``.

**Subscriptions** (:meth:`ActorConnection.subscribe`) are remembered and sent again on every new
connection before it goes live. **Events** (``{"type": "event"}`` frames) are delivered by
:meth:`ActorConnection.events` as :class:`ActorEvent` values; **messages** from ``conn.send``
(``{"type": "message"}`` frames) separately by :meth:`ActorConnection.messages`, so an actor event
named ``"message"`` cannot be confused with them. Both buffers are bounded (``buffer_size``);
when one is full, new items are dropped and counted in :meth:`ActorConnection.statistics` rather
than blocking the reader (which would delay call results).
"""

from __future__ import annotations

import contextlib
import copy
import enum
import itertools
import json
import logging
import math
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)
from wsproto.utilities import LocalProtocolError

from . import closecodes
from .closecodes import CloseCode
from .errors import (
    ActionNotFound,
    ActionTimeout,
    ActorDestroyed,
    ActorError,
    ActorNotFound,
    ActorOverloaded,
    ActorReadyTimeout,
    ActorStartFailed,
    ActorStopping,
    Forbidden,
    InternalError,
    InvalidMessage,
    LifecycleError,
    MessageTooLarge,
    RuntimeShutdown,
    StaleGeneration,
    StateError,
    StoreError,
    SubscriptionLimit,
    UserError,
)

__all__ = [
    "ActorConnection",
    "ActorEvent",
    "CallTimeout",
    "ClientOptions",
    "ClientStatistics",
    "CloseInfo",
    "ConnectionLost",
    "Queued",
    "ReconnectPolicy",
    "RemoteError",
    "backoff_delay",
    "connect",
    "error_for_close",
    "error_from_frame",
    "policy_for_close",
]

log = logging.getLogger("actorcore.client")

#: Longest action or event name the server accepts (``actorcore.ws.protocol.MAX_NAME``); a longer
#: one would get the whole connection closed with 1008, so the client refuses it up front.
MAX_NAME: Final = 256
#: Frames one connection's writer may hold before callers wait for room.
OUTBOX_SIZE: Final = 256
#: Numbered outputs received before the client acknowledges them without waiting for a call.
ACK_EVERY: Final = 32
#: Seconds after which received outputs that no call acknowledged are acknowledged by a frame.
ACK_DELAY: Final = 0.1


# ---------------------------------------------------------------------------- errors


class Queued:
    """The result of :meth:`ActorConnection.subscribe`: the work is already done, so awaiting
    it is optional (it completes at once)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # an empty generator: awaiting completes without suspending


class ConnectionLost(ActorError):
    """The connection ended in a way no actorcore error describes: a network failure or 1006, a
    close code outside the table, a refused upgrade, or the client's own close.

    ``close_code`` and ``close_reason`` are those of the close (1006 when there was none).
    ``retryable`` is per instance: False for a normal close and for the client's own close.
    """

    code = "client.connection_lost"
    retryable = True

    def __init__(
        self,
        message: str = "",
        *,
        close_code: int = 1006,
        close_reason: str = "",
        retryable: bool = True,
    ) -> None:
        super().__init__(message or f"connection lost: {close_code} {close_reason}".rstrip())
        self.close_code = close_code
        self.close_reason = close_reason
        if retryable is not type(self).retryable:
            # Like ``code`` in ActorError: an instance value shadows the ClassVar on purpose.
            self.__dict__["retryable"] = retryable


class CallTimeout(ActorError):
    """A call got no answer within its timeout. The actor may still run it, or may have run it:
    the client stops waiting (it does not send it again after a later resume), and a late
    answer is discarded."""

    code = "client.call_timeout"


class RemoteError(ActorError):
    """An error frame whose ``code`` names no actorcore error class (for example the code of a
    :class:`~actorcore.UserError` raised by the action). ``code``, ``message`` and
    ``retryable`` are the frame's."""

    code = "remote.error"

    def __init__(self, message: str = "", *, code: str | None = None, retryable: bool = False):
        super().__init__(message, code=code)
        if retryable:
            self.__dict__["retryable"] = True


_ERRORS_BY_CODE: Final[dict[str, type[ActorError]]] = {
    cls.code: cls
    for cls in (
        ActorError,
        ActionNotFound,
        ActionTimeout,
        ActorDestroyed,
        ActorNotFound,
        ActorOverloaded,
        ActorReadyTimeout,
        ActorStartFailed,
        ActorStopping,
        Forbidden,
        InternalError,
        InvalidMessage,
        LifecycleError,
        MessageTooLarge,
        RuntimeShutdown,
        StaleGeneration,
        StateError,
        StoreError,
        SubscriptionLimit,
        UserError,
        CallTimeout,
    )
}

#: Every close frame of the table, with the error its pending calls fail with.
_ERRORS_BY_CLOSE: Final[dict[CloseCode, type[ActorError]]] = {
    closecodes.ACTOR_SLEEPING: ActorStopping,
    closecodes.ACTOR_DESTROYED: ActorDestroyed,
    closecodes.NOT_FOUND: ActorNotFound,
    closecodes.FORBIDDEN: Forbidden,
    closecodes.READY_TIMEOUT: ActorReadyTimeout,
    closecodes.START_FAILED: ActorStartFailed,
    closecodes.RUNTIME_SHUTDOWN: RuntimeShutdown,
    closecodes.INTERNAL_ERROR: InternalError,
    closecodes.MESSAGE_TOO_LARGE: MessageTooLarge,
    closecodes.INVALID_MESSAGE: InvalidMessage,
    closecodes.OVERLOADED: ActorOverloaded,
}

#: A close code outside the table (or with a reason the table does not know): its error.
_ERRORS_BY_CLOSE_CODE: Final[dict[int, type[ActorError]]] = {
    1001: ActorStopping,
    1008: Forbidden,  # for_error(Forbidden) puts the Forbidden message in the reason
    1009: MessageTooLarge,
    1011: InternalError,
    1012: RuntimeShutdown,
    1013: ActorOverloaded,
}


def error_for_close(code: int, reason: str) -> ActorError:
    """The typed error a close frame stands for (what pending calls fail with).

    A known ``(code, reason)`` pair of :mod:`actorcore.closecodes` maps to its error class; else
    the code alone decides (1001 → ActorStopping, 1008 → Forbidden with the reason as message,
    1009 → MessageTooLarge, 1011 → InternalError, 1012 → RuntimeShutdown, 1013 →
    ActorOverloaded); anything else is a :class:`ConnectionLost` (not retryable for 1000, 4001
    ``resume.*`` and 4002 ``resume.taken_over``: after those a call's outcome is unknown).
    """
    message = f"connection closed: {code} {reason}".rstrip()
    cls = _ERRORS_BY_CLOSE.get(CloseCode(code, reason)) if _valid_reason(reason) else None
    if cls is None:
        cls = _ERRORS_BY_CLOSE_CODE.get(code)
        if cls is Forbidden and reason:
            return Forbidden(reason)
    if cls is None:
        retryable = code not in (
            1000,
            closecodes.RESUME_REFUSED.code,
            closecodes.RESUME_TAKEN_OVER.code,
        )
        return ConnectionLost(message, close_code=code, close_reason=reason, retryable=retryable)
    return cls(message)


def _valid_reason(reason: str) -> bool:
    return reason.isascii() and len(reason.encode()) <= 123


def error_from_frame(frame: dict[str, Any]) -> ActorError:
    """The error an ``{"type": "error"}`` frame stands for: the ActorError subclass whose
    ``code`` is the frame's, else a :class:`RemoteError`; ``message`` and ``retryable`` are the
    frame's."""
    code = frame.get("code")
    message = frame.get("message")
    retryable = frame.get("retryable")
    if not isinstance(code, str) or not code:
        code = InternalError.code
    if not isinstance(message, str):
        message = ""
    if not isinstance(retryable, bool):
        retryable = False
    cls = _ERRORS_BY_CODE.get(code)
    if cls is None:
        return RemoteError(message, code=code, retryable=retryable)
    error = cls(message)
    if error.retryable is not retryable:
        error.__dict__["retryable"] = retryable
    return error


# ---------------------------------------------------------------------------- policy


class ReconnectPolicy(enum.Enum):
    """What the client does after a close."""

    NEVER = "never"
    """The connection finishes; calls raise the close's typed error."""
    AT_ONCE = "at_once"
    """Reconnect without waiting (1001: the actor went to sleep; a new connection wakes it)."""
    BACKOFF = "backoff"
    """Reconnect after a jittered exponential backoff."""


def policy_for_close(code: int) -> ReconnectPolicy:
    """The reconnect policy of a close code: never after 1000, 1008 or 4002
    (``resume.taken_over``), at once after 1001 and 4001 (a refused resume: connect again
    without it), with backoff after anything else (1012, 1013, 1006, 1011 ...)."""
    if code in (1000, 1008, closecodes.RESUME_TAKEN_OVER.code):
        return ReconnectPolicy.NEVER
    if code in (1001, closecodes.RESUME_REFUSED.code):
        return ReconnectPolicy.AT_ONCE
    return ReconnectPolicy.BACKOFF


def backoff_delay(
    failures: int, *, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Full-jitter exponential backoff: a uniform delay in ``[0, min(maximum, initial *
    2**failures)]``; ``failures`` counts the failed attempts since the last good connection."""
    cap = min(maximum, initial * 2.0 ** min(max(failures, 0), 60))
    return (rng or _RNG).uniform(0.0, cap)


_RNG: Final = random.Random()


# ---------------------------------------------------------------------------- values


@attrs.frozen
class CloseInfo:
    """A close the client saw from the server or the network (1006 when there was no frame)."""

    code: int
    reason: str


@attrs.frozen
class ActorEvent:
    """One ``{"type": "event"}`` frame: an event the connection subscribed to."""

    name: str
    args: tuple[Any, ...]
    seq: int | None = attrs.field(default=None, eq=False)
    """Its sequence number on a numbered connection (see ``docs/zero-loss.md``), else None
    (not compared: two events are equal by name and arguments)."""


@attrs.frozen(kw_only=True)
class ClientStatistics:
    """Counters of one :class:`ActorConnection` (a snapshot)."""

    connected: bool
    """A connection is live now."""
    finished: bool
    """The connection ended for good (no more reconnects)."""
    attempts: int
    """Connection attempts, the first included."""
    connects: int
    """Attempts that got the server's ``init`` frame."""
    closes_by_code: dict[int, int]
    """Closes seen from the server or the network, by code (1006: no close frame)."""
    last_delay: float | None
    """The delay before the latest reconnect attempt (0.0: at once), None before any."""
    calls_sent: int
    """Call frames handed to a connection's writer."""
    pending_calls: int
    """Calls waiting for their answer now."""
    events_received: int
    events_dropped: int
    """Events dropped because the :meth:`ActorConnection.events` buffer was full."""
    messages_received: int
    messages_dropped: int
    """Messages dropped because the :meth:`ActorConnection.messages` buffer was full."""
    resumes: int = 0
    """Connections that took the previous one back (``init`` with ``resumed`` true)."""
    resume_refusals: int = 0
    """Resumes the server refused (4001): a new connection followed."""
    duplicates_dropped: int = 0
    """Numbered frames received again after a resume, dropped."""
    outputs_skipped: int = 0
    """Numbered outputs never received (the server dropped them: more than it keeps
    unacknowledged)."""
    last_seq: int = 0
    """The highest output sequence number received on this connection."""


# ---------------------------------------------------------------------------- internals


@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    output: Any = None
    error: ActorError | None = None

    def resolve(self, output: Any) -> None:
        if not self.done.is_set():
            self.output = output
            self.done.set()

    def fail(self, error: ActorError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.output


@attrs.frozen
class _Live:
    """A connection that got its ``init`` and has its subscriptions in sync."""

    ws: WebSocketConnection
    outbox: trio.MemorySendChannel[str]


@attrs.frozen
class _Ended:
    """How one connection attempt ended."""

    close: CloseInfo
    error: ActorError
    policy: ReconnectPolicy
    got_init: bool


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_NAME} chars")


def _lost(message: str, *, policy: ReconnectPolicy = ReconnectPolicy.BACKOFF) -> _Ended:
    retryable = policy is not ReconnectPolicy.NEVER
    return _Ended(
        CloseInfo(1006, ""),
        ConnectionLost(message, retryable=retryable),
        policy,
        got_init=False,
    )


def _from_close(exc: ConnectionClosed, *, got_init: bool) -> _Ended:
    reason = exc.reason
    if reason is None:
        code, text = 1006, ""
    else:
        code, text = int(reason.code), reason.reason or ""
    return _Ended(
        CloseInfo(code, text), error_for_close(code, text), policy_for_close(code), got_init
    )


@attrs.frozen
class _Init:
    actor_id: str
    conn_id: str
    generation: int
    resume_token: str | None
    resumed: bool


def _parse_init(message: str | bytes) -> _Init | None:
    try:
        frame = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not isinstance(frame, dict) or frame.get("type") != "init":
        return None
    actor_id, conn_id, generation = (frame.get(f) for f in ("actor_id", "conn_id", "generation"))
    if not isinstance(actor_id, str) or not isinstance(conn_id, str):
        return None
    if isinstance(generation, bool) or not isinstance(generation, int):
        return None
    token = frame.get("resume_token")
    return _Init(
        actor_id,
        conn_id,
        generation,
        token if isinstance(token, str) and token else None,
        frame.get("resumed") is True,
    )


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


# ---------------------------------------------------------------------------- the connection


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _positive_or_none(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 or None, got {value!r}")


@attrs.frozen(kw_only=True)
class Gateway:
    """Reach actors through a Rivet engine's gateway (actorcore serving as an envoy of it,
    ``actorcore serve ... --engine URL``) instead of actorcore's own listener.

    With ``connect(url, name, key, gateway=Gateway(pool="default"))``, ``url`` is the
    engine's (``ws://engine:6420``) and each attempt opens
    ``{url}/gateway/{name}/connect?rvt-namespace=NS&rvt-method=getOrCreate&rvt-runner=POOL&rvt-key=KEY&rvt-crash-policy=sleep``
    with the WebSocket subprotocol ``rivet``: the engine creates the actor if it does not
    exist, starts it on one of the pool's envoys, and forwards the connection there. Close
    codes, reconnection and calls behave as on actorcore's own listener.
    """

    namespace: str = "default"
    pool: str = "default"
    """The engine pool (its "runner name") whose envoys serve the actor."""
    crash_policy: str = "sleep"
    """What the engine does with an actor whose generation crashed (``sleep``)."""
    token: str | None = None
    """Sent as the subprotocol ``rivet_token.<token>`` when the engine requires one."""

    def resource(self, name: str, key: str, params: str | None) -> str:
        """The gateway path and query for the actor ``name``/``key``."""
        query = f"params={quote(params, safe='')}" if params is not None else ""
        return self.path(name, key, "/connect", query)

    def path(self, name: str, key: str, path: str, query: str = "") -> str:
        """The gateway target of ``path`` on the actor ``name``/``key`` (get-or-create), for
        any route the actor serves: ``/connect``, ``/ws[/...]``, and the HTTP routes
        ``/actions/{action}`` and ``/http[/...]``. ``query`` (already encoded) is the actor's
        own query string; the gateway removes its ``rvt-*`` parameters before forwarding.

        ``Gateway(pool="p").path("counter", "k", "/actions/increment")`` is
        ``/gateway/counter/actions/increment?rvt-namespace=default&rvt-method=getOrCreate&...``:
        POST it on the engine (``http://engine:6420``) with ``{"args": [...]}``."""
        rvt = (
            f"rvt-namespace={quote(self.namespace, safe='')}&rvt-method=getOrCreate"
            f"&rvt-runner={quote(self.pool, safe='')}&rvt-key={quote(key, safe='')}"
            f"&rvt-crash-policy={quote(self.crash_policy, safe='')}"
        )
        path = path if path.startswith("/") else "/" + path
        return f"/gateway/{quote(name, safe='')}{path}?{rvt}" + (f"&{query}" if query else "")

    @property
    def subprotocols(self) -> list[str]:
        """What the client offers: ``rivet`` (and the token, if any)."""
        return ["rivet"] + ([f"rivet_token.{self.token}"] if self.token else [])


@attrs.frozen(kw_only=True)
class ClientOptions:
    """How an :class:`ActorConnection` behaves; :func:`connect` takes each as a keyword."""

    reconnect: bool = True
    """False: finish at the first close instead of reconnecting."""
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Bound on each attempt (TCP, upgrade, ``init``, subscriptions) and on the initial
    connect as a whole."""
    call_timeout: float | None = attrs.field(default=60.0, validator=_positive_or_none)
    """Default bound on :meth:`ActorConnection.call` (None: unbounded)."""
    close_timeout: float = attrs.field(default=2.0, validator=_positive)
    """Bound on the closing handshake."""
    initial_backoff: float = attrs.field(default=0.1, validator=_positive)
    """The first reconnect delay (:func:`backoff_delay`)."""
    max_backoff: float = attrs.field(default=5.0, validator=_positive)
    """The longest reconnect delay."""
    max_message_size: int = 16 * 2**20
    """Largest frame accepted from the server."""
    buffer_size: int = attrs.field(default=1024, validator=attrs.validators.ge(0))
    """Events (and messages) buffered for :meth:`ActorConnection.events`."""
    resume: bool = True
    """Take the connection back after a lost socket or a server restart (``?resume=TOKEN``),
    with numbered, acknowledged outputs and calls that complete exactly once (see
    ``docs/zero-loss.md``). False: at-most-once calls, no acknowledgements."""


class ActorConnection:
    """A client connection to one actor, kept open across reconnects; made by :func:`connect`.

    Use it as an async context manager (once). Inside the block: :meth:`call`,
    :meth:`subscribe`, :meth:`events`, :meth:`messages`; the ids of the current connection are
    :attr:`actor_id`, :attr:`conn_id` and :attr:`generation` (from the latest ``init``).
    """

    def __init__(
        self,
        url: str,
        name: str,
        key: str,
        *,
        params: Any = None,
        options: ClientOptions = ClientOptions(),
        ssl_context: ssl.SSLContext | None = None,
        open_stream: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
        gateway: Gateway | None = None,
    ) -> None:
        _check_name(name, "name")
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"url must be ws://host[:port][/path] or wss://..., got {url!r}")
        secure = parts.scheme == "wss"
        self._host = parts.hostname
        self._port = parts.port or (443 if secure else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = self._port == (443 if secure else 80)
        self._host_header = host if default_port else f"{host}:{self._port}"
        encoded = None if params is None else json.dumps(params, separators=(",", ":"))
        self._subprotocols: list[str] | None = None
        if gateway is not None:
            self._resource = parts.path.rstrip("/") + gateway.resource(name, key, encoded)
            self._subprotocols = gateway.subprotocols
        else:
            self._resource = (
                f"{parts.path.rstrip('/')}/actors/{quote(name, safe='')}/"
                f"{quote(key, safe='')}/connect"
            )
            if encoded is not None:
                self._resource += f"?params={quote(encoded, safe='')}"
        # Numbered outputs (not through a gateway: the engine's hibernation keeps sockets).
        self._asks_numbers = options.resume and gateway is None
        self._ssl_context = (ssl_context or ssl.create_default_context()) if secure else None
        self._open_stream_fn = open_stream

        self.name: Final = name
        """The actor definition's name."""
        self.key: Final = key
        """The actor's key."""
        self.options: Final = options
        """How this client behaves (:class:`ClientOptions`)."""
        self.call_timeout = options.call_timeout
        """Default bound on :meth:`call` in seconds (None: unbounded); :class:`CallTimeout`."""
        self.actor_id = ""
        """The actor's id (from the latest ``init``)."""
        self.conn_id = ""
        """The server's id of the current connection (a new one after each reconnect)."""
        self.generation = 0
        """The actor generation that served the latest ``init``."""
        self.last_close: CloseInfo | None = None
        """The latest close seen from the server or the network (the client's own close is not
        recorded here)."""

        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._live: _Live | None = None
        self._changed = trio.Event()
        self._final_error: ActorError | None = None
        self._ever_live = False
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._sent: dict[int, str] = {}
        """The frames of the calls waiting for an answer, sent again after a resume."""
        self._resume_token: str | None = None
        self._last_seq = 0
        self._acked = 0
        self._unacked = trio.Event()
        self._subscriptions: set[str] = set()
        buffer_size = options.buffer_size
        self._events_send, self._events_receive = trio.open_memory_channel[ActorEvent](buffer_size)
        self._messages_send, self._messages_receive = trio.open_memory_channel[Any](buffer_size)

        self._attempts = 0
        self._connects = 0
        self._closes_by_code: dict[int, int] = {}
        self._last_delay: float | None = None
        self._calls_sent = 0
        self._events_received = 0
        self._events_dropped = 0
        self._messages_received = 0
        self._messages_dropped = 0
        self._resumes = 0
        self._resume_refusals = 0
        self._duplicates_dropped = 0
        self._outputs_skipped = 0

    def __repr__(self) -> str:
        state = "finished" if self.finished else "connected" if self.connected else "connecting"
        return f"<ActorConnection {self.name}/{self.key} {state} actor_id={self.actor_id!r}>"

    # ---------------------------------------------------------------- state

    @property
    def url(self) -> str:
        """The full URL of the ``/connect`` route this client opens."""
        scheme = "wss" if self._ssl_context is not None else "ws"
        return f"{scheme}://{self._host_header}{self._resource}"

    @property
    def connected(self) -> bool:
        """A connection is live now (calls are sent at once)."""
        return self._live is not None

    @property
    def finished(self) -> bool:
        """The connection ended for good: closed by the client, or by a close that is not
        reconnected (see the module docs). Calls raise :attr:`final_error`."""
        return self._final_error is not None

    @property
    def final_error(self) -> ActorError | None:
        """Why the connection finished (what calls raise now), or None while it has not."""
        return self._final_error

    async def wait_connected(self) -> None:
        """Wait until a connection is live; raise :attr:`final_error` if it finished.
        Unbounded: put it in a ``trio.fail_after``."""
        await self._wait_live()

    async def wait_finished(self) -> None:
        """Wait until the connection ended for good. Unbounded: put it in a
        ``trio.fail_after``."""
        while self._final_error is None:
            await self._changed.wait()

    def statistics(self) -> ClientStatistics:
        """A snapshot of the connection's counters."""
        return ClientStatistics(
            connected=self.connected,
            finished=self.finished,
            attempts=self._attempts,
            connects=self._connects,
            closes_by_code=dict(self._closes_by_code),
            last_delay=self._last_delay,
            calls_sent=self._calls_sent,
            pending_calls=len(self._pending),
            events_received=self._events_received,
            events_dropped=self._events_dropped,
            messages_received=self._messages_received,
            messages_dropped=self._messages_dropped,
            resumes=self._resumes,
            resume_refusals=self._resume_refusals,
            duplicates_dropped=self._duplicates_dropped,
            outputs_skipped=self._outputs_skipped,
            last_seq=self._last_seq,
        )

    # ---------------------------------------------------------------- public API

    async def call(self, action: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``action`` on the actor and return its output, bounded by :attr:`call_timeout`.

        Raises the typed error of an error frame, the close's typed error if the connection
        closes first (the call is not resent), :class:`CallTimeout`, or :attr:`final_error`.
        While the client is reconnecting the call waits for the next connection. Arguments must
        be JSON-serialisable (``TypeError`` otherwise).
        """
        return await self._call(self.call_timeout, action, args, kwargs)

    async def call_with_timeout(
        self, seconds: float | None, action: str, *args: Any, **kwargs: Any
    ) -> Any:
        """Like :meth:`call` with its own bound (``seconds``; None: unbounded)."""
        return await self._call(seconds, action, args, kwargs)

    def subscribe(self, event: str) -> Queued:
        """Receive ``event`` frames (see :meth:`events`), on this connection and every later
        one. The frame is queued at once; the result may be awaited or not
        (``actor.subscribe("changed")`` and ``await actor.subscribe("changed")`` both work)."""
        _check_name(event, "event")
        self._raise_if_finished()
        if event not in self._subscriptions:
            self._subscriptions.add(event)
            self._queue_control({"type": "subscribe", "event": event})
        return Queued()

    def unsubscribe(self, event: str) -> Queued:
        """Stop receiving ``event`` (events already buffered stay in :meth:`events`). Like
        :meth:`subscribe`, awaiting the result is optional."""
        _check_name(event, "event")
        self._raise_if_finished()
        if event in self._subscriptions:
            self._subscriptions.discard(event)
            self._queue_control({"type": "unsubscribe", "event": event})
        return Queued()

    @property
    def subscriptions(self) -> frozenset[str]:
        """The events subscribed to."""
        return frozenset(self._subscriptions)

    def events(self) -> trio.MemoryReceiveChannel[ActorEvent]:
        """The subscribed events, in order, as :class:`ActorEvent` values:
        ``async for event in actor.events()``. Iteration ends when the connection finishes.

        The buffer holds ``buffer_size`` events from the moment the client connects; beyond it
        new events are dropped (``statistics().events_dropped``). Each call returns a new clone
        of one channel: several consumers share (compete for) the same events.
        """
        return self._events_receive.clone()

    def messages(self) -> trio.MemoryReceiveChannel[Any]:
        """The ``data`` of ``{"type": "message"}`` frames (``conn.send`` on the actor), like
        :meth:`events`."""
        return self._messages_receive.clone()

    async def aclose(self) -> None:
        """Close with 1000 (the handshake bounded by ``close_timeout``, even when cancelled)
        and stop reconnecting. Pending calls fail with :class:`ConnectionLost`. Idempotent;
        leaving the ``async with`` block calls it."""
        self._finish(ConnectionLost("closed by the client", close_code=1000, retryable=False))
        live = self._live
        if live is not None:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.options.close_timeout
                await live.ws.aclose(1000)
        else:
            await trio.lowlevel.checkpoint()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def __aenter__(self) -> ActorConnection:
        if self._stack is not None or self.finished:
            raise RuntimeError("an ActorConnection can be entered only once")
        # The nursery is entered and left by _running (an asynccontextmanager), never by hand:
        # a cancel that lands during the close cannot leave trio's nursery stack corrupted.
        stack = self._stack = contextlib.AsyncExitStack()
        return await stack.enter_async_context(self._running())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        # Not shielded: the nursery's exit must stay cancellable; the close inside is
        # shielded and bounded by close_timeout (_running).
        await self._stack.__aexit__(exc_type, exc, tb)  # noqa: ASYNC102

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[ActorConnection]:
        """The connection's nursery for the ``async with`` block. The block's own exception
        is not raised inside the nursery, so it propagates unwrapped (an internal crash
        still raises its group)."""
        error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._supervise, name=f"actorcore.client:{self.name}/{self.key}")
            try:
                # _supervise finishes the connection when the initial connect runs out of
                # time; the extra bound only guards against a bug there.
                with trio.move_on_after(
                    2 * self.options.connect_timeout + self.options.close_timeout
                ) as scope:
                    await self._wait_live()
                if scope.cancelled_caught:
                    raise ConnectionLost(f"not connected within {self.options.connect_timeout}s")
                yield self
            except BaseException as exc:  # noqa: ASYNC103 - re-raised below, outside the nursery
                error = exc
            finally:
                with trio.CancelScope(shield=True):  # aclose bounds itself (close_timeout)
                    await self.aclose()
        if error is not None:
            raise error

    # ---------------------------------------------------------------- calls

    async def _call(
        self, seconds: float | None, action: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        _check_name(action, "action")
        call_id = next(self._ids)
        frame: dict[str, Any] = {"type": "action", "id": call_id, "name": action, "args": args}
        if kwargs:
            frame["kwargs"] = kwargs
        text = json.dumps(frame)
        deadline = math.inf if seconds is None else trio.current_time() + seconds
        pending = _Pending()
        with trio.move_on_at(deadline):
            live = await self._wait_live()
            # No checkpoint from here to the registration: a connection that ends later fails
            # this call through _fail_pending.
            self._pending[call_id] = pending
            self._sent[call_id] = text
            try:
                try:
                    await live.outbox.send(text)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass  # that connection ended; it failed (or will fail) the call
                else:
                    self._calls_sent += 1
                await pending.done.wait()
            finally:
                self._pending.pop(call_id, None)
                self._sent.pop(call_id, None)
        if not pending.done.is_set():
            raise CallTimeout(f"no answer to {action!r} within {seconds}s")
        return pending.result()

    def _fail_pending(self, error: ActorError) -> None:
        pending, self._pending = self._pending, {}
        self._sent = {}
        for call in pending.values():
            call.fail(copy.copy(error))

    def _resumable(self, ended: _Ended) -> bool:
        """Whether calls sent on the connection that ended wait for a resume instead of
        failing: the server gave a token and the client reconnects after this close."""
        return (
            self._resume_token is not None
            and self.options.reconnect
            and ended.policy is not ReconnectPolicy.NEVER
            and ended.close.code != closecodes.RESUME_REFUSED.code
        )

    def _queue_control(self, frame: dict[str, Any]) -> None:
        live = self._live
        if live is None:
            return  # sent with the other subscriptions when the next connection opens
        text = json.dumps(frame)
        try:
            live.outbox.send_nowait(text)
        except trio.WouldBlock:
            # A full outbox: wait for room in a task of our own nursery, keeping this call sync.
            assert self._nursery is not None
            self._nursery.start_soon(self._send_control_later, live, text)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # that connection ended; the next one syncs the subscriptions

    async def _send_control_later(self, live: _Live, text: str) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await live.outbox.send(text)

    # ---------------------------------------------------------------- state changes

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _raise_if_finished(self) -> None:
        if self._final_error is not None:
            raise copy.copy(self._final_error)

    async def _wait_live(self) -> _Live:
        while True:
            self._raise_if_finished()
            if self._live is not None:
                return self._live
            await self._changed.wait()

    def _finish(self, error: ActorError) -> None:
        """End for good: no more reconnects; pending calls fail; event streams end."""
        if self._final_error is not None:
            return
        self._final_error = error
        self._fail_pending(error)
        self._events_send.close()
        self._messages_send.close()
        self._notify()

    # ---------------------------------------------------------------- reconnect loop

    async def _supervise(self) -> None:
        failures = 0
        initial_deadline = trio.current_time() + self.options.connect_timeout
        while True:
            deadline = trio.current_time() + self.options.connect_timeout
            if not self._ever_live:
                deadline = min(deadline, initial_deadline)
            self._attempts += 1
            ended = await self._session(deadline)
            if self._final_error is not None:
                return  # closed by the client meanwhile
            close = ended.close
            self.last_close = close
            self._closes_by_code[close.code] = self._closes_by_code.get(close.code, 0) + 1
            refused = close.code == closecodes.RESUME_REFUSED.code
            if refused:
                self._resume_refusals += 1
                self._outcome_unknown(f"the server refused the resume ({close.reason})")
            if ended.got_init or refused:
                # A refused resume came before init, but the server answered: the fresh
                # connect that follows (without a token) goes at once.
                failures = 0
            if not self.options.reconnect or ended.policy is ReconnectPolicy.NEVER:
                log.info("%s: closed %d %s; not reconnecting", self, close.code, close.reason)
                self._finish(ended.error)
                return
            if ended.policy is ReconnectPolicy.AT_ONCE and failures == 0:
                delay = 0.0
            else:
                delay = backoff_delay(
                    failures, initial=self.options.initial_backoff, maximum=self.options.max_backoff
                )
            failures += 1
            if not self._ever_live and trio.current_time() + delay >= initial_deadline:
                self._finish(ended.error)  # the initial connect ran out of time
                return
            self._last_delay = delay
            log.info(
                "%s: closed %d %s; reconnecting in %.3fs", self, close.code, close.reason, delay
            )
            await trio.sleep(delay)

    async def _open_stream(self) -> trio.abc.Stream:
        if self._open_stream_fn is not None:
            return await self._open_stream_fn()
        if self._ssl_context is not None:
            return await trio.open_ssl_over_tcp_stream(
                self._host, self._port, ssl_context=self._ssl_context, https_compatible=True
            )
        return await trio.open_tcp_stream(self._host, self._port)

    async def _session(self, deadline: float) -> _Ended:
        """One connection attempt, and the connection's life if it opens. Never raises (but
        Cancelled, and bugs)."""
        try:
            with trio.fail_at(deadline):
                stream = await self._open_stream()
        except trio.TooSlowError:
            return _lost("timed out opening the connection")
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return _lost(f"could not connect: {exc}")
        ended: _Ended | None = None
        try:
            try:
                async with trio.open_nursery() as nursery:
                    ended = await self._connection(nursery, stream, deadline)
                    # trio-websocket's reader finishes the close handshake and waits for the
                    # server to close TCP (RFC 6455 7.1.1); the writer ends with its outbox.
                    scope = nursery.cancel_scope
                    scope.deadline = min(
                        scope.deadline, trio.current_time() + self.options.close_timeout
                    )
            except* LocalProtocolError:
                # trio-websocket answers a server ping that crosses our own close frame, which
                # wsproto refuses (python-trio/trio-websocket#184): the connection was ending.
                if ended is None:
                    ended = _lost("the connection ended during its close handshake")
            except* ConnectionRejected as group:
                statuses = [
                    e.status_code for e in _leaves(group) if isinstance(e, ConnectionRejected)
                ]
                status = statuses[0] if statuses else 0
                again = status >= 500 or status in (408, 429)
                policy = ReconnectPolicy.BACKOFF if again else ReconnectPolicy.NEVER
                ended = _lost(f"the server refused the upgrade: HTTP {status}", policy=policy)
        finally:
            # trio-websocket leaves the stream open after a close the server started, and
            # after a refused upgrade: close it here so no socket is left to the GC.
            await trio.aclose_forcefully(stream)
        assert ended is not None
        return ended

    async def _connection(
        self, nursery: trio.Nursery, stream: trio.abc.Stream, deadline: float
    ) -> _Ended:
        opened: WebSocketConnection | _Ended | None = None
        with trio.move_on_at(deadline):
            opened = await self._open(nursery, stream)
        if opened is None:
            nursery.cancel_scope.cancel()  # stop trio-websocket's reader at once
            return _lost("timed out opening the connection")
        if isinstance(opened, _Ended):
            return opened
        return await self._serve(nursery, opened)

    async def _open(
        self, nursery: trio.Nursery, stream: trio.abc.Stream
    ) -> WebSocketConnection | _Ended:
        """Upgrade, wait for ``init``, send the calls a resume must send again and the
        subscriptions (the caller bounds it)."""
        resource = self._resource
        token = self._resume_token if self.options.resume else None
        query = []
        if self._asks_numbers:
            query.append("seq=1")
        if token is not None:
            query.append(f"resume={quote(token, safe='')}&ack={self._last_seq}")
        if query:
            resource += ("&" if "?" in resource else "?") + "&".join(query)
        ws = await wrap_client_stream(
            nursery,
            stream,  # type: ignore[arg-type]  # any trio Stream works
            self._host_header,
            resource,
            subprotocols=self._subprotocols,
            max_message_size=self.options.max_message_size,
            receive_buffer_size=4096,  # see actorcore.ws.server.RECEIVE_BUFFER
        )
        try:
            first = await ws.get_message()
        except ConnectionClosed as exc:
            return _from_close(exc, got_init=False)
        init = _parse_init(first)
        if init is None:
            with trio.move_on_after(self.options.close_timeout):
                await ws.aclose(1002, "protocol.invalid_init")
            return _lost(
                f"the first frame is not an init frame: {first[:200]!r}",
                policy=ReconnectPolicy.NEVER,
            )
        self.actor_id, self.conn_id, self.generation = init.actor_id, init.conn_id, init.generation
        if token is not None and not init.resumed:
            self._outcome_unknown("the server did not take the connection back")
        self._resume_token = init.resume_token if self.options.resume else None
        try:
            if init.resumed:
                self._resumes += 1
                self._acked = self._last_seq
                # Sent again with their ids: the server answers those that ran from its record.
                for call_id in sorted(self._sent):
                    await ws.send_message(self._sent[call_id])
            await self._sync_subscriptions(ws)
        except ConnectionClosed as exc:
            return _from_close(exc, got_init=True)
        return ws

    def _outcome_unknown(self, why: str) -> None:
        """A resume did not happen: calls sent without an answer may or may not have run.
        They fail (not retryable); the next connection is a new one."""
        self._resume_token = None
        self._last_seq = self._acked = 0
        if self._sent:
            pending = [self._pending.pop(call_id, None) for call_id in list(self._sent)]
            self._sent = {}
            for call in pending:
                if call is not None:
                    call.fail(
                        ConnectionLost(f"{why}; the call's outcome is unknown", retryable=False)
                    )

    async def _sync_subscriptions(self, ws: WebSocketConnection) -> None:
        """Subscribe the new connection to :attr:`subscriptions`, even if they change meanwhile
        (until it is live, subscribe/unsubscribe only edit the set)."""
        on_server: set[str] = set()
        while on_server != self._subscriptions:
            for event in sorted(self._subscriptions - on_server):
                await ws.send_message(json.dumps({"type": "subscribe", "event": event}))
                on_server.add(event)
            for event in sorted(on_server - self._subscriptions):
                await ws.send_message(json.dumps({"type": "unsubscribe", "event": event}))
                on_server.discard(event)

    async def _serve(self, nursery: trio.Nursery, ws: WebSocketConnection) -> _Ended:
        """The live connection: read frames until it closes."""
        outbox_send, outbox_receive = trio.open_memory_channel[str](OUTBOX_SIZE)
        nursery.start_soon(self._write, ws, outbox_receive)
        acks = trio.CancelScope()
        if self.options.resume:
            nursery.start_soon(self._ack_later, outbox_send, acks)
        self._live = _Live(ws, outbox_send)
        self._ever_live = True
        self._connects += 1
        self._notify()
        log.debug("%s: live (conn_id=%s generation=%d)", self, self.conn_id, self.generation)
        try:
            while True:
                try:
                    message = await ws.get_message()
                except ConnectionClosed as exc:
                    ended = _from_close(exc, got_init=True)
                    break
                self._dispatch(message)
        finally:
            self._live = None
            acks.cancel()  # the connection's nursery ends with its reader and writer
            outbox_send.close()
            self._notify()
        if ended.close.code == closecodes.RESUME_TAKEN_OVER.code:
            # Another socket resumed this connection: calls sent here may still run and
            # answer that socket, so their outcome is unknown here.
            self._outcome_unknown("another socket took the connection over")
        if not self._resumable(ended):
            # No resume will follow: calls sent on this connection fail now.
            self._fail_pending(ended.error)
        return ended

    async def _ack_later(
        self, outbox: trio.MemorySendChannel[str], scope: trio.CancelScope
    ) -> None:
        """Acknowledge received outputs that no call frame carried an ``ack`` for within
        ``ACK_DELAY``, until its connection ends (``scope`` is cancelled then)."""
        with scope:
            while True:
                await self._unacked.wait()
                self._unacked = trio.Event()
                await trio.sleep(ACK_DELAY)
                self._send_ack(outbox)

    def _send_ack(self, outbox: trio.MemorySendChannel[str]) -> None:
        seq = self._last_seq
        if seq <= self._acked:
            return
        try:
            outbox.send_nowait(json.dumps({"type": "ack", "seq": seq}))
        except trio.WouldBlock:
            self._unacked.set()  # a full outbox: the delayed ack tries again
            return
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return  # the resume's ack= carries it
        self._acked = seq

    async def _write(self, ws: WebSocketConnection, outbox: trio.MemoryReceiveChannel[str]) -> None:
        """Send queued frames in order. Callers only queue, so a cancelled call never leaves a
        half-written frame on the stream."""
        async for text in outbox:
            if self._last_seq > self._acked and text.startswith('{"type": "action"'):
                # Piggybacked: the call acknowledges what was received before it.
                self._acked = self._last_seq
                text = f'{text[:-1]}, "ack": {self._acked}}}'
            try:
                await ws.send_message(text)
            except ConnectionClosed:
                return  # the reader sees the close too

    def _numbered(self, seq: int) -> bool:
        """A numbered output arrived: False if it is a duplicate (sent again after a resume).
        Acknowledged at once after ``ACK_EVERY`` outputs, else within ``ACK_DELAY``."""
        last = self._last_seq
        if seq <= last:
            self._duplicates_dropped += 1
            return False
        if seq > last + 1:
            self._outputs_skipped += seq - last - 1
        self._last_seq = seq
        live = self._live
        if live is not None and seq - self._acked >= ACK_EVERY:
            self._send_ack(live.outbox)
        else:
            self._unacked.set()
        return True

    def _dispatch(self, message: str | bytes) -> None:
        try:
            frame = json.loads(message)
        except (ValueError, RecursionError):
            log.warning("%s: ignoring a frame that is not JSON", self)
            return
        if not isinstance(frame, dict):
            log.warning("%s: ignoring a frame that is not an object", self)
            return
        kind = frame.get("type")
        seq = frame.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and self.options.resume:
            if not self._numbered(seq):
                return
        else:
            seq = None
        if kind == "action_result" or kind == "error":
            call_id = frame.get("id")
            call = None
            if isinstance(call_id, int) and not isinstance(call_id, bool):
                call = self._pending.get(call_id)
            if kind == "action_result":
                if call is not None:
                    call.resolve(frame.get("output"))
                return
            error = error_from_frame(frame)
            if call is not None:
                call.fail(error)
            elif call_id is None:
                log.warning("%s: error from the server: %r", self, error)
        elif kind == "event":
            name, args = frame.get("name"), frame.get("args", [])
            if isinstance(name, str) and isinstance(args, list):
                self._events_received += 1
                try:
                    self._events_send.send_nowait(ActorEvent(name, tuple(args), seq))
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    self._events_dropped += 1
        elif kind == "message":
            self._messages_received += 1
            try:
                self._messages_send.send_nowait(frame.get("data"))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                self._messages_dropped += 1
        elif kind == "init":
            init = _parse_init(message)
            if init is not None:
                self.actor_id, self.generation = init.actor_id, init.generation
        else:
            log.debug("%s: ignoring a frame of type %r", self, kind)


def connect(
    url: str,
    name: str,
    key: str,
    *,
    params: Any = None,
    reconnect: bool = True,
    connect_timeout: float = 10.0,
    call_timeout: float | None = 60.0,
    close_timeout: float = 2.0,
    initial_backoff: float = 0.1,
    max_backoff: float = 5.0,
    max_message_size: int = 16 * 2**20,
    buffer_size: int = 1024,
    resume: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    open_stream: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    gateway: Gateway | None = None,
) -> ActorConnection:
    """A client for the actor ``name``/``key`` served at ``url`` (``ws://host:port``, or
    ``wss://``; a path prefix is kept): ``async with connect(...) as actor:``.

    Entering connects to ``{url}/actors/{name}/{key}/connect?params=<JSON>`` and waits for the
    ``init`` frame. Reconnectable failures are retried (see the module docs) until
    ``connect_timeout`` has passed; a close that is not reconnected raises its typed error
    (e.g. :class:`~actorcore.ActorNotFound`, :class:`~actorcore.Forbidden`) from ``async with``.

    - ``params``: JSON-serialisable connection params (``on_before_connect``,
      ``create_conn_state``).
    - ``reconnect``: False to finish at the first close instead.
    - ``connect_timeout``: bound on each attempt (TCP, upgrade, ``init``, subscriptions) and
      on the initial connect as a whole.
    - ``call_timeout``: default bound on :meth:`ActorConnection.call` (None: unbounded).
    - ``close_timeout``: bound on the closing handshake.
    - ``initial_backoff``, ``max_backoff``: the backoff range (:func:`backoff_delay`).
    - ``max_message_size``: largest frame accepted from the server.
    - ``buffer_size``: events (and messages) buffered for :meth:`ActorConnection.events`.
    - ``resume``: take the connection back after a lost socket or a server restart, with
      calls that complete exactly once and events numbered and deduplicated
      (``docs/zero-loss.md``); False: at-most-once calls as before.
    - ``ssl_context``: for ``wss://`` (default: ``ssl.create_default_context()``).
    - ``open_stream``: open the byte stream yourself (tests: an in-memory stream); the URL's
      host then only goes into the ``Host`` header.
    - ``gateway``: reach the actor through a Rivet engine's gateway (:class:`Gateway`);
      ``url`` is then the engine's.
    """
    options = ClientOptions(
        reconnect=reconnect,
        connect_timeout=connect_timeout,
        call_timeout=call_timeout,
        close_timeout=close_timeout,
        initial_backoff=initial_backoff,
        max_backoff=max_backoff,
        max_message_size=max_message_size,
        buffer_size=buffer_size,
        resume=resume,
    )
    return ActorConnection(
        url,
        name,
        key,
        params=params,
        options=options,
        ssl_context=ssl_context,
        open_stream=open_stream,
        gateway=gateway,
    )
