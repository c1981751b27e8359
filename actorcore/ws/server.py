"""The trio-websocket adapter: listener, handshake, and a drain that closes before it cancels.

Shape (after hypercorn's trio worker): listeners and connection handlers run in separate
nurseries. On shutdown the listeners stop first, every connection gets its 1012 close frame
(concurrently, bounded), actors then sleep with their state saved, and only then is anything
cancelled. Cancelling a trio-websocket server sends no close frames, which is why the order
matters.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from .. import closecodes
from ..conn import TransportClosed
from .dispatch import ConnectRequest, Dispatcher

if TYPE_CHECKING:
    from ..registry import Registry

__all__ = ["TrioWebSocketTransport", "serve", "serve_listeners"]

log = logging.getLogger("actorcore.ws")

#: trio-websocket's own limit sits well above every actor's ``max_message_size`` so that the
#: dispatcher, not the library, closes oversized messages with ``message.too_large``.
LIBRARY_MAX_MESSAGE: Final = 16 * 2**20


class TrioWebSocketTransport:
    """:class:`actorcore.conn.Transport` over a trio-websocket connection."""

    __slots__ = ("_ws", "receive")

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self.receive: Callable[[], Coroutine[Any, Any, str | bytes]]
        """The next message; TransportClosed with the close code once closed."""
        if isinstance(ws, _ServerConnection):
            # The read loop awaits this for the connection's whole life: one coroutine
            # frame less per idle connection (and per message) than a translating wrapper.
            self.receive = ws.receive_message
        else:
            self.receive = self._receive

    async def _receive(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def send(self, message: str | bytes) -> None:
        """Send one message."""
        try:
            await self._ws.send_message(message)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    def start_close(self, code: int, reason: str) -> bool:
        """Write the close frame now if nothing else is being sent (see
        :meth:`_ServerConnection.start_close` and :meth:`actorcore.conn.Transport.start_close`)."""
        ws = self._ws
        return isinstance(ws, _ServerConnection) and ws.start_close(code, reason)

    async def close(self, code: int, reason: str) -> None:
        """Close handshake (trio-websocket closes the stream even if cancelled)."""
        await self._ws.aclose(code, reason)

    async def abort(self) -> None:
        """Close the TCP stream without a handshake (cuts a send blocked on a full buffer).

        trio-websocket has no public call for this; ``_close_stream`` is what it runs itself
        when a close handshake is cancelled."""
        await self._ws._close_stream()  # pyright: ignore[reportPrivateUsage]


#: Writes what a non-blocking socket takes now (a module name, so tests can make it short).
_write: Callable[[int, bytes], int] = os.write


def _write_now(stream: trio.SocketStream, data: bytes) -> int:
    """Write ``data`` to the stream's non-blocking socket without waiting: the bytes it took
    (0 if it would block), or -1 if the socket is broken. Only when nothing else is being
    sent on it (the caller checked the stream lock)."""
    try:
        return _write(stream.socket.fileno(), data)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        return -1


#: ``accept()`` errors that mean "out of a resource, try again" (as in trio.serve_listeners).
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)
_ACCEPT_RETRY: Final = 0.1

#: Bound on sending the close frame of a failed connection (a peer that does not read).
_FAIL_SEND_TIMEOUT: Final = 2.0


class _ServerConnection(WebSocketConnection):
    """trio-websocket's connection with a synchronous close start and three close-frame
    fixes (trio-websocket 0.12).

    :meth:`start_close` writes the close frame from the calling task, without waiting: an
    actor's finalize then puts the close frames of all its connections on the wire in one
    pass, instead of one writer task and one trip through the send lock per connection, each
    a scheduler round later than the last.

    1. A frame that breaks the WebSocket framing (invalid UTF-8, an unmasked or reserved
       frame) makes wsproto report a close with 1002/1007 while the connection is still
       OPEN; trio-websocket then closed the TCP stream without a close frame, so the client
       saw 1006. RFC 6455 7.1.7 says to fail the connection with a close frame: sent here.
    2. When the client's close (or a frame wsproto fails) crosses our close, our close frame
       may be waiting for the stream lock while the reader takes the event as the end of the
       connection and closes the stream: the frame was never written. The lock is fair, so
       taking it once first lets the queued frame out.
    3. A ping that arrives after our close frame went out was answered with a pong, which
       wsproto refuses once the connection is closing (``LocalProtocolError`` in the reader
       task). Such pings are ignored, as RFC 6455 5.5.2 allows for a closing endpoint.

    Sends write straight to the socket when nothing else is being sent
    (:meth:`send_message`). Messages also pass from the reader task to the read loop
    without a scheduler round each when they can (:meth:`receive_message`,
    :meth:`_handle_message_event`; see ``docs/architecture.md``, *The per-message path*).
    """

    _close_started: bool = False
    """:meth:`start_close` sent (some of) the frame; :meth:`_aclose` finishes the close."""
    _close_tail: bytes = b""
    """The part of that frame the socket did not take at once (sent before anything else)."""

    def start_close(self, code: int, reason: str) -> bool:
        """Begin our close handshake from the calling task, without yielding: the frame is
        encoded (wsproto is then closing) and written to the socket as far as it takes it
        at once. Nothing is done unless the connection is open, nothing is being sent or
        waiting to be (the stream lock is free, so no frame can be cut or overtaken) and the
        stream is a plain TCP stream. True: the whole frame is out, and the reader ends the
        connection when the peer answers. False: nothing was done, or the socket took only
        part of the frame; ``aclose()`` then sends the rest and waits for the answer."""
        if (
            self._close_reason is not None
            or self._wsproto.state is not ConnectionState.OPEN
            or self._stream_lock.locked()
        ):
            return False
        stream = self._stream
        if not isinstance(stream, trio.SocketStream):
            return False
        data = self._wsproto.send(CloseConnection(code=code, reason=reason))
        self._close_reason = CloseReason(1000, None)  # what aclose() sets when it sends
        self._close_started = True
        # A broken stream (-1) is left to the tail's send, which finds out and aborts.
        sent = max(0, _write_now(stream, data))
        if sent < len(data):
            self._close_tail = bytes(data[sent:])
            return False  # close() sends the rest first, then waits for the answer
        return True

    async def send_message(self, message: str | bytes) -> None:
        """trio-websocket's ``send_message`` that writes the frame straight to the socket
        when nothing else is being sent (the stream lock is free), then yields once, as a
        trio socket send does. trio-websocket takes the lock (a scheduler round) and then
        sends (another). What the socket does not take at once is sent under the lock."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._close_reason:
            raise ConnectionClosed(self._close_reason)
        lock = self._stream_lock
        stream = self._stream
        if lock.locked() or not isinstance(stream, trio.SocketStream):
            await super().send_message(message)
            return
        event: TextMessage | BytesMessage
        if isinstance(message, str):
            event = TextMessage(data=message)
        elif isinstance(message, bytes):
            event = BytesMessage(data=message)
        else:
            raise ValueError("message must be str or bytes")
        data = self._wsproto.send(event)
        sent = _write_now(stream, data)
        if sent == len(data):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        sent_all = False
        if sent >= 0:
            lock.acquire_nowait()  # free: nothing ran since it was checked
            try:
                sent_all = await self._send_locked(memoryview(data)[sent:])
            finally:
                lock.release()
        if not sent_all:
            await self._broken()

    async def _send_close_tail(self) -> None:
        async with self._stream_lock:
            tail, self._close_tail = self._close_tail, b""
            sent_all = not tail or await self._send_locked(tail)
        if not sent_all:
            await self._broken()

    async def _send_locked(self, data: bytes | memoryview) -> bool:
        """Send ``data`` (the caller holds the stream lock); False if the stream broke."""
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _broken(self) -> NoReturn:
        """The stream broke under a send: what trio-websocket's ``_send`` does then, and the
        stream is closed too, so that a reader blocked on it ends whatever the socket's
        state. Raises ConnectionClosed."""
        self._close_socket()
        await self._abort_web_socket()
        assert self._close_reason is not None
        raise ConnectionClosed(self._close_reason)

    def _close_socket(self) -> None:
        """End the reader and close the TCP socket: synchronous, idempotent (the stream is a
        SocketStream wherever this is called)."""
        self._reader_running = False
        stream = self._stream
        assert isinstance(stream, trio.SocketStream)
        stream.socket.close()

    async def _aclose(self, code: int, reason: str | None) -> None:
        if not self._close_started:
            await super()._aclose(code, reason)
            return
        # trio-websocket 0.12's _aclose after its send of the frame (start_close sent it),
        # without the checkpoints that need none: the stream is a SocketStream here, whose
        # close is synchronous, and so is closing the receive channel.
        self._close_started = False
        try:
            if self._close_tail:
                await self._send_close_tail()
            self._recv_channel.close()
            if self._reader_running and not self._close_handshake.is_set():
                await self._close_handshake.wait()
        except ConnectionClosed:
            pass
        finally:
            self._close_socket()

    async def _handle_ping_event(self, event: Ping) -> None:
        if self._wsproto.state is ConnectionState.OPEN:
            await super()._handle_ping_event(event)

    async def receive_message(self) -> str | bytes:
        """``get_message`` raising :class:`TransportClosed` itself (see
        :class:`TrioWebSocketTransport`), and without a checkpoint when a message is
        already waiting: the reader task queues at most two without yielding (one in the
        channel, one parked), so a read loop cannot run on unboundedly."""
        channel = self._recv_channel
        try:
            # Peeks at trio's buffer (private; tests/e2e/test_read_path.py checks it is
            # there) rather than catching WouldBlock: an idle connection would otherwise
            # raise and drop an exception and its traceback on every wait (measured: ~200 B
            # more per idle connection, ~600 B when the wait sits in the except block).
            if channel._state.data:  # pyright: ignore[reportPrivateUsage]
                return channel.receive_nowait()
            return await channel.receive()
        except (trio.ClosedResourceError, trio.EndOfChannel):
            raise _transport_closed(self._close_reason) from None

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        data = event.data
        if not event.message_finished or self._message_parts or len(data) > self._max_message_size:
            await super()._handle_message_event(event)  # fragments, or too large
            return
        try:
            self._send_channel.send_nowait(bytes(data) if isinstance(data, bytearray) else data)
            return
        except trio.WouldBlock:
            pass  # the read loop is behind: wait (outside the handler, see receive_message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return  # as trio-websocket: nobody reads any more
        await super()._handle_message_event(event)

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        state = self._wsproto.state
        if state is ConnectionState.OPEN:  # wsproto failed the frame: not a peer close
            reason = (event.reason or "").encode()[:120].decode("utf-8", "ignore")
            # Set first, as aclose() does: a send_message() while this frame goes out must
            # raise ConnectionClosed, not wsproto's LocalProtocolError.
            self._close_reason = CloseReason(event.code, reason or None)
            with trio.move_on_after(_FAIL_SEND_TIMEOUT), contextlib.suppress(ConnectionClosed):
                await self._send(CloseConnection(event.code, reason))
        elif state is not ConnectionState.REMOTE_CLOSING:
            # Our close may be queued (CLOSED: the handshake is complete; LOCAL_CLOSING: the
            # peer's frame after ours failed the framing). aclose() set _close_reason already.
            # (Not in REMOTE_CLOSING: the peer's close is answered by trio-websocket, which
            # sets _close_reason before it yields.)
            if self._close_tail or self._stream_lock.locked():
                with trio.move_on_after(_FAIL_SEND_TIMEOUT):
                    if self._close_tail:
                        with contextlib.suppress(ConnectionClosed):
                            await self._send_close_tail()
                    else:
                        async with self._stream_lock:
                            pass  # a close frame queued before this is out now
            if state is ConnectionState.CLOSED and isinstance(self._stream, trio.SocketStream):
                # The peer answered our close: what trio-websocket does then, without its
                # two checkpoints (closing a channel and a socket is synchronous).
                self._close_reason = CloseReason(event.code, event.reason or None)
                self._send_channel.close()
                self._close_handshake.set()
                self._close_started = False  # done: nothing left for _aclose
                self._close_socket()
                return
        await super()._handle_close_connection_event(event)


