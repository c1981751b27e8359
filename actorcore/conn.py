"""Conn: one client connection as an actor sees it, independent of the transport.

A connection belongs to an actor, not to a generation: a hibernatable one outlives the
generation it opened in (it stays open while the actor sleeps and is handed to the next
generation), a non-hibernatable one is closed when its generation finalizes.

Outgoing frames go through a bounded per-connection outbox drained by one writer task that the
dispatcher owns, so ``ctx.broadcast`` can queue frames from plain code and frames keep their
order. Closing also goes through the outbox, after the frames queued before it.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from . import jsoncodec
from .errors import ActorOverloaded

if TYPE_CHECKING:
    from .outputgate import OutputGate
    from .resume import Journal
    from .watchdog import Watchdog

__all__ = ["Conn", "ConnKind", "Transport", "TransportClosed"]

_NO_EVENTS: frozenset[str] = frozenset()

#: Frames that may wait in one connection's outbox before it counts as overloaded.
OUTBOX_SIZE = 1024


class TransportClosed(Exception):
    """The transport is closed; ``code`` and ``reason`` are from the close frame, if any."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}")
        self.code = code
        self.reason = reason


class Transport(Protocol):
    """The small connection interface the dispatcher works on (adapters: trio-websocket,
    in-memory streams, a tunnel from a gateway)."""

    async def receive(self) -> str | bytes:
        """The next whole message. Raises :class:`TransportClosed` once closed."""
        ...

    async def send(self, message: str | bytes) -> None:
        """Send one message. Raises ``TransportClosed`` if the connection is gone."""
        ...

    def start_close(self, code: int, reason: str) -> bool:
        """Put the close frame on the wire now, without waiting, if the transport can (nothing
        of its own is being sent). True: the transport then ends by itself once the peer
        answers (``receive`` raises :class:`TransportClosed`); the caller bounds that wait
        and calls :meth:`abort` if it runs out. False: :meth:`close` must follow (it sends
        the frame, or what of it did not go out at once, and waits for the answer)."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame and wait for the peer's; the caller bounds the wait.

        Must release the underlying stream even when cancelled.
        """
        ...

    async def abort(self) -> None:
        """Close the underlying stream at once, without a close handshake: a send blocked on
        a peer that does not read then fails with ``TransportClosed``."""
        ...


class ConnKind(enum.Enum):
    """Which route a connection came in on."""

    PROTOCOL = "protocol"
    """``/connect``: the JSON actor protocol; always hibernatable."""
    RAW = "raw"
    """``/ws``: a raw WebSocket handled by ``on_ws_*`` hooks."""


def check_close(code: int, reason: str) -> None:
    """Raise ValueError unless ``code``/``reason`` may go in a close frame a server sends."""
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} cannot be sent (RFC 6455 section 7.4)")
    if not reason.isascii() or len(reason) > 123:
        raise ValueError(f"close reason must be ASCII and at most 123 bytes: {reason!r}")


@attrs.define(eq=False, slots=True)
class _Close:
    code: int
    reason: str


@attrs.define(eq=False, slots=True)
class _Gated:
    """A frame the writer sends once the output gate passed its ticket."""

    frame: str
    ticket: int


