"""The dispatcher: one handler per connection, and the lifecycle check points.

Each connection is routed to its actor and checked against the actor's lifecycle, always through
:func:`actorcore.lifecycle.admit`:

1. **before handler setup** (after routing, before ``on_before_connect``): a STARTED actor admits;
   LOADING, asleep, or sleeping actors hold the connection until their next generation is ready
   (bounded by ``ready_timeout``); destroying or destroyed ones refuse it (1000);
2. **on open** (after the setup hooks, before the connection goes live): checked again, because
   the state may have changed while setup awaited; if the generation moved on, setup runs again
   in the next one;
3. **on every message**: a message is delivered only to a generation that has not begun finalize.
   On a hibernatable connection a message that arrives while the actor finalizes or sleeps is
   buffered in order, wakes the actor and is delivered to the next generation. On a
   non-hibernatable one it is not delivered, and the connection gets its close frame.

The fourth point, at finalize, lives in the generation: it closes the connections that do not
survive it (1001 on sleep, 1000 on destroy) before it ends.

A refusal is always an accepted upgrade followed by a close frame. Nothing a handler does can
raise into the server: every exception ends its own connection with 1011.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .. import closecodes, deadlines
from ..closecodes import CloseCode
from ..conn import Conn, ConnKind, Transport, TransportClosed
from ..errors import (
    ActionNotFound,
    ActorDestroyed,
    ActorError,
    ActorOverloaded,
    ActorReadyTimeout,
    ActorStopping,
    InternalError,
    MessageTooLarge,
    ResumeRefused,
    SubscriptionLimit,
)
from ..generation import ActorEntry, Generation, WorkScope
from ..lifecycle import WorkKind
from ..logfmt import RefusalLog, quoted
from ..registry import host_of
from ..request import ConnectRequest
from ..resume import Journal, ResumeToken
from .protocol import (
    Ack,
    ActionRequest,
    Subscribe,
    encode_action_result,
    encode_error,
    encode_init,
)
from .protocol import parse_client_frame as parse_client_frame
from .routes import Route, parse_route

if TYPE_CHECKING:
    from ..registry import Registry, RegistryHost

__all__ = ["ConnPhase", "ConnectRequest", "Dispatcher", "ResumedConn"]

log = logging.getLogger("actorcore.ws")

#: Bound on the registry's ``authorize`` gate for one request.
AUTHORIZE_TIMEOUT: Final = 10.0


class _AuthorizeFailed(Exception):
    """The ``authorize`` gate raised something else than an ActorError, or hung."""


class _Counting:
    """Transport wrapper that counts sent messages and close frames into the registry's
    counters (the reader counts received messages itself: one call less per message)."""

    __slots__ = ("_counters", "_inner", "held", "receive", "released")

    def __init__(self, inner: Transport, host: RegistryHost) -> None:
        self._inner = inner
        self._counters = host.counters
        self.receive = inner.receive
        # A transport that acknowledges messages to its peer (a gateway that keeps the
        # unacknowledged ones for the actor's next generation) is told which message the
        # reader held for a next generation, and when it was delivered.
        self.held: Callable[[], None] | None = getattr(inner, "held", None)
        self.released: Callable[[], None] | None = getattr(inner, "released", None)

    async def send(self, message: str | bytes) -> None:
        await self._inner.send(message)
        self._counters.messages_out += 1

    def start_close(self, code: int, reason: str) -> bool:
        if not self._inner.start_close(code, reason):
            return False
        self._count_close(code, reason)
        return True

    async def close(self, code: int, reason: str) -> None:
        self._count_close(code, reason)
        await self._inner.close(code, reason)

    async def close_refused(self, code: int, reason: str) -> None:
        """Close a connection refused before it had a Conn: counted, and logged by the
        rate-limited refusal log instead of a line per close."""
        self._counters.closes_by_code[code] += 1
        await self._inner.close(code, reason)

    def _count_close(self, code: int, reason: str) -> None:
        self._counters.closes_by_code[code] += 1
        log.info(
            "closing connection: %d %s", code, reason, extra={"close_code": code, "reason": reason}
        )

    async def abort(self) -> None:
        await self._inner.abort()


@attrs.define(eq=False)
class Dispatcher:
    """Routes connections to actors of ``registry`` and runs their check points."""

    registry: Registry
    max_connections: int = 10_000
    """Connections beyond this are refused with 1013 ``actor.overloaded``."""
    close_timeout: float = 2.0
    """Bound on the close handshakes of :meth:`close_all`."""
    _handlers: set[_ConnHandler] = attrs.field(factory=set["_ConnHandler"], init=False)
    _closing: bool = attrs.field(default=False, init=False)
    refusals: RefusalLog = attrs.field(factory=lambda: RefusalLog(log), init=False)
    host: RegistryHost = attrs.field(init=False)
    """The registry's internal interface (lookups, admission, invocation, counters)."""
    """Connections refused before they had a Conn, logged at most once a second per reason."""

    def __attrs_post_init__(self) -> None:
        self.host = host_of(self.registry)
        # Every connection gets its 1012 close frame before actors sleep (a drain step), for
        # any embedder of the dispatcher, not only actorcore's own server.
        self.registry.add_drain_step(lambda: self.close_all(closecodes.RUNTIME_SHUTDOWN))

    @property
    def connections(self) -> int:
        """Connections being handled (held, live, or closing)."""
        return len(self._handlers)

    def phases(self) -> dict[ConnPhase, int]:
        """Connections being handled, by the phase their handler is in (one pass over them:
        for statistics and tests, not for a hot path)."""
        counts = dict.fromkeys(ConnPhase, 0)
        for handler in self._handlers:
            counts[handler.phase] += 1
        return counts

    async def handle(
        self,
        target: str,
        request: ConnectRequest,
        accept: Callable[[], Awaitable[Transport]],
        *,
        task_nursery: trio.Nursery | None = None,
        can_hibernate: bool = True,
        resume: ResumedConn | None = None,
        conn_id: str | None = None,
    ) -> None:
        """Handle one WebSocket request from upgrade to close. Never raises (except Cancelled).

        ``task_nursery`` runs the connection's writer and action tasks; it must stay open
        until they end (they are bounded by ``close_timeout`` and the actor's deadlines). The
        server passes the nursery trio-websocket already opens per connection for its reader
        task (one nursery less per connection); None opens one for this call.
        ``can_hibernate`` False: the transport cannot outlive the actor's generation (a
        tunnel whose gateway does not hold it), so the connection is never hibernatable and
        gets 1001 ``actor.sleeping`` when its generation finalizes.
        ``conn_id``: the connection's id, when the transport has one of its own (a gateway's
        request); a new random one otherwise.
        ``resume``: the transport carries a connection that hibernated (a gateway held the
        client's socket while the actor slept or moved): it goes live again in the actor's
        current generation with what it had, without the setup hooks or ``on_connect``.
        """
        if task_nursery is None:
            async with trio.open_nursery() as nursery:
                await self.handle(
                    target,
                    request,
                    accept,
                    task_nursery=nursery,
                    can_hibernate=can_hibernate,
                    resume=resume,
                    conn_id=conn_id,
                )
            return
        try:
            accepted = await accept()
        except TransportClosed:
            log.info("client left during the handshake (%s)", quoted(target, 100))
            return
        transport = _Counting(accepted, self.host)
        handler = _ConnHandler(self, transport, target, request, task_nursery)
        handler.can_hibernate = can_hibernate
        handler.conn_id = conn_id
        # This frame lives as long as the connection: keep nothing it does not need.
        del accept, accepted, request
        if self._closing or self.registry.draining:
            await handler.close_direct(closecodes.RUNTIME_SHUTDOWN)
            return
        if len(self._handlers) >= self.max_connections:
            await handler.close_direct(closecodes.OVERLOADED)
            return
        self._handlers.add(handler)
        try:
            await handler.run(resume)
        except Exception:
            log.exception("connection handler crashed (%s)", quoted(target, 100))
            await handler.close_direct(closecodes.INTERNAL_ERROR)
        finally:
            self._handlers.discard(handler)
            handler.finished()

    async def close_all(self, close: CloseCode) -> None:
        """Close every connection with ``close`` (concurrently, bounded by ``close_timeout``)
        and refuse new ones. Used by the registry's drain, before actors go to sleep."""
        self._closing = True
        handlers = list(self._handlers)
        for handler in handlers:
            handler.shutdown(close)
        with trio.move_on_after(self.close_timeout + 1):
            await trio.lowlevel.checkpoint()
            for handler in handlers:
                # The close handshake, not the handler: its in-flight actions end with the
                # actors' sleep, which the drain starts after this step. (No wait, and so no
                # scheduler round, for those already done: thousands, by the time we look.)
                conn = handler.conn
                if conn is not None:
                    if not conn.ended:
                        await conn.wait_closed()
                elif handler.phase is not ConnPhase.DONE:
                    await handler.wait_finished()