class _Server(WebSocketServer):
    """trio-websocket's server making :class:`_ServerConnection` connections and handing each
    request straight to the dispatcher.

    ``_handle_connection`` is trio-websocket 0.12's own (the library has no hook for the
    connection class; the version is pinned in ``pyproject.toml``), with three changes: the
    connection class is swapped; the request goes to :meth:`Dispatcher.handle` with the
    connection's nursery as the dispatcher's task nursery (no handler closure and no nursery
    of the dispatcher's own per connection: both cost memory for every idle connection); and
    an exception from the connection's tasks is logged and ends only that connection.

    :meth:`run` accepts in loops of its own instead of ``trio.serve_listeners``, which wraps
    each connection's task in one more coroutine (memory for every open connection) and
    closes every stream with ``aclose_forcefully`` (a cancelled scope and a ``Cancelled``
    raised and caught: about a tenth of a connection's teardown). ``_handle_connection``
    closes its stream itself, on every path."""

    async def run(
        self, *, task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Accept on every listener until cancelled (see the class docstring)."""
        async with trio.open_nursery() as nursery:
            for listener in self._listeners:
                nursery.start_soon(self._accept_loop, listener)
            task_status.started(self)
            await trio.sleep_forever()

    async def _accept_loop(self, listener: trio.abc.Listener[Any]) -> NoReturn:
        handlers = self._handler_nursery
        assert handlers is not None
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    # Out of descriptors or memory: what trio.serve_listeners does too.
                    log.error(
                        "accept failed (%s); retrying in %.1f s",
                        os.strerror(exc.errno or 0),
                        _ACCEPT_RETRY,
                        exc_info=True,
                    )
                    await trio.sleep(_ACCEPT_RETRY)
                else:
                    handlers.start_soon(self._handle_connection, stream)

    def __init__(
        self,
        dispatcher: Dispatcher,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        handler_nursery: trio.Nursery,
        max_message_size: int,
        receive_buffer_size: int,
        connect_timeout: float,
        disconnect_timeout: float,
    ) -> None:
        super().__init__(
            _unused_handler,
            list(listeners),  # type: ignore[arg-type]  # any trio Listener works
            handler_nursery=handler_nursery,
            max_message_size=max_message_size,
            receive_buffer_size=receive_buffer_size,
            connect_timeout=connect_timeout,
            disconnect_timeout=disconnect_timeout,
        )
        self._dispatcher = dispatcher

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        try:
            async with trio.open_nursery() as nursery:
                connection = _ServerConnection(
                    stream,
                    WSConnection(ConnectionType.SERVER),
                    message_queue_size=self._message_queue_size,
                    max_message_size=self._max_message_size,
                    receive_buffer_size=self._receive_buffer_size,
                )
                nursery.start_soon(connection._reader_task)
                with trio.move_on_after(self._connect_timeout) as connect_scope:
                    request = await connection._get_request()
                if connect_scope.cancelled_caught:
                    nursery.cancel_scope.cancel()
                    await stream.aclose()
                else:
                    try:
                        await self._dispatcher.handle(
                            request.path,
                            ConnectRequest(
                                path=request.path,
                                headers=tuple(request.headers),
                                subprotocols=tuple(request.proposed_subprotocols),
                            ),
                            functools.partial(_accept, request),
                            task_nursery=nursery,
                        )
                    finally:
                        # A no-op once the close handshake is done (the usual case here).
                        if connection._close_reason is None or connection._close_started:
                            with trio.move_on_after(self._disconnect_timeout):
                                # aclose() shuts the reader task down even when cancelled.
                                await connection.aclose()
        except Exception:
            # A bug in one connection's tasks (ours or the library's) would otherwise end
            # the accept loop, and with it every connection of the server. (A try here, not
            # a wrapper: one coroutine frame less for every open connection.)
            log.exception("connection crashed; closing its stream")
        finally:
            if isinstance(stream, trio.SocketStream):
                stream.socket.close()  # idempotent and synchronous
            else:
                with trio.move_on_after(_FAIL_SEND_TIMEOUT, shield=True):
                    await trio.aclose_forcefully(stream)


async def _unused_handler(request: WebSocketRequest) -> None:  # noqa: ASYNC124 - handler type
    raise AssertionError("_Server hands requests to its dispatcher")  # pragma: no cover


async def _accept(request: WebSocketRequest) -> TrioWebSocketTransport:
    try:
        return TrioWebSocketTransport(await request.accept())
    except ConnectionClosed as exc:
        # The client left during the handshake: nothing to close, nothing to serve.
        raise _closed(exc) from None


def _closed(exc: ConnectionClosed) -> TransportClosed:
    return _transport_closed(exc.reason)


def _transport_closed(reason: CloseReason | None) -> TransportClosed:
    if reason is None:
        return TransportClosed(1006, "")
    return TransportClosed(int(reason.code), reason.reason or "")


#: Bytes asked of the socket per read. Not trio's 64 KiB default (``None``): CPython allocates
#: the whole buffer for each read and trio-websocket keeps the last one alive until the next
#: read, so thousands of idle connections each pin a small remnant of a 64 KiB block and the
#: heap fragments (the soak measured +20 MB of free-but-unreturnable heap in 10 minutes). With
#: 4 KiB reads (trio-websocket's own default) the heap stays flat.
RECEIVE_BUFFER: Final = 4096


def _max_message(registry: Registry) -> int:
    sizes = [d.options.max_message_size for d in registry.definitions.values()]
    return max([LIBRARY_MAX_MESSAGE, *(4 * s for s in sizes)])


def _close_timeout(registry: Registry) -> float:
    return max([2.0, *(d.options.close_timeout for d in registry.definitions.values())])


async def serve(  # noqa: ASYNC128 - task_status is passed on to serve_listeners
    registry: Registry,
    host: str | None,
    port: int,
    *,
    max_connections: int = 10_000,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry`` on ``host:port`` until ``registry.shutdown()``; then drain.

    Runs the registry too if it is not already running. ``task_status`` receives the
    trio-websocket ``WebSocketServer`` (``server.port`` is the bound port).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    await serve_listeners(
        registry, listeners, max_connections=max_connections, task_status=task_status
    )


async def serve_listeners(
    registry: Registry,
    listeners: Sequence[trio.abc.Listener[Any]],
    *,
    max_connections: int = 10_000,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Like :func:`serve` on listeners you made (in-memory listeners in tests)."""
    close_timeout = _close_timeout(registry)
    dispatcher = Dispatcher(registry, max_connections=max_connections, close_timeout=close_timeout)

    async with trio.open_nursery() as registry_nursery:
        if not registry.running:
            await registry_nursery.start(registry.run)
        registry.add_drain_step(lambda: dispatcher.close_all(closecodes.RUNTIME_SHUTDOWN))
        async with trio.open_nursery() as handler_nursery:
            server = _Server(
                dispatcher,
                listeners,
                handler_nursery=handler_nursery,
                max_message_size=_max_message(registry),
                receive_buffer_size=RECEIVE_BUFFER,
                connect_timeout=10,
                disconnect_timeout=close_timeout,
            )
            async with trio.open_nursery() as listener_nursery:
                await listener_nursery.start(server.run)
                log.info("serving on %s", ", ".join(str(x) for x in server.listeners))
                task_status.started(server)
                await registry.wait_shutdown_requested()
                listener_nursery.cancel_scope.cancel()  # stop accepting
            await registry.wait_stopped()
            # Every connection has had its close frame; what is left is a bounded handshake.
            handler_nursery.cancel_scope.deadline = trio.current_time() + close_timeout
