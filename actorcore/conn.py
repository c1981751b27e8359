"""Conn: one client connection as an actor sees it, independent of the transport.

A connection belongs to an actor, not to a generation: a hibernatable one outlives the
generation it opened in (it stays open while the actor sleeps and is handed to the next
generation), a non-hibernatable one is closed when its generation finalizes.

Outgoing frames go through a bounded per-connection outbox drained by one writer task that the
dispatcher owns, so ``ctx.broadcast`` can queue frames from plain code and frames keep their
order. Closing also goes through the outbox, after the frames queued before it.
"""

from __future__ import annotations

import contextlib
import enum
import json
from typing import Any, Protocol

import attrs
import trio

from .errors import ActorOverloaded

__all__ = ["Conn", "ConnKind", "Transport", "TransportClosed"]

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

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame and wait for the peer's; the caller bounds the wait.

        Must release the underlying stream even when cancelled.
        """
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
    subscriptions: set[str] = attrs.field(factory=set[str])
    """Events this (protocol) connection subscribed to."""
    close_timeout: float = 2.0
    """Bound on flushing queued frames plus the close handshake once a close is queued."""
    _outbox_send: trio.MemorySendChannel[str | bytes | _Close] = attrs.field(init=False)
    _outbox_receive: trio.MemoryReceiveChannel[str | bytes | _Close] = attrs.field(init=False)
    _closing: _Close | None = attrs.field(default=None, init=False)
    _closed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _flush_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _transport: Transport | None = attrs.field(default=None, init=False)
    _pending: int = attrs.field(default=0, init=False)
    """Frames queued in the outbox and not yet fully sent by the writer."""

    def __attrs_post_init__(self) -> None:
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[str | bytes | _Close](
            OUTBOX_SIZE
        )

    # ---------------------------------------------------------------- public API

    @property
    def closing(self) -> bool:
        """True once a close was queued or the connection ended."""
        return self._closing is not None or self._closed.is_set()

    @property
    def server_close(self) -> tuple[int, str] | None:
        """The close code and reason the server queued, or None if it did not close."""
        return None if self._closing is None else (self._closing.code, self._closing.reason)

    async def send(self, message: Any) -> None:
        """Send a message: as is on a raw connection (str or bytes); on a protocol connection
        as ``{"type": "message", "data": message}`` (``message`` must be JSON-serialisable)."""
        await self.send_frame(self._encode_message(message))

    def send_nowait(self, message: Any) -> None:
        """Queue a message without waiting; a full outbox closes the connection with 1013."""
        self.queue_frame(self._encode_message(message))

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
        if self._closing is not None or self._closed.is_set():
            return
        self._closing = _Close(code, reason)
        # A peer that does not read must not hold the close back: flushing what is queued gets
        # close_timeout, then the close handshake gets its own bounded attempt.
        self._flush_scope.deadline = trio.current_time() + self.close_timeout
        try:
            self._outbox_send.send_nowait(self._closing)
        except trio.WouldBlock:
            # The outbox is full: the writer checks ``_closing`` after each frame.
            pass
        except trio.ClosedResourceError:
            pass

    async def wait_closed(self) -> None:
        """Wait until the connection has ended (close handshake done or transport gone)."""
        await self._closed.wait()

    # ---------------------------------------------------------------- dispatcher side

    def emit(self, event: str, args: list[Any]) -> None:
        """Queue an event frame (protocol connections subscribed to ``event`` only)."""
        if event in self.subscriptions:
            self.queue_frame(json.dumps({"type": "event", "name": event, "args": args}))

    def queue_frame(self, frame: str | bytes) -> None:
        """Queue an encoded frame; close with 1013 ``actor.overloaded`` if the outbox is full."""
        if self.closing:
            return
        try:
            self._outbox_send.send_nowait(frame)
        except trio.WouldBlock:
            self._overloaded()
        else:
            self._pending += 1

    async def send_frame(self, frame: str | bytes) -> None:
        """Send an encoded frame after those already queued.

        When nothing is queued the frame goes straight to the transport from the caller's task
        (one task switch less on the per-message path); the transport's own send lock keeps
        frames in call order. That send is shielded, so a caller's cancellation can never cut a
        frame in half, and bounded by ``close_timeout``: a peer too slow to take one frame gets
        1013 ``actor.overloaded``.
        """
        if self.closing:
            return
        transport = self._transport
        if transport is None or self._pending:
            self._pending += 1
            # If the connection ends while we wait for room, the frame is dropped, like above.
            with contextlib.suppress(trio.ClosedResourceError):
                await self._outbox_send.send(frame)
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.close_timeout
            try:
                await transport.send(frame)
            except TransportClosed:
                return
        if scope.cancelled_caught:
            self._overloaded()

    def _overloaded(self) -> None:
        err = ActorOverloaded("connection outbox is full")
        self.close_nowait(1013, err.code)

    def _encode_message(self, message: Any) -> str | bytes:
        if self.kind is ConnKind.RAW:
            if not isinstance(message, str | bytes):
                raise TypeError(f"raw connections send str or bytes, not {type(message).__name__}")
            return message
        return json.dumps({"type": "message", "data": message})

    async def run_writer(
        self, transport: Transport, close_timeout: float
    ) -> tuple[int, str] | None:
        """Drain the outbox into ``transport`` until a close is queued; then close, bounded by
        ``close_timeout``. Returns the code and reason sent, or None when the connection ended
        without a close of ours (the peer closed first). Run by the dispatcher."""
        close: _Close | None = None
        self._transport = transport
        with self._flush_scope:
            async for item in self._outbox_receive:
                if isinstance(item, _Close):
                    close = item
                    break
                await transport.send(item)
                self._pending -= 1
                if (
                    self._closing is not None
                    and not self._outbox_receive.statistics().current_buffer_used
                ):
                    close = self._closing
                    break
        if close is None:
            close = self._closing  # the flush deadline passed with frames still queued
        if close is None:
            return None
        with trio.move_on_after(close_timeout) as scope:
            scope.shield = True
            await transport.close(close.code, close.reason)
        return close.code, close.reason

    def mark_closed(self) -> None:
        """The connection has ended; wake :meth:`wait_closed` and drop queued frames."""
        self._transport = None
        self._closed.set()
        self._outbox_send.close()