def _action_error(gen: Generation, frame: ActionRequest, exc: Exception) -> str:
    """The error frame for an action that raised (call it in the ``except`` block: anything
    but an ActorError is logged with its traceback)."""
    if isinstance(exc, ActorError):
        return encode_error(frame.id, exc)
    log.exception("actor %s id=%s: action %r raised", gen.entry.name, gen.actor_id, frame.name)
    return encode_error(frame.id, InternalError("the action raised"))


async def _answer(conn: Conn, frame: ActionRequest, reply: str) -> None:
    """Send an action's answer: recorded in a resumable connection's journal (a resent id is
    answered from there; numbered if the client asked), held by the output gate if any."""
    journal = conn.journal
    if journal is not None:
        journal.end(frame.id)
    await conn.send_output(reply, frame.id)


@attrs.frozen
class ResumedConn:
    """A hibernated connection to take back (see :meth:`Dispatcher.handle`)."""

    actor_id: str
    conn_id: str
    kind: ConnKind
    params: Any
    state: Any
    subscriptions: tuple[str, ...] = ()


class _Reply:
    """An action's answer, tracked as work of its generation until it is sent, so that no
    generation (and no registry) ends before the answers of its actions are out. The grace
    deadline does not cancel it: its send is bounded by the watchdog (``close_timeout``)."""

    __slots__ = ()

    def cancel(self) -> None:
        """Nothing to cancel (see the class docstring)."""


class ConnPhase(enum.Enum):
    """Where a connection's handler is (``_ConnHandler.phase``), in order."""

    ROUTING = "routing"
    """The route is parsed, ``authorize`` runs, the actor is looked up (or created)."""
    SETUP = "setup"
    """Check point 1, the setup hooks, check point 2 (repeated if the generation moved on)."""
    OPEN = "open"
    """Live on its actor: ``on_connect``/``on_ws_open``, then the read loop (check point 3).
    Also where a refused connection reads until its close handshake ends."""
    TEARDOWN = "teardown"
    """The transport closed: the disconnect hooks run (unless finalize or a drain ran them)."""
    DONE = "done"
    """The handler returned (or crashed): no task of it may start any more."""


