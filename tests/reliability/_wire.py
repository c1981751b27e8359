"""A raw WebSocket client for the reliability tests: hand-made HTTP upgrades and frames.

trio-websocket's client only sends well-formed requests and frames; these helpers send
whatever the test wants (partial handshakes, odd request targets, invalid UTF-8, binary frames,
bytes that are not frames at all) over any trio stream, and parse what the server answers.
"""

from __future__ import annotations

import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from typing import Final

import attrs
import trio

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

#: Close code a peer reports when the connection ended without a close frame.
ABNORMAL: Final = 1006


def upgrade_request(target: bytes, *, host: bytes = b"localhost") -> bytes:
    """A complete HTTP/1.1 WebSocket upgrade request for ``target`` (sent as is)."""
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + target + b" HTTP/1.1\r\n"
        b"Host: " + host + b"\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n"
    )


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    mask_key: bytes | None = None,
) -> bytes:
    """One WebSocket frame as a client sends it (masked unless ``mask`` is False; a random
    key unless ``mask_key`` is given -- ``bytes(4)`` leaves big payloads as they are)."""
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 2**16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return header + payload
    key = os.urandom(4) if mask_key is None else mask_key
    if key == bytes(4):
        return header + key + payload
    return header + key + _mask(payload, key)


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``key`` (fast enough for 16 MiB)."""
    size = len(payload)
    if not size:
        return b""
    repeated = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(size, "big")


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame."""
    return struct.pack("!H", code) + reason.encode()


@attrs.frozen
class Frame:
    """A frame received from the server."""

    opcode: int
    payload: bytes
    fin: bool

    def close_code(self) -> tuple[int, str]:
        """Code and reason of a close frame (1005 for an empty one)."""
        assert self.opcode == OP_CLOSE, self
        if len(self.payload) < 2:
            return 1005, ""
        (code,) = struct.unpack("!H", self.payload[:2])
        return int(code), self.payload[2:].decode("utf-8", "replace")


def split_frame(data: bytes | bytearray) -> tuple[Frame, bool, int] | None:
    """The first complete frame in ``data`` (unmasked), whether it was masked, and the bytes
    it took; None while it is incomplete."""
    if len(data) < 2:
        return None
    first, second = data[0], data[1]
    length = second & 0x7F
    offset = 2
    if length == 126:
        if len(data) < 4:
            return None
        (length,) = struct.unpack("!H", data[2:4])
        offset = 4
    elif length == 127:
        if len(data) < 10:
            return None
        (length,) = struct.unpack("!Q", data[2:10])
        offset = 10
    masked = bool(second & 0x80)
    key = b""
    if masked:
        key = bytes(data[offset : offset + 4])
        offset += 4
    if len(data) < offset + length:
        return None
    payload = bytes(data[offset : offset + length])
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return Frame(first & 0xF, payload, bool(first & 0x80)), masked, offset + length


class RawClient:
    """A WebSocket client over ``stream`` that speaks only in bytes the test chooses.

    Close it (``aclose``) in a ``finally`` or use ``async with``.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False
        self.status: int | None = None
        self.response_head = b""

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the stream (bounded, shielded)."""
        with trio.move_on_after(5, shield=True):
            await self.stream.aclose()

    async def send(self, data: bytes) -> None:
        """Send raw bytes; a peer that already closed is not an error here (what it sent
        before it closed can still be read)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    async def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def handshake(self, target: bytes, *, host: bytes = b"localhost") -> int:
        """Send a full upgrade request and read the response head; return the HTTP status
        (0 if the server closed without answering)."""
        await self.send(upgrade_request(target, host=host))
        return await self.read_response()

    async def read_response(self) -> int:
        """Read the HTTP response head; return its status (0 if the server closed first)."""
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                self.status = 0
                return 0
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        self.response_head = head
        status_line = head.split(b"\r\n", 1)[0]
        self.status = int(status_line.split(b" ")[1])
        if self.status != 101:
            # A refused upgrade has an HTTP body (if any) and no frames: drop it.
            self.buffer.clear()
        return self.status

    async def read_frame(self) -> Frame | None:
        """The next frame from the server, or None at EOF."""
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            if not await self._fill():
                return None

    def _parse(self) -> Frame | None:
        split = split_frame(self.buffer)
        if split is None:
            return None
        frame, masked, used = split
        assert not masked, "server frames are never masked"
        del self.buffer[:used]
        return frame

    async def read_until_close(self) -> tuple[list[Frame], tuple[int, str]]:
        """Read frames until a close frame (answered) or EOF. Returns the data frames and the
        close code and reason (1006 when the stream ended without a close frame)."""
        frames: list[Frame] = []
        while True:
            frame = await self.read_frame()
            if frame is None:
                return frames, (ABNORMAL, "")
            if frame.opcode == OP_CLOSE:
                code = frame.close_code()
                await self.send(encode_frame(OP_CLOSE, frame.payload[:2]))
                return frames, code
            if frame.opcode == OP_PING:
                await self.send(encode_frame(OP_PONG, frame.payload))
                continue
            frames.append(frame)

    async def send_text(self, text: str) -> None:
        """One masked text frame."""
        await self.send(encode_frame(OP_TEXT, text.encode()))


@contextlib.asynccontextmanager
async def raw_ws(port: int, path: bytes, *, host: str = "127.0.0.1") -> AsyncIterator[RawClient]:
    """A :class:`RawClient` over loopback TCP, upgraded on ``path`` (closed on exit)."""
    async with RawClient(await trio.open_tcp_stream(host, port)) as client:
        assert await client.handshake(path) == 101
        yield client
