"""One upgraded WebSocket connection: wsproto framing over a trio stream, as a Transport.

The read loop of the dispatcher reads the stream itself (there is no reader task per
connection): :meth:`WebSocketConnection.receive` feeds what the socket gives to wsproto and
returns whole messages. Pings are answered there, fragments are assembled there and counted
against ``max_message_size`` as they arrive, and the peer's close frame ends it.

Sends go through one lock, taken without a scheduler round when it is free. Control frames
sent from the read path (a pong, the answer to the peer's close, the close frame that fails
a broken frame) are sent shielded and bounded, so a cancelled read never cuts a frame.

The connection's phase is one enum (:class:`Phase`); wsproto keeps the protocol's own state.
"""

from __future__ import annotations

import collections
import enum
import math
from typing import Final

import trio
from wsproto.connection import Connection as WSProtoConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from .. import closecodes
from ..conn import TransportClosed
from ..errors import MessageTooLarge
from ..request import ClientAddress

__all__ = ["Phase", "WebSocketConnection"]

#: Bound on a control frame sent from the read path (a pong, a close answer): a peer that
#: does not read for this long loses its connection.
CONTROL_SEND_TIMEOUT: Final = 2.0

#: Messages :meth:`WebSocketConnection.receive` returns from one read without a checkpoint;
#: a pipelined burst then cannot keep the read loop from yielding for long.
BURST: Final = 16


class _TooLarge:
    """Stands in the ready queue for a message refused as too large."""


_TOO_LARGE: Final = _TooLarge()


class Phase(enum.Enum):
    """Where a connection is in its life (wsproto tracks the WebSocket protocol state)."""

    OPEN = "open"
    """Messages flow both ways."""
    CLOSING = "closing"
    """A close frame went out (ours or our answer); waiting for the end of the stream."""
    CLOSED = "closed"
    """The stream is closed; :meth:`WebSocketConnection.receive` raises TransportClosed."""