class _ConnHandler:
    """One connection, from routing to its last hook."""

    __slots__ = (
        "_expire_hook",
        "buffer",
        "can_hibernate",
        "conn",
        "conn_id",
        "delivering",
        "dispatcher",
        "done_event",
        "hook_timed_out",
        "host",
        "inflight",
        "interrupted",
        "last_started",
        "loop_scope",
        "numbered",
        "nursery",
        "phase",
        "phase_scope",
        "request",
        "shutdown_close",
        "target",
        "task",
        "transport",
    )

    def __init__(
        self,
        dispatcher: Dispatcher,
        transport: _Counting,
        target: str,
        request: ConnectRequest,
        nursery: trio.Nursery,
    ) -> None:
        self.dispatcher = dispatcher
        self.host = dispatcher.host
        self.transport = transport
        self.target = target
        self.request: ConnectRequest | None = request
        """Needed by the setup hooks only; dropped once the connection is live."""
        self.conn: Conn | None = None
        self.can_hibernate = True
        self.conn_id: str | None = None
        """The id the transport gives the connection (see Dispatcher.handle), if any."""
        """False: the transport cannot outlive a generation (see Dispatcher.handle)."""
        self.numbered = False
        """The client asked for numbered outputs (``?seq=1``)."""
        self.buffer: collections.deque[Any] | None = None
        """Messages waiting for the next generation (made on first use: most connections
        never buffer, and an empty deque costs ~600 B)."""
        self.delivering = False
        self.last_started: trio.Event | None = None
        self.inflight = 0
        """Actions of this connection admitted and not yet answered."""
        self.phase = ConnPhase.ROUTING
        self.phase_scope: trio.CancelScope | None = None
        """The scope of the ROUTING or SETUP step running now: a drain cancels it."""
        self.shutdown_close: CloseCode | None = None
        """Set by a drain: the close this connection gets."""
        self.done_event: trio.Event | None = None
        self.nursery = nursery
        """Where the writer, action and buffered-delivery tasks run (see Dispatcher.handle)."""
        # The in-loop message hook (see run): its task, the read loop's cancel scope,
        # why that scope was cancelled, and the generation whose hook it interrupted.
        self.task: trio.lowlevel.Task | None = None
        self.loop_scope: trio.CancelScope | None = None
        self.hook_timed_out = False
        self.interrupted: Generation | None = None
        self._expire_hook = self._on_hook_timeout

    # ---------------------------------------------------------------- closing

    async def close_direct(self, close: CloseCode) -> None:
        """Close before a Conn exists (routing failed, refused at the door)."""
        with trio.move_on_after(2.0, shield=True):
            with contextlib.suppress(TransportClosed):
                await self.transport.close_refused(close.code, close.reason)

    def shutdown(self, close: CloseCode) -> None:
        """Close for a registry drain, whatever phase the handler is in.

        Frames read from now on are not delivered. Actions already running answer first: the
        close is queued when the last of them has sent its result (they end at the latest with
        their actor's grace deadline, which the drain starts next)."""
        self.shutdown_close = close
        if self.conn is not None and self.inflight == 0:
            self.conn.close_nowait(close.code, close.reason)
        if self.phase_scope is not None:
            self.phase_scope.cancel()

    def _enter(self, phase: ConnPhase) -> trio.CancelScope:
        """Move to ``phase`` (ROUTING or SETUP) and return the scope to run it in: a drain
        cancels it, including one that began before the scope was entered."""
        self.phase = phase
        scope = self.phase_scope = trio.CancelScope()
        if self.shutdown_close is not None:
            scope.cancel()
        return scope

    def close(self, close: CloseCode) -> None:
        assert self.conn is not None
        self.conn.close_nowait(close.code, close.reason)

    # ---------------------------------------------------------------- run

    def finished(self) -> None:
        """The handler has returned (or crashed): no writer may start any more, and
        :meth:`wait_finished` returns."""
        if self.conn is not None:
            self.conn.mark_closed()
        self.phase = ConnPhase.DONE
        self.phase_scope = None
        if self.done_event is not None:
            self.done_event.set()

    async def wait_finished(self) -> None:
        """Wait until :meth:`finished` (the event is made on first use: most handlers are
        never waited for)."""
        if self.phase is ConnPhase.DONE:
            await trio.lowlevel.checkpoint()
            return
        if self.done_event is None:
            self.done_event = trio.Event()
        await self.done_event.wait()

    async def run(self, resume: ResumedConn | None = None) -> None:
        """Route, set up, serve and tear down the connection (the caller handles a crash);
        with ``resume``, take a hibernated connection back instead of routing and setting up
        a new one (see :meth:`Dispatcher.handle`).

        Check point 3, the read loop, is inline: this frame lives as long as the connection,
        and every coroutine frame held per idle connection costs memory."""
        if resume is not None:
            resumed = await self._resume(resume)
            if resumed is None:
                return
            entry, conn = resumed
            refused = False
        else:
            started = await self._start()
            if started is None:
                return
            entry, conn, live = started
            refused = not live and await self._open(entry, conn) is None
        self.request = self.phase_scope = None  # setup is over
        self.phase = ConnPhase.OPEN
        if refused:
            # The close is queued or already on the wire; a close started by the transport
            # ends when the reader sees the peer's answer (or the watchdog aborts it), so read
            # (and drop) until then, as the read loop would.
            receive = self.transport.receive
            while not conn.ended:
                try:
                    await receive()
                except TransportClosed:
                    break
            conn.mark_closed()
            return
        protocol = conn.kind is ConnKind.PROTOCOL
        # Protocol connections are hibernatable unless their transport cannot be (see _start).
        kind = WorkKind.HIBERNATABLE_MESSAGE if conn.hibernatable else WorkKind.MESSAGE
        self.task = trio.lowlevel.current_task()
        max_size = entry.definition.options.max_message_size
        receive = self.transport.receive
        counters = self.host.counters
        hook_timeout = entry.definition.options.hook_timeout
        now = trio.lowlevel.current_clock().current_time
        closed: tuple[int, str] | None = None
        while closed is None:
            with trio.CancelScope() as self.loop_scope:
                while True:
                    try:
                        message = await receive()
                    except TransportClosed as exc:
                        # The hooks see the close the server sent, if it sent one (the
                        # transport reports its own view of a close it started).
                        closed = conn.server_close or (exc.code, exc.reason)
                        break
                    except MessageTooLarge as exc:
                        # The transport counts fragments as they arrive and drops the rest.
                        if not conn.closing and self.shutdown_close is None:
                            self.close(closecodes.for_error(exc))
                        continue
                    counters.messages_in += 1
                    if conn.closing or self.shutdown_close is not None:
                        continue  # a close is queued or due: nothing more is delivered
                    if len(message) > max_size:
                        err = MessageTooLarge(f"message of {len(message)} > {max_size}")
                        self.close(closecodes.for_error(err))
                        continue
                    item: Any = message
                    if protocol:
                        item = self._protocol_item(entry, conn, message)
                        if item is None:
                            continue
                    if self.buffer or self.delivering:
                        self._buffer(entry, conn, item)
                        continue
                    try:
                        gen = entry.admitted(kind)  # check point 3
                    except (ActorDestroyed, ActorStopping) as refusal:
                        self._refuse(item if protocol else None, refusal)
                        continue
                    if gen is None:
                        self._buffer(entry, conn, item)
                    elif protocol:
                        await self._deliver(gen, conn, item)
                    else:
                        await self._deliver_raw(gen, conn, item, now() + hook_timeout)
                    del gen
            if closed is not None:
                break
            # The scope was cancelled: a message hook outlived hook_timeout, or the grace
            # deadline cut it. If the cancel landed after the hook had returned, it only
            # interrupted a receive (which loses nothing); read on either way.
            cut, self.interrupted = self.interrupted, None
            if cut is not None and self.hook_timed_out and not cut.aborted:
                log.error(
                    "actor %s id=%s: on_ws_message exceeded hook_timeout",
                    cut.entry.name,
                    cut.actor_id,
                )
                self.close(closecodes.INTERNAL_ERROR)
            self.hook_timed_out = False
        conn.mark_closed()  # the transport is closed: stop the writer
        self.phase = ConnPhase.TEARDOWN
        await self._teardown(entry, conn, *closed)

    async def _start(self) -> tuple[ActorEntry, Conn, bool] | None:
        """Route the request to its actor and make the Conn; None if it was refused (the
        close is sent). True with it: the connection is live already (a resume took back a
        detached one)."""
        try:
            with self._enter(ConnPhase.ROUTING):
                route = parse_route(self.target)
                token = None if route.resume is None else ResumeToken.parse(route.resume)
                await self._authorize(route)
                entry = await self._resolve(route)
        except ActorError as exc:
            self._log_refusal(exc)
            await self.close_direct(closecodes.for_error(exc))
            return None
        except _AuthorizeFailed:
            await self.close_direct(closecodes.INTERNAL_ERROR)
            return None
        if self.shutdown_close is not None:
            await self.close_direct(self.shutdown_close)
            return None
        self.numbered = route.numbered
        if token is not None:
            taken = await self._take_back(entry, token, route.ack)
            return None if taken is None else (entry, taken, True)
        options = entry.definition.options
        hibernatable = self.can_hibernate and (
            route.kind is ConnKind.PROTOCOL or options.hibernatable_websockets
        )
        conn = self.conn = Conn(
            id=self.conn_id or uuid.uuid4().hex,
            actor_id=entry.actor_id,
            kind=route.kind,
            params=route.params,
            hibernatable=hibernatable,
            close_timeout=options.close_timeout,
        )
        conn.bind(self.transport, self._start_writer, self.host.watchdog)
        return entry, conn, False

    async def _authorize(self, route: Route) -> None:
        """The registry's ``authorize`` gate, before any lookup or creation: its Forbidden
        (or any ActorError) refuses the connection; any other exception or a gate slower
        than AUTHORIZE_TIMEOUT is a server bug (logged, 1011)."""
        gate = self.host.authorize
        assert self.request is not None
        request = self.request = attrs.evolve(
            self.request,
            name=route.name,
            key=route.key,
            actor_id=route.actor_id,
            params=route.params,
        )
        if gate is None:
            return
        try:
            with trio.fail_after(AUTHORIZE_TIMEOUT):
                await gate(request)
        except ActorError:
            raise
        except trio.TooSlowError:
            log.error("authorize did not answer within %.0f s", AUTHORIZE_TIMEOUT)
            raise _AuthorizeFailed from None
        except Exception:
            log.exception("authorize raised")
            raise _AuthorizeFailed from None

    @property
    def client_host(self) -> str | None:
        """The client's address, while the request is kept (routing and setup)."""
        request = self.request
        return request.client.host if request is not None and request.client else None

    def _log_refusal(self, exc: ActorError) -> None:
        self.dispatcher.refusals.note(exc.code, self.client_host, self.target)

    async def _resolve(self, route: Route) -> ActorEntry:
        host = self.host
        if route.actor_id is not None:
            return await host.find_entry(route.actor_id)
        assert route.name is not None and route.key is not None
        return await host.find_entry_by_key(
            route.name,
            route.key,
            # A resume never creates: its actor is gone if the key names none.
            create=route.resume is None,
            input=None,
            client=self.client_host,
        )

    def _start_writer(self) -> None:
        self.nursery.start_soon(self._guarded, self._write)

    async def _write(self) -> None:
        """A writer task: runs while frames are queued (see ``Conn.bind``)."""
        conn = self.conn
        assert conn is not None
        ended = True
        try:
            # None: the outbox is empty and the connection open; a later frame starts a writer.
            ended = await conn.run_writer(self.transport, conn.close_timeout) is not None
        except TransportClosed:
            pass
        finally:
            if ended:
                conn.mark_closed()

    async def _guarded(self, task: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run one of the connection's tasks in the shared task nursery: a crash (a bug) is
        logged and closes this connection with 1011, never the nursery's other tasks."""
        try:
            await task(*args)
        except Exception:
            log.exception("connection task crashed (%s)", quoted(self.target, 100))
            if self.conn is not None:
                self.conn.mark_closed()
            await self.close_direct(closecodes.INTERNAL_ERROR)

    async def _resume(self, resume: ResumedConn) -> tuple[ActorEntry, Conn] | None:
        """Take a hibernated connection back (no routing, no setup hooks, no
        ``on_connect``): check point 1 holds it until the actor's generation runs, and it goes
        live in that generation, with its id, params, state and subscriptions. None when the
        actor is gone (the close is sent)."""
        entry = self.host.entry(resume.actor_id)
        if entry is None:
            await self.close_direct(closecodes.NOT_FOUND)
            return None
        conn = self._rebuilt(
            entry, resume.conn_id, resume.kind, resume.params, resume.state, resume.subscriptions
        )
        conn.hibernatable = True
        try:
            with self._enter(ConnPhase.SETUP):
                gen = await self._admit_connect(entry)  # check point 1
        except ActorError as exc:
            self.close(closecodes.for_error(exc))
            return None
        if self.shutdown_close is not None:
            self.close(self.shutdown_close)
            return None
        # Live: attached synchronously with the admission (no checkpoint in between). The
        # client learns from the init frame the generation that serves it now.
        self._go_live(entry, gen, conn)
        return entry, conn

    def _rebuilt(
        self,
        entry: ActorEntry,
        conn_id: str,
        kind: ConnKind,
        params: Any,
        state: Any,
        subscriptions: tuple[str, ...],
    ) -> Conn:
        """A connection taken back (from a gateway's hibernation or a resume) with what it
        had, bound to this handler's transport; setup is over for it."""
        options = entry.definition.options
        conn = self.conn = Conn(
            id=conn_id,
            actor_id=entry.actor_id,
            kind=kind,
            params=params,
            hibernatable=self.can_hibernate,
            close_timeout=options.close_timeout,
        )
        conn.state = state
        for event in subscriptions:
            conn.subscribe(event, options.max_subscriptions)
        conn.bind(self.transport, self._start_writer, self.host.watchdog)
        self.request = None
        return conn

    def _go_live(
        self, entry: ActorEntry, gen: Generation, conn: Conn, token: ResumeToken | None = None
    ) -> None:
        """Attach ``conn`` to its actor and generation, and queue a protocol connection's
        init frame (``token``: it resumed with that token). A new protocol connection gets a
        journal and a resume token when the store keeps connection records. Call it with no
        checkpoint since the admission it follows."""
        self.phase = ConnPhase.OPEN
        self.phase_scope = None
        entry.add_conn(conn)
        gen.conn_attached(conn)
        if conn.kind is not ConnKind.PROTOCOL:
            return
        resumed = token is not None
        if token is None and self.host.store.keeps_conns:
            journal, secret = Journal.new(
                entry.definition.options.max_unacked_outputs, numbered=self.numbered
            )
            journal.attached = conn
            conn.journal = journal
            token = ResumeToken(entry.actor_id, conn.id, secret)
        # With or without a journal (the engine's store keeps no connection records): an
        # answer leaves only once the state it follows is durable.
        conn.gate = self.host.output_gate(entry, gen)
        if conn.journal is not None:
            conn.journal.on_change = functools.partial(entry.note_conn, conn)
            entry.note_conn(conn)
        conn.queue_frame(
            encode_init(
                entry.actor_id, conn.id, gen.number, None if token is None else str(token), resumed
            )
        )

    # ---------------------------------------------------------------- resume

    async def _take_back(
        self, entry: ActorEntry, token: ResumeToken, ack: int | None
    ) -> Conn | None:
        """``?resume=TOKEN``: take back the connection the token names, live in the actor's
        current generation with its id, params, state, subscriptions and journal; then send
        again the outputs its client has not acknowledged. None when refused (close 4001, or
        the close of a failed admission, is sent)."""
        try:
            if token.actor_id != entry.actor_id:
                raise ResumeRefused(
                    "the resume token belongs to a connection of another actor",
                    code="resume.wrong_actor",
                )
            if not self.host.store.keeps_conns:
                raise ResumeRefused("this server keeps no resumable connections")
            gen: Generation | None = None
            with self._enter(ConnPhase.SETUP):
                # Check point 1; a wake loads the actor's stored connections.
                gen = await self._admit_connect(entry)
            if gen is None or self.shutdown_close is not None:
                await self.close_direct(self.shutdown_close or closecodes.RUNTIME_SHUTDOWN)
                return None
            # No checkpoint from here until the connection is live.
            params, state, subscriptions, journal = self._resumable(entry, token)
        except ActorError as exc:
            self._log_refusal(exc)
            await self.close_direct(closecodes.for_error(exc))
            return None
        conn = self._rebuilt(entry, token.conn_id, ConnKind.PROTOCOL, params, state, subscriptions)
        journal.attached = conn
        journal.replays = True
        conn.journal = journal
        self._go_live(entry, gen, conn, token)
        if ack is not None:
            conn.acknowledge(ack)
        for frame in journal.unacked():
            conn.deliver(frame)
        return conn

    def _resumable(
        self, entry: ActorEntry, token: ResumeToken
    ) -> tuple[Any, Any, tuple[str, ...], Journal]:
        """What the connection ``token`` names holds, taken from the actor: a detached one,
        or one still attached to a socket (half-open: it gets 4002). ResumeRefused if there
        is none, the secret is wrong, or it expired."""
        detached = entry.detached.get(token.conn_id) if entry.detached else None
        if detached is not None and detached.journal.verify(token.secret):
            if detached.expires <= trio.current_time():
                raise ResumeRefused(
                    "the connection was detached longer than resume_timeout",
                    code="resume.expired",
                )
            entry.take_detached(token.conn_id)
            return detached.params, detached.state, detached.subscriptions, detached.journal
        for conn in entry.conns:
            journal = conn.journal
            if conn.id == token.conn_id and journal is not None and journal.verify(token.secret):
                self._take_over(entry, conn)
                return conn.params, conn.state, tuple(conn.subscriptions), journal
        # A wrong secret is refused like an unknown id: the token proves nothing then.
        raise ResumeRefused("no resumable connection matches the token")

    @staticmethod
    def _take_over(entry: ActorEntry, conn: Conn) -> None:
        """A resume names a connection whose old socket is still open (half-open, as far as
        the server can tell): that socket gets 4002 and leaves without hooks."""
        entry.discard_conn(conn)
        gen = entry.generation
        if gen is not None and (conn.hibernatable or conn.generation == gen.number):
            gen.conn_detached(conn)
        # It keeps its journal: its actions still running answer through it, to the socket
        # that took it over (``Journal.attached``).
        taken = closecodes.RESUME_TAKEN_OVER
        conn.close_nowait(taken.code, taken.reason)

    # ---------------------------------------------------------------- check points 1 and 2

    async def _open(self, entry: ActorEntry, conn: Conn) -> Generation | None:
        """Run setup until the connection is live in a generation, or close it. Returns the
        generation, or None when the connection was refused (its close is queued)."""
        gen: Generation | None = None
        try:
            with self._enter(ConnPhase.SETUP):
                gen = await self._setup(entry, conn)
        except ActorError as exc:
            self.close(closecodes.for_error(exc))
            return None
        if self.shutdown_close is not None or gen is None:
            self.close(self.shutdown_close or closecodes.RUNTIME_SHUTDOWN)
            return None
        # Live: attached synchronously with check point 2 (no checkpoint in between); the
        # init frame goes first, before anything on_connect may send.
        self._go_live(entry, gen, conn)
        assert gen.instance is not None
        if conn.kind is ConnKind.PROTOCOL:
            hook = gen.instance.on_connect
        else:
            hook = gen.instance.on_ws_open
        # On failure the close is queued; teardown still runs the disconnect hooks.
        timeout = entry.definition.options.hook_timeout
        work = gen.track_work(f"hook:{hook.__name__}", timeout=timeout)
        await self._run_hook(gen, work, hook, conn)
        return gen

    async def _setup(self, entry: ActorEntry, conn: Conn) -> Generation | None:
        options = entry.definition.options

        def not_ready() -> ActorError:
            return ActorReadyTimeout(
                f"connection to actor {entry.actor_id} not ready in {options.ready_timeout}s"
            )

        with deadlines.fail_after(options.ready_timeout, not_ready):
            while True:
                gen = await self._admit_connect(entry)  # check point 1
                instance = gen.instance
                assert instance is not None
                work = gen.track_work(f"connect:{conn.id}", timeout=options.hook_timeout)
                with work as scope:
                    await self._setup_hooks(gen, conn)
                if scope.cancelled_caught and work.timed_out:
                    raise InternalError("connection setup hooks exceeded hook_timeout")
                # Check point 2: the generation may have moved on while setup awaited.
                if entry.admitted(WorkKind.CONNECT) is gen:
                    return gen

    async def _admit_connect(self, entry: ActorEntry) -> Generation:
        """Check point 1, counting connections that wait for a generation."""
        gen = entry.admitted(WorkKind.CONNECT)
        if gen is not None:
            return gen
        counters = self.host.counters
        counters.connections_held += 1
        try:
            return await self.host.admit_entry(entry, WorkKind.CONNECT)
        finally:
            counters.connections_held -= 1

    async def _setup_hooks(self, gen: Generation, conn: Conn) -> None:
        instance = gen.instance
        assert instance is not None
        try:
            assert self.request is not None
            await instance.on_before_connect(gen.ctx, conn.params, self.request)
            state = instance.create_conn_state(gen.ctx, conn.params)
            if inspect.isawaitable(state):
                state = await state
        except ActorError:
            raise
        except Exception as exc:
            log.exception(
                "actor %s id=%s: connection setup hook raised", gen.entry.name, gen.actor_id
            )
            raise InternalError(f"connection setup failed: {type(exc).__name__}") from exc
        conn.state = state

    # ---------------------------------------------------------------- check point 3

    def _protocol_item(
        self, entry: ActorEntry, conn: Conn, message: str | bytes
    ) -> ActionRequest | None:
        """Parse a ``/connect`` frame. Subscriptions apply here; an action is returned for
        delivery; None when there is nothing to deliver (a bad frame queued the close)."""
        try:
            frame = parse_client_frame(message)
        except ActorError as exc:
            self.close(closecodes.for_error(exc))
            return None
        if isinstance(frame, Subscribe):
            limit = entry.definition.options.max_subscriptions
            if not conn.subscribe(frame.event, limit):
                conn.queue_frame(
                    encode_error(
                        None,
                        SubscriptionLimit(
                            f"at most {limit} subscriptions per connection; "
                            f"not subscribed to {frame.event[:64]!r}"
                        ),
                    )
                )
            return None
        if isinstance(frame, Ack):
            conn.acknowledge(frame.seq)
            return None
        if not isinstance(frame, ActionRequest):
            conn.unsubscribe(frame.event)
            return None
        if frame.name not in entry.definition.actions:
            missing = ActionNotFound(f"actor {entry.name!r} has no action {frame.name!r}")
            conn.queue_frame(encode_error(frame.id, missing))
            return None
        journal = conn.journal
        if journal is not None:
            if frame.ack is not None:
                conn.acknowledge(frame.ack)
            answer = journal.replayed(frame.id)
            if answer is not None:
                # It ran (answered from the record, not run again) or runs now (that run
                # answers it).
                if answer:
                    conn.deliver(answer)
                return None
        return frame

    def _refuse(self, action: ActionRequest | None, refusal: ActorError) -> None:
        """A message check point 3 refused: an action gets the error as its answer when the
        actor is destroyed (the connection closes with finalize); anything else closes the
        connection with the refusal's code (1001 ``actor.sleeping``, or ``actor.destroyed``)."""
        assert self.conn is not None
        if action is not None and self.conn.journal is not None:
            self.conn.journal.end(action.id)
        if action is not None and isinstance(refusal, ActorDestroyed):
            self.conn.queue_frame(encode_error(action.id, refusal))
        else:
            self.close(closecodes.for_error(refusal))

    def _hook_raised(self, gen: Generation, hook: str) -> None:
        """A connection hook raised (call from its ``except``): log it, close with 1011."""
        log.exception("actor %s id=%s: %s raised", gen.entry.name, gen.actor_id, hook)
        self.close(closecodes.INTERNAL_ERROR)

    def cancel(self) -> None:
        """Cancel the message hook running in the read loop (tracked work of a generation);
        a frame it is sending goes out first."""
        assert self.task is not None and self.loop_scope is not None
        self.host.watchdog.cancel(self.task, self.loop_scope.cancel)

    def _on_hook_timeout(self) -> None:
        self.hook_timed_out = True
        self.cancel()

    async def _deliver_raw(
        self, gen: Generation, conn: Conn, message: str | bytes, deadline: float
    ) -> None:
        """``on_ws_message``, in the read loop: the per-message path of raw WebSockets. No
        cancel scope of its own (entering one costs about as much as the rest of the message):
        the handler itself is the tracked work, the watchdog keeps its ``deadline``
        (hook_timeout), and cancelling it cancels the loop's scope (see :meth:`cancel`)."""
        instance = gen.instance
        assert instance is not None
        watchdog = self.host.watchdog
        gen.work_began(self, "hook:on_ws_message", blocks_idle=True)
        watchdog.arm(self, deadline, self._expire_hook)
        try:
            if gen.serial:
                await gen.in_turn(instance.on_ws_message, gen.ctx, conn, message)
            else:
                await instance.on_ws_message(gen.ctx, conn, message)
        except Exception:
            self._hook_raised(gen, "on_ws_message")
        except BaseException:
            self.interrupted = gen  # cancelled: by us or from outside
            raise
        finally:
            watchdog.disarm(self)
            gen.work_ended(self, blocks_idle=True)

    async def _deliver(self, gen: Generation, conn: Conn, item: Any) -> None:
        """Deliver one admitted message: reserve its work now (before any checkpoint)."""
        if isinstance(item, ActionRequest):
            last = self.last_started
            if gen.definition.runs_inline(item.name) and (last is None or last.is_set()):
                # Its body never suspends: run it here, at read time (it starts after every
                # action read before it has started, as the frame order requires).
                await self._action_inline(gen, conn, item)
                return
            if self.inflight >= gen.definition.options.max_inflight_actions:
                self.close(closecodes.for_error(ActorOverloaded("too many actions in flight")))
                return
            self.inflight += 1
            work = gen.track_work(
                f"action:{item.name}", timeout=gen.definition.options.action_timeout
            )
            # The answer is work too: finalize (and so a drain) waits until it is sent.
            reply = _Reply()
            gen.work_began(reply, f"reply:{item.name}", blocks_idle=False)
            previous, started = self.last_started, trio.Event()
            self.last_started = started
            self.nursery.start_soon(
                self._guarded, self._action, gen, work, reply, conn, item, previous, started
            )
            return
        assert gen.instance is not None
        work = gen.track_work("hook:on_ws_message", timeout=gen.definition.options.hook_timeout)
        await self._run_hook(gen, work, gen.instance.on_ws_message, conn, item, turn=True)

    async def _action(
        self,
        gen: Generation,
        work: WorkScope,
        reply: _Reply,
        conn: Conn,
        frame: ActionRequest,
        previous: trio.Event | None,
        started: trio.Event,
    ) -> None:
        try:
            await self._run_action(gen, work, conn, frame, previous, started)
        finally:
            # Both no-ops unless _run_action failed early: the generation must not wait for
            # work that will not run, nor the next action for this one to start.
            work.release()
            started.set()
            gen.work_ended(reply, blocks_idle=False)
            self.inflight -= 1
            if self.inflight == 0 and self.shutdown_close is not None:
                self.close(self.shutdown_close)  # a drain waited for this answer

    async def _run_action(
        self,
        gen: Generation,
        work: Any,
        conn: Conn,
        frame: ActionRequest,
        previous: trio.Event | None,
        started: trio.Event,
    ) -> None:
        # Actions start in the order their frames were read (trio does not promise that tasks
        # start in spawn order); once started, those that await may interleave.
        if previous is not None and not previous.is_set():
            await previous.wait()
        started.set()
        try:
            # Re-checked: a destroy that began while this task waited to start refuses it (work
            # that has not started never sees DESTROY_GRACE). Holding does not apply here: the
            # action was admitted to ``gen``, which runs it or cuts it at its grace deadline.
            gen.entry.admitted(WorkKind.CALL)
        except ActorDestroyed as refusal:
            with work:
                pass
            if conn.journal is not None:
                conn.journal.end(frame.id)
            await conn.send_frame(encode_error(frame.id, refusal))
            return
        fn = gen.definition.actions[frame.name]
        try:
            output = await self.host.invoke(
                gen, work, frame.name, fn, frame.args, frame.kwargs, conn
            )
        except Exception as exc:
            reply = _action_error(gen, frame, exc)
        else:
            reply = encode_action_result(frame.id, output)
        await _answer(conn, frame, reply)

    async def _action_inline(self, gen: Generation, conn: Conn, frame: ActionRequest) -> None:
        """An action that never suspends, run to completion in the read loop (no task, no
        scope: the per-action costs that made an action round trip 0.8 x of an echo); then
        its answer, sent from here and tracked as work like every answer."""
        gen.work_began(self, "action:" + frame.name, blocks_idle=True)
        try:
            output = self.host.invoke_inline(gen, frame.name, frame.args, frame.kwargs, conn)
        except Exception as exc:
            reply = _action_error(gen, frame, exc)
        else:
            reply = encode_action_result(frame.id, output)
        finally:
            gen.work_ended(self, blocks_idle=True)
        answer = _Reply()
        gen.work_began(answer, "reply:" + frame.name, blocks_idle=False)
        try:
            await _answer(conn, frame, reply)
        finally:
            gen.work_ended(answer, blocks_idle=False)

    async def _run_hook(
        self,
        gen: Generation,
        work: Any,
        hook: Callable[..., Awaitable[Any]],
        *args: Any,
        turn: bool = False,
    ) -> bool:
        """Run a connection hook as tracked work (``turn``: in a turn of a serial actor, as a
        message handler is); on an exception close with 1011."""
        try:
            with work as scope:
                if turn and gen.serial:
                    await gen.in_turn(hook, gen.ctx, *args)
                else:
                    await hook(gen.ctx, *args)
            if scope.cancelled_caught and work.timed_out:
                raise InternalError(f"{hook.__name__} exceeded hook_timeout")
        except Exception:
            self._hook_raised(gen, hook.__name__)
            return False
        return True

    # ---------------------------------------------------------------- hibernation buffer

    def _buffer(self, entry: ActorEntry, conn: Conn, item: Any) -> None:
        buffer = self.buffer
        if buffer is None:
            buffer = self.buffer = collections.deque()
        if len(buffer) >= entry.definition.options.hibernation_buffer:
            self.close(closecodes.for_error(ActorOverloaded("hibernation buffer full")))
            self.buffer = None
            return
        buffer.append(item)
        if self.transport.held is not None:
            self.transport.held()
        if not self.delivering:
            self.delivering = True
            self.nursery.start_soon(self._guarded, self._deliver_buffered, entry, conn)

    async def _deliver_buffered(self, entry: ActorEntry, conn: Conn) -> None:
        """Deliver buffered messages in order, each to a generation that admits it."""
        try:
            while self.buffer and not conn.closing:
                try:
                    gen = await self.host.admit_entry(entry, WorkKind.HIBERNATABLE_MESSAGE)
                except ActorError as exc:
                    self.close(closecodes.for_error(exc))
                    self.buffer = None
                    return
                buffer = self.buffer
                if not buffer or conn.closing:
                    return  # closed while the admission waited (the buffer may be cleared)
                item = buffer.popleft()
                conn.generation = gen.number
                await self._deliver(gen, conn, item)
                if self.transport.released is not None:
                    self.transport.released()
        finally:
            self.delivering = False
            if not self.buffer:
                self.buffer = None

    # ---------------------------------------------------------------- teardown

    async def _teardown(self, entry: ActorEntry, conn: Conn, code: int, reason: str) -> None:
        """The connection ended. Whoever removes it from the actor runs its disconnect hooks:
        here, unless the generation's finalize (or a drain) already did."""
        if conn not in entry.conns:
            await conn.wait_closed()
            return
        entry.discard_conn(conn)
        if entry.generation is not None and (
            conn.hibernatable or conn.generation == entry.generation.number
        ):
            entry.generation.conn_detached(conn)
        if conn.journal is not None:
            if code not in closecodes.FINAL_CODES:
                # The client did not close it and may come back: keep it resumable.
                options = entry.definition.options
                entry.detach(conn, time.time(), trio.current_time() + options.resume_timeout)
                self.host.track_detached(entry)
                await conn.wait_closed()
                return
            entry.forget_conn(conn.id)
        if self.shutdown_close is None and not self.host.draining:
            await self.host.disconnect_hooks(entry, conn, code, reason)
        await conn.wait_closed()
