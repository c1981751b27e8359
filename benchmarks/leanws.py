"""A lean WebSocket client for the workloads that close thousands of connections at once.

Why: in ``finalize`` and ``drain`` the measured time ends when the last client has its close
frame. With trio-websocket's client, one load-generator process answering 10,000 close frames
(reader task, wsproto, a send under a lock, a channel, then the task waiting in
``get_message``, plus its garbage collector over the ~2 M objects of 10,000 connections) took
1.2-2 s of its CPU, so the row measured the load generator. This client keeps no task of its
own, no channel and no parser state beyond a byte buffer: each connection's task reads its
socket directly (``trio.lowlevel.wait_readable`` on a non-blocking socket), notes the time a
close frame was read off the wire, answers it, and waits for the server's TCP close (bounded).

It speaks RFC 6455 for what these workloads need: the upgrade (``Sec-WebSocket-Accept``
checked), masked text frames out, unmasked frames in (text, binary, ping answered, close).
Both sides of a comparison (actorcore and the plain trio-websocket server) get this same
client.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import select
import socket
import struct
import time
from typing import Final

import trio

OP_TEXT: Final = 0x1
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_READ: Final = 65536
_MAX_HEAD: Final = 16384

#: Bound on waiting for the server's TCP close after answering its close frame.
EOF_WAIT: Final = 10.0


class LeanClosed(Exception):
    """The connection ended: ``code`` from the server's close frame (1006 without one) and
    ``at``, the ``time.perf_counter()`` when that frame (or the end) was read."""

    def __init__(self, code: int, at: float) -> None:
        super().__init__(f"closed: {code}")
        self.code = code
        self.at = at


class LeanProtocolError(Exception):
    """The server broke the handshake or the framing."""


def _mask_frame(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return header + key + masked


class LeanWebSocket:
    """One client connection; use it from one task at a time. :meth:`close` in a finally."""

    __slots__ = ("_buf", "_closed", "_sock")

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self._sock = sock
        self._buf = bytearray(rest)
        self._closed: LeanClosed | None = None

    def _recv_nowait(self) -> bool | None:
        """Add what the socket has now to the buffer: True; False at EOF or a reset; None if
        it has nothing yet."""
        try:
            data = self._sock.recv(_READ)
        except BlockingIOError:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return False
        if not data:
            return False
        self._buf += data
        return True

    async def _fill(self) -> bool:
        """Read what the socket has (waiting for it); False at EOF or a reset."""
        while (got := self._recv_nowait()) is None:
            await trio.lowlevel.wait_readable(self._sock)
        return got

    def _ended(self, code: int) -> LeanClosed:
        """Note the end of the connection, read just now: a close frame's ``code``, or 1006."""
        self._closed = LeanClosed(code, time.perf_counter())
        return self._closed

    def _note_close(self, payload: bytes) -> None:
        """Note the server's close frame (its ``payload``), read just now."""
        self._ended(struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005)

    def _server_closed(self, payload: bytes) -> bytes:
        """Note the server's close frame (its ``payload``), read just now; the answer to send."""
        self._note_close(payload)
        return _mask_frame(OP_CLOSE, payload[:2])

    async def _next_frame(self) -> tuple[int, bytes]:
        """The next whole frame (opcode, payload), reading as needed; :class:`LeanClosed`
        (1006) at EOF."""
        while (frame := self._frame()) is None:
            if not await self._fill():
                raise self._ended(1006)
        return frame

    async def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            view = view[sent:]

    def _frame(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        if second & 0x80:
            raise LeanProtocolError("the server masked a frame")
        n = second & 0x7F
        at = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack_from("!H", buf, 2)
            at = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack_from("!Q", buf, 2)
            at = 10
        if len(buf) < at + n:
            return None
        payload = bytes(buf[at : at + n])
        del buf[: at + n]
        if not first & 0x80:
            raise LeanProtocolError("fragmented frames are not expected here")
        return first & 0x0F, payload

    async def send_message(self, text: str) -> None:
        """One masked text frame."""
        await self._send(_mask_frame(OP_TEXT, text.encode()))

    async def get_message(self) -> bytes:
        """The next text or binary message's payload; pings are answered on the way. Raises
        :class:`LeanClosed` at the server's close frame (answered, then the server's TCP close
        is awaited, bounded) or at EOF (1006); again on every later call."""
        if self._closed is not None:
            raise self._closed
        while True:
            opcode, payload = await self._next_frame()
            if opcode == OP_CLOSE:
                await self._send(self._server_closed(payload))
                with trio.move_on_after(EOF_WAIT):
                    while await self._fill():
                        self._buf.clear()
                assert self._closed is not None
                raise self._closed
            if opcode == OP_PING:
                await self._send(_mask_frame(OP_PONG, payload))
            elif opcode != OP_PONG:
                return payload

    def _read_for_close(self) -> tuple[float, int] | None:
        """Without waiting (for :class:`CloseWatcher`): read what the socket has; at the
        server's close frame answer it and return (time read, code), at EOF (time, 1006);
        None while neither came. Pings are answered, messages dropped."""
        while (got := self._recv_nowait()) is not None:
            if not got:
                ended = self._ended(1006)
                return ended.at, ended.code
            while (frame := self._frame()) is not None:
                opcode, payload = frame
                if opcode == OP_CLOSE:
                    self._send_nowait(self._server_closed(payload))
                    assert self._closed is not None
                    return self._closed.at, self._closed.code
                if opcode == OP_PING:
                    self._send_nowait(_mask_frame(OP_PONG, payload))
        return None

    def _send_nowait(self, data: bytes) -> None:
        """A small control frame on a socket with room for it (a full buffer drops it: the
        server then times the close out, which the workload would see)."""
        with contextlib.suppress(BlockingIOError, ConnectionResetError, BrokenPipeError):
            self._sock.send(data)

    async def aclose(self, within: float) -> None:
        """The client-initiated close handshake (1000), then close the socket: send a close
        frame, read until the server's answering close frame or EOF (bounded by ``within``).
        After the server's own close (:class:`LeanClosed` raised) it only closes the socket."""
        try:
            if self._closed is None:
                with trio.move_on_after(within):
                    await self._send(_mask_frame(OP_CLOSE, struct.pack("!H", 1000)))
                    while True:
                        opcode, payload = await self._next_frame()
                        if opcode == OP_CLOSE:  # the answer to our close: not answered again
                            self._note_close(payload)
                            break
        except (LeanClosed, ConnectionResetError, BrokenPipeError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close the socket (no handshake: use it after the server's close, or to abort)."""
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()


class CloseWatcher:
    """Waits for the close frames of many connections at once, in a worker thread: one epoll
    set, a batch of ready sockets per wake-up, no task per connection. With a task per
    connection (``get_message``), reading 10,000 close frames cost the load generator about
    as long as the server took to send them all, so ``finalize`` timed the client.

    Make it (which registers every socket, level-triggered, so a frame that arrives before
    :meth:`run` starts is still seen) before triggering the closes; then run :meth:`run` in
    a thread. No other task may read these connections meanwhile."""

    def __init__(self, conns: list[LeanWebSocket]) -> None:
        self._epoll = select.epoll()
        self._by_fd: dict[int, LeanWebSocket] = {}
        for ws in conns:
            fd = ws._sock.fileno()
            self._by_fd[fd] = ws
            self._epoll.register(fd, select.EPOLLIN)

    def run(self, within: float) -> list[tuple[float, int]]:
        """Blocking: (time read, code) per connection that ended (1006: EOF without a close
        frame), in arrival order, until every one has or ``within`` seconds passed."""
        out: list[tuple[float, int]] = []
        by_fd = self._by_fd
        deadline = time.monotonic() + within
        try:
            while by_fd:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for fd, _ in self._epoll.poll(min(left, 1.0), 1024):
                    ws = by_fd.get(fd)
                    if ws is None:
                        continue
                    ended = ws._read_for_close()
                    if ended is not None:
                        out.append(ended)
                        self._epoll.unregister(fd)
                        del by_fd[fd]
        finally:
            self._epoll.close()
        return out


async def connect(host: str, port: int, path: str) -> LeanWebSocket:
    """Open a TCP connection and upgrade it on ``path``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((host, port))
        if err not in (0, 115):  # 115: EINPROGRESS
            raise OSError(err, os.strerror(err))
        if err:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        key = base64.b64encode(os.urandom(16))
        ws = LeanWebSocket(sock, b"")
        await ws._send(
            b"GET " + path.encode() + b" HTTP/1.1\r\n"
            b"Host: " + f"{host}:{port}".encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        while b"\r\n\r\n" not in ws._buf:
            if len(ws._buf) > _MAX_HEAD or not await ws._fill():
                raise LeanProtocolError("no upgrade response")
        head, _, rest = bytes(ws._buf).partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if lines[0].split(b" ")[1:2] != [b"101"]:
            raise LeanProtocolError(f"upgrade refused: {lines[0]!r}")
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])
        }
        if headers.get(b"sec-websocket-accept") != accept:
            raise LeanProtocolError("wrong Sec-WebSocket-Accept")
        ws._buf = bytearray(rest)
        return ws
    except BaseException:
        sock.close()
        raise