class WebSocketConnection:
    """A server-side WebSocket connection over a trio stream; a :class:`actorcore.conn.Transport`.

    ``receive`` must be called from one task at a time (the dispatcher's read loop); ``close``
    reads for itself when nobody else is reading.
    """

    __slots__ = (
        "_burst",
        "_close_info",
        "_closed",
        "_partial_deadline",
        "_parts",
        "_parts_size",
        "_reading",
        "_ready",
        "_send_lock",
        "_skipping",
        "_stream",
        "_ws",
        "client",
        "fragment_timeout",
        "last_heard",
        "max_message_size",
        "phase",
        "receive_size",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSProtoConnection,
        *,
        max_message_size: int,
        fragment_timeout: float,
        receive_size: int = 4096,
        client: ClientAddress | None = None,
    ) -> None:
        self._stream = stream
        self._ws = ws
        self.max_message_size = max_message_size
        """Bound on one message, fragments counted as they arrive (1009 past it)."""
        self.fragment_timeout = fragment_timeout
        """Bound on the time from a message's first fragment to its last (1008 past it)."""
        self.receive_size = receive_size
        self.client = client
        """The peer's address, None for streams that have none."""
        self.phase = Phase.OPEN
        self.last_heard = trio.current_time()
        """When the peer last sent anything (the keepalive pings only silent peers)."""
        self._send_lock = trio.Lock()
        self._ready: collections.deque[str | bytes | _TooLarge] = collections.deque()
        self._parts: list[str] | list[bytes] | None = None
        self._parts_size = 0
        self._partial_deadline = math.inf
        self._skipping = False
        self._reading = False
        self._burst = 0
        self._close_info: tuple[int, str] | None = None
        self._closed = trio.Event()

    # ---------------------------------------------------------------- reading

    @property
    def reading(self) -> bool:
        """A task waits in :meth:`receive` (the keepalive only judges a peer then: a read
        loop busy in a hook is not the peer's fault)."""
        return self._reading

    async def receive(self) -> str | bytes:
        """The next whole message. Raises TransportClosed once closed, MessageTooLarge (once
        per such message, which is then dropped) for a message over ``max_message_size``.

        Cancel-safe: a cancelled receive loses no data."""
        ready = self._ready
        if ready:
            self._burst += 1
            if self._burst >= BURST:
                self._burst = 0
                await trio.lowlevel.checkpoint()
            return self._take(ready.popleft())
        self._burst = 0
        if self._close_info is not None or self._reading:
            # Closed, or close() reads for itself: it ends when the close is done.
            await self._closed.wait()
            raise self._transport_closed()
        self._reading = True
        try:
            while not ready:
                await self._read_more()
                if not ready and self._ended():
                    raise self._transport_closed()
        finally:
            self._reading = False
        return self._take(ready.popleft())

    def _ended(self) -> bool:
        return self._close_info is not None

    def _take(self, message: str | bytes | _TooLarge) -> str | bytes:
        if isinstance(message, _TooLarge):
            raise MessageTooLarge(f"message over {self.max_message_size} bytes")
        return message

    async def _read_more(self) -> None:
        """Read once from the stream and act on what wsproto makes of it."""
        try:
            if self._partial_deadline == math.inf:  # no cancel scope on the hot path
                data = await self._stream.receive_some(self.receive_size)
            else:
                received: bytes | bytearray | None = None
                with trio.move_on_at(self._partial_deadline):
                    received = await self._stream.receive_some(self.receive_size)
                if received is None:
                    await self._fail(*_INCOMPLETE)
                    return
                data = received
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            await self.abort()
            return
        self._process(data)
        await self._handle_events()

    def _process(self, data: bytes | bytearray) -> None:
        """Hand ``data`` to wsproto and sort the events (no I/O: control answers are queued
        in wsproto and sent by :meth:`_handle_events`)."""
        self.last_heard = trio.current_time()  # alive: anything it sends answers a ping
        ws = self._ws
        if ws.state is ConnectionState.CLOSED or ws.state is ConnectionState.REMOTE_CLOSING:
            return  # the peer closed: what follows its close frame is ignored (RFC 6455 5.5.1)
        ws.receive_data(bytes(data) if isinstance(data, bytearray) else data)

    async def _handle_events(self) -> None:
        """Act on the events of the data just received."""
        ws = self._ws
        out = b""
        for event in ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._message_part(event)
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    out += ws.send(event.response())
                # A closing endpoint may ignore pings (RFC 6455 5.5.2).
            elif isinstance(event, Pong):
                pass  # any data answers a ping (see _process)
            elif isinstance(event, CloseConnection):
                await self._peer_closed(event, out)
                return
        if out:
            await self._send_control(out)

    def _message_part(self, event: TextMessage | BytesMessage) -> None:
        data = event.data
        if self._skipping:  # the rest of a message already refused as too large
            if event.message_finished:
                self._skipping = False
                self._partial_deadline = math.inf
            return
        parts = self._parts
        if parts is None and event.message_finished:
            if len(data) > self.max_message_size:
                self._ready.append(_TOO_LARGE)
            else:
                self._ready.append(bytes(data) if isinstance(data, bytearray) else data)
            return
        size = self._parts_size + len(data)
        if size > self.max_message_size:
            self._parts = None
            self._parts_size = 0
            self._skipping = not event.message_finished
            if not self._skipping:
                self._partial_deadline = math.inf
            self._ready.append(_TOO_LARGE)
            return
        if parts is None:
            parts = self._parts = []
            self._partial_deadline = trio.current_time() + self.fragment_timeout
        parts.append(data)  # type: ignore[arg-type]  # one message keeps one type
        self._parts_size = size
        if event.message_finished:
            self._parts = None
            self._parts_size = 0
            self._partial_deadline = math.inf
            whole = "".join(parts) if isinstance(data, str) else b"".join(parts)  # type: ignore[arg-type]
            self._ready.append(whole)

    async def _peer_closed(self, event: CloseConnection, pending: bytes) -> None:
        """The peer's close frame, or wsproto failing a frame (then the state is still OPEN)."""
        ws = self._ws
        self._drop_partial()
        if ws.state is ConnectionState.OPEN:
            # A frame that breaks the framing: fail the connection with a close frame
            # (RFC 6455 7.1.7), not a dropped socket.
            reason = (event.reason or "").encode()[:120].decode("utf-8", "ignore")
            await self._fail(event.code, reason, pending)
            return
        if self._close_info is None:
            self._close_info = (event.code, event.reason or "")
        if ws.state is ConnectionState.REMOTE_CLOSING:
            pending += ws.send(event.response())  # answer the peer's close
        self.phase = Phase.CLOSING
        # Also when nothing is pending: a close frame of ours still queued for the lock (a
        # crossed close) goes out before the stream is closed.
        await self._send_control(pending)
        # The close handshake is done: the server closes the TCP connection (RFC 6455 7.1.1).
        await self._close_stream()

    def _lost(self) -> None:
        """The stream ended or broke without a close handshake (1006); the caller closes
        the stream next (:meth:`_close_stream`)."""
        if self._close_info is None:
            self._close_info = (1006, "")

    async def _fail(self, code: int, reason: str, pending: bytes = b"") -> None:
        """Send a close frame and close the stream (a protocol error or a stalled fragment)."""
        self._drop_partial()
        if self._close_info is None:
            self._close_info = (code, reason)
        ws = self._ws
        if ws.state is ConnectionState.OPEN:
            pending += ws.send(CloseConnection(code=code, reason=reason))
        self.phase = Phase.CLOSING
        await self._send_control(pending)
        await self._close_stream()

    def _drop_partial(self) -> None:
        self._parts = None
        self._parts_size = 0
        self._skipping = False
        self._partial_deadline = math.inf

    def _transport_closed(self) -> TransportClosed:
        code, reason = self._close_info or (1006, "")
        return TransportClosed(code, reason)

    # ---------------------------------------------------------------- sending

    async def send(self, message: str | bytes) -> None:
        """Send one message; TransportClosed once a close began or the stream broke.

        The phase alone is checked: every change of wsproto's state away from OPEN (our
        close, the peer's, a failed frame) sets it in the same step, before any await."""
        if self.phase is not Phase.OPEN:
            await trio.lowlevel.checkpoint()
            raise self._transport_closed()
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(message)
        await self._send(self._ws.send(event))

    async def _send(self, data: bytes) -> None:
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()  # free: skip the scheduler round of acquire()
        try:
            await self._stream.send_all(data)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lost()
        finally:
            lock.release()
        await self._close_stream()
        raise self._transport_closed()

    async def _send_control(self, data: bytes) -> None:
        """Send a control frame from the read path: shielded (a cancelled read must not cut
        a frame in half) and bounded (a peer that does not read loses the connection)."""
        if not data and not self._send_lock.locked():
            return
        with trio.CancelScope(shield=True), trio.move_on_after(CONTROL_SEND_TIMEOUT) as scope:
            try:
                await self._send(data)
            except TransportClosed:
                return
        if scope.cancelled_caught:
            await self.abort()

    async def send_ping(self, payload: bytes, within: float) -> None:
        """Send a keepalive ping.
        Shielded (a cancelled send would cut the frame) and bounded by ``within``: a send
        that cannot finish in that time loses the connection."""
        if self.phase is not Phase.OPEN:
            await trio.lowlevel.checkpoint()
            return
        data = self._ws.send(Ping(payload))
        with trio.CancelScope(shield=True):
            with trio.move_on_after(within) as scope:
                try:
                    await self._send(data)
                except TransportClosed:
                    return
            if scope.cancelled_caught:
                await self.abort()

    async def write(self, data: bytes) -> None:
        """Send bytes as they are (the handshake's response, before any frame)."""
        await self._send(data)

    # ---------------------------------------------------------------- closing

    def start_close(self, code: int, reason: str) -> bool:
        """Always False: a trio stream has no synchronous send, and writing to the socket's
        descriptor behind trio's back is what this front end does not do. The caller then
        sends the frame with :meth:`close` (a writer task per connection at finalize)."""
        return False

    async def close(self, code: int, reason: str) -> None:
        """Send our close frame and wait for the peer's; the caller bounds the wait. The
        stream is released on every path, cancelled or not."""
        try:
            ws = self._ws
            frame = b""
            if self.phase is Phase.OPEN and ws.state is ConnectionState.OPEN:
                self.phase = Phase.CLOSING
                frame = ws.send(CloseConnection(code=code, reason=reason))
            if frame:
                try:
                    await self._send(frame)
                except TransportClosed:
                    return
            if self._closed.is_set():
                return
            if self._reading or self._close_info is not None:
                await self._closed.wait()  # the read loop sees the peer's answer
                return
            # Nobody reads (refused at the door, or the read loop has ended): read until the
            # peer's close frame, dropping messages (none are delivered after a close).
            self._reading = True
            try:
                while self._close_info is None:
                    await self._read_more()
                    self._ready.clear()
            finally:
                self._reading = False
        finally:
            if not self._closed.is_set():
                with trio.CancelScope(shield=True):  # bounded (see _close_stream)
                    await self._close_stream()

    async def abort(self) -> None:
        """Close the stream now, without a handshake (a lost peer: 1006)."""
        self._lost()
        await self._close_stream()

    async def _close_stream(self) -> None:
        """Close the stream, then wake those waiting for the end: the reader that closed it
        goes on to its teardown before a waiting :meth:`close` returns."""
        self.phase = Phase.CLOSED
        self._drop_partial()
        stream = self._stream
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()  # synchronous and idempotent
        else:
            with trio.CancelScope(shield=True), trio.move_on_after(CONTROL_SEND_TIMEOUT):
                await trio.aclose_forcefully(stream)
        self._closed.set()

    @property
    def closed(self) -> bool:
        """The stream is closed."""
        return self.phase is Phase.CLOSED

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self.client} {self.phase.value}>"


_INCOMPLETE: Final = (closecodes.MESSAGE_INCOMPLETE.code, closecodes.MESSAGE_INCOMPLETE.reason)