@attrs.define(eq=False, slots=True)
class Conn:
    """A client connection of an actor. ``ctx.conns`` lists the live ones."""

    id: str
    """Unique connection id."""
    actor_id: str
    """The actor this connection talks to."""
    kind: ConnKind
    """Protocol or raw."""
    params: Any
    """The connection's ``params`` (JSON from the URL), or None."""
    hibernatable: bool
    """Stays open while the actor sleeps (protocol connections always are)."""
    state: Any = None
    """Per-connection state from ``create_conn_state``; kept across sleeps when hibernatable."""
    generation: int = 0
    """The generation currently serving this connection."""
    close_timeout: float = 2.0
    """Bound on flushing queued frames plus the close handshake once a close is queued."""
    journal: Journal | None = attrs.field(default=None, repr=False)
    """A resumable protocol connection's numbered outputs (see ``actorcore/resume.py``)."""
    gate: OutputGate | None = attrs.field(default=None, repr=False)
    """The actor's output gate, if its outputs wait for durable state."""
    _subscribed: dict[str, None] | None = attrs.field(default=None, init=False)
    """Subscribed events (made on the first subscribe: most connections never do)."""
    _outbox: collections.deque[str | bytes | _Close | _Gated] | None = attrs.field(
        default=None, init=False
    )
    """Frames waiting for the writer (made on first use; None once closed)."""
    _closing: _Close | None = attrs.field(default=None, init=False)
    _ended: bool = attrs.field(default=False, init=False)
    _closed: trio.Event | None = attrs.field(default=None, init=False)
    """Made by the first :meth:`wait_closed` before the end (most are never waited for)."""
    _transport: Transport | None = attrs.field(default=None, init=False)
    _start_writer: Callable[[], None] | None = attrs.field(default=None, init=False)
    _watchdog: Watchdog | None = attrs.field(default=None, init=False)
    _writer_running: bool = attrs.field(default=False, init=False)
    _flush_deadline: float = attrs.field(default=math.inf, init=False)
    _flush_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _room: trio.Event | None = attrs.field(default=None, init=False)
    _close_watched: bool = attrs.field(default=False, init=False)
    """A close started by ``Transport.start_close`` is bounded by the watchdog."""

    def bind(
        self, transport: Transport, start_writer: Callable[[], None], watchdog: Watchdog
    ) -> None:
        """Attach the transport, the dispatcher's way to start a writer task (a writer runs
        only while frames are queued: an idle connection has none), and the watchdog that
        bounds direct sends."""
        self._transport = transport
        self._start_writer = start_writer
        self._watchdog = watchdog

    # ---------------------------------------------------------------- public API

    @property
    def closing(self) -> bool:
        """True once a close was queued or the connection ended."""
        return self._closing is not None or self._ended

    @property
    def ended(self) -> bool:
        """True once the connection has ended (close handshake done or transport gone)."""
        return self._ended

    @property
    def server_close(self) -> tuple[int, str] | None:
        """The close code and reason the server queued, or None if it did not close."""
        return None if self._closing is None else (self._closing.code, self._closing.reason)

    async def send(self, message: Any) -> None:
        """Send a message: as is on a raw connection (str or bytes); on a protocol connection
        as ``{"type": "message", "data": message}`` (``message`` must be JSON-serialisable)."""
        frame = self._encode_message(message)
        if self.holds_outputs:
            assert isinstance(frame, str)
            await self.send_output(frame)
        else:
            await self.send_frame(frame)

    def send_nowait(self, message: Any) -> None:
        """Queue a message without waiting; a full outbox closes the connection with 1013."""
        frame = self._encode_message(message)
        if self.holds_outputs:
            assert isinstance(frame, str)
            self.output(frame)
        else:
            self.queue_frame(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after the frames already queued; returns when the close is queued.

        ``code`` must be one a server may send (1000-1003, 1007-1014, 3000-4999) and ``reason``
        ASCII of at most 123 bytes; anything else is a ValueError.
        """
        check_close(code, reason)
        self.close_nowait(code, reason)
        await trio.lowlevel.checkpoint()

    def close_nowait(self, code: int = 1000, reason: str = "") -> None:
        """Queue a close frame after the frames already queued (first close wins)."""
        if self._closing is not None or self._ended:
            return
        self._closing = _Close(code, reason)
        transport = self._transport
        if transport is not None and not self._outbox and transport.start_close(code, reason):
            # Nothing was queued ahead of it: the frame left now, from this task (a finalize
            # puts all its connections' frames out in one pass), and the transport ends by
            # itself when the peer answers. No writer task: the wait for that answer is
            # bounded like a direct send, by the watchdog (close_timeout, loop stalls left
            # out), which aborts the stream if the peer never answers.
            watchdog = self._watchdog
            assert watchdog is not None
            self._close_watched = True
            watchdog.send_started(self, self.close_timeout, transport.abort)
            return
        # A peer that does not read must not hold the close back: flushing what is queued gets
        # close_timeout, then the close handshake gets its own bounded attempt.
        self._flush_deadline = trio.current_time() + self.close_timeout
        if self._flush_scope is not None:
            self._flush_scope.deadline = self._flush_deadline
        self._enqueue(self._closing)

    @property
    def subscriptions(self) -> AbstractSet[str]:
        """Events this (protocol) connection subscribed to: a read-only view (subscribe and
        unsubscribe through the protocol)."""
        subscribed = self._subscribed
        return subscribed.keys() if subscribed is not None else _NO_EVENTS

    def subscribe(self, event: str, limit: int) -> bool:
        """Add ``event`` (O(1)); False, and nothing added, if ``limit`` events are already
        subscribed."""
        subscribed = self._subscribed
        if subscribed is None:
            subscribed = self._subscribed = {}
        elif event in subscribed:
            return True
        if len(subscribed) >= limit:
            return False
        subscribed[event] = None
        self.changed()
        return True

    def unsubscribe(self, event: str) -> None:
        """Remove ``event`` if subscribed (O(1))."""
        if self._subscribed is not None and event in self._subscribed:
            del self._subscribed[event]
            self.changed()

    def changed(self) -> None:
        """The connection's stored record must be written again (its journal or subscriptions
        changed): the journal tells whoever holds the connection now (``Journal.on_change``)."""
        journal = self.journal
        if journal is not None and journal.on_change is not None:
            journal.on_change()

    # ---------------------------------------------------------------- numbered outputs

    @property
    def holds_outputs(self) -> bool:
        """Its outputs go through :meth:`output` (kept in a journal, or held by the output
        gate) rather than straight to the outbox."""
        return self.journal is not None or self.gate is not None

    def acknowledge(self, seq: int) -> None:
        """The client received every numbered output up to ``seq``: the journal forgets them
        (and the record is written again if it did). A no-op without a journal."""
        journal = self.journal
        if journal is not None and journal.ack(seq):
            self.changed()

    def output(self, frame: str, action_id: int | str | None = None) -> None:
        """Queue an output (an event, a message, an answer) of a resumable connection: kept
        in its journal (numbered, if its client asked) and held by the output gate until the
        state is durable; without a journal it is queued as is (behind the gate, if the
        connection has one). Never waits."""
        journal = self.journal
        if journal is None:
            self.deliver(frame)
            return
        recorded = journal.record(frame, action_id)
        self.changed()
        attached = journal.attached
        if recorded is not None and attached is not None:
            attached.deliver(recorded)

    async def send_output(self, frame: str, action_id: int | str | None = None) -> None:
        """Like :meth:`output`, but an output that need not wait for the gate is sent as
        :meth:`send_frame` sends (straight to the transport when nothing is queued)."""
        journal = self.journal
        target: Conn | None = self
        recorded: str | None = frame
        if journal is not None:
            recorded = journal.record(frame, action_id)
            self.changed()
            target = journal.attached
        if recorded is None or target is None:
            await trio.lowlevel.checkpoint()
        elif target.gate is not None:
            target.deliver(recorded)
            await trio.lowlevel.checkpoint()
        else:
            await target.send_frame(recorded)

    def deliver(self, frame: str) -> None:
        """Queue an already numbered frame behind the output gate (if any)."""
        if self.closing:
            return
        gate = self.gate
        item: str | _Gated = frame if gate is None else _Gated(frame, gate.ticket())
        if not self._enqueue(item):
            self._overloaded()

    async def wait_closed(self) -> None:
        """Wait until the connection has ended (close handshake done or transport gone)."""
        if self._ended:
            await trio.lowlevel.checkpoint()
            return
        if self._closed is None:
            self._closed = trio.Event()
        await self._closed.wait()

    # ---------------------------------------------------------------- dispatcher side

    def queue_frame(self, frame: str | bytes) -> None:
        """Queue an encoded frame; close with 1013 ``actor.overloaded`` if the outbox is full."""
        if self.closing:
            return
        if not self._enqueue(frame):
            self._overloaded()

    async def send_frame(self, frame: str | bytes) -> None:
        """Send an encoded frame after those already queued.

        When nothing is queued the frame goes straight to the transport from the caller's task
        (no task switch on the per-message path); the transport's own send lock keeps frames
        in call order. That send is registered with the registry's watchdog instead of being
        wrapped in a shielded, deadlined cancel scope (which would cost as much as the rest of
        the message): actorcore defers its own cancels (work deadlines, the grace deadline)
        until the frame is out, and a send blocked longer than ``close_timeout`` by a peer that
        does not read is cut by aborting the connection (1013 ``actor.overloaded``). A cancel
        scope of your own around ``send`` can still cut a frame, as with any trio stream.
        Otherwise the frame is queued, waiting for room if needed.
        """
        if self.closing:
            return
        transport = self._transport
        if transport is None or self._outbox:
            while self._outbox is not None and len(self._outbox) >= OUTBOX_SIZE:
                room = self._room = self._room or trio.Event()
                await room.wait()
            if not self.closing:
                self._enqueue(frame)
            return
        watchdog = self._watchdog
        assert watchdog is not None
        task = trio.lowlevel.current_task()
        watchdog.send_started(task, self.close_timeout, self._cut)
        try:
            await transport.send(frame)
        except TransportClosed:
            pass
        finally:
            watchdog.send_ended(task)

    async def _cut(self) -> None:
        """A direct send outlived ``close_timeout``: the peer does not read. Queue 1013 and
        abort the stream so the blocked send returns (the close frame cannot get through a
        full socket buffer; the writer still tries, bounded)."""
        transport = self._transport
        self._overloaded()
        if transport is not None:
            await transport.abort()

    def _enqueue(self, item: str | bytes | _Close | _Gated) -> bool:
        outbox = self._outbox
        if outbox is None:
            if self._ended:
                return True  # ended: dropped, like every frame after the end
            outbox = self._outbox = collections.deque()
        if len(outbox) >= OUTBOX_SIZE and not isinstance(item, _Close):
            return False
        outbox.append(item)
        if not self._writer_running and self._start_writer is not None:
            self._writer_running = True
            self._start_writer()
        return True

    def _overloaded(self) -> None:
        err = ActorOverloaded("connection outbox is full")
        self.close_nowait(1013, err.code)

    def _encode_message(self, message: Any) -> str | bytes:
        if self.kind is ConnKind.RAW:
            if not isinstance(message, str | bytes):
                raise TypeError(f"raw connections send str or bytes, not {type(message).__name__}")
            return message
        return jsoncodec.dumps({"type": "message", "data": message})

    async def run_writer(
        self, transport: Transport, close_timeout: float
    ) -> tuple[int, str] | None:
        """Send what is queued, in order. Returns None when the outbox is empty (the writer
        ends; the next queued frame starts another), or, once a close is queued, the close
        code and reason after a close handshake bounded by ``close_timeout``."""
        close: _Close | None = None
        outbox = self._outbox
        if outbox and isinstance(outbox[0], _Close):
            close = outbox[0]  # nothing queued ahead of the close: no flush (or its scope)
        else:
            with trio.CancelScope(deadline=self._flush_deadline) as scope:
                self._flush_scope = scope
                while outbox:
                    item = outbox[0]
                    if isinstance(item, _Close):
                        close = item
                        break
                    if isinstance(item, _Gated):
                        gate = self.gate
                        if gate is not None and not gate.passed(item.ticket):
                            await gate.wait(item.ticket)
                        await transport.send(item.frame)
                    else:
                        await transport.send(item)
                    # Popped after the send, so a direct send sees a non-empty outbox and
                    # queues.
                    outbox.popleft()
                    room = self._room
                    if room is not None:
                        self._room = None
                        room.set()
            self._flush_scope = None
        if close is None:
            close = self._closing  # the flush deadline passed with frames still queued
        if close is None:
            self._writer_running = False  # no checkpoint since the outbox was seen empty
            return None
        with trio.move_on_after(close_timeout) as scope:
            scope.shield = True
            await transport.close(close.code, close.reason)
        return close.code, close.reason

    def mark_closed(self) -> None:
        """The connection has ended; wake :meth:`wait_closed` and drop queued frames."""
        self._transport = None
        self._start_writer = None
        self._outbox = None
        self._ended = True
        if self._close_watched:
            self._close_watched = False
            assert self._watchdog is not None
            self._watchdog.send_ended(self)
        if self._closed is not None:
            self._closed.set()
        room = self._room
        if room is not None:
            self._room = None
            room.set()
