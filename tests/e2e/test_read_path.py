"""The message path from trio-websocket's reader to the read loop (``_ServerConnection``):
whole messages are handed over without a scheduler round when they can be; fragments,
oversized messages and a full channel take trio-websocket's own path. Whatever the path, a
pipelined burst arrives whole, in order, with its type."""

from __future__ import annotations

import os

import pytest
import trio

import actorcore
from actorcore import ActorContext, ActorOptions, Conn
from actorcore.testing import expect_close, serve_loopback
from actorcore.ws import server as ws_server

from ..reliability._wire import OP_BINARY, OP_CONT, OP_TEXT, encode_frame, raw_ws

SEEN: list[str | bytes] = []


class Recorder(actorcore.Actor):
    name = "recorder"
    options = ActorOptions(max_message_size=1000)

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        SEEN.append(message)
        if len(SEEN) % 7 == 0:
            await trio.lowlevel.checkpoint()  # some hooks yield, most do not
        if message == "last":
            await conn.send(str(len(SEEN)))


@pytest.mark.parametrize("burst", [1, 2, 3, 500])
async def test_a_pipelined_burst_arrives_whole_in_order_and_typed(burst: int) -> None:
    """``burst`` rounds of: a text, a text in three fragments, a binary, a binary in two
    fragments (all sent in one write), then ``last``."""
    SEEN.clear()
    frames = b""
    expected: list[str | bytes] = []
    for i in range(burst):
        frames += encode_frame(OP_TEXT, f"t{i}".encode())
        frames += encode_frame(OP_TEXT, b"f", fin=False)
        frames += encode_frame(OP_CONT, b"ra", fin=False)
        frames += encode_frame(OP_CONT, f"g{i}".encode())
        frames += encode_frame(OP_BINARY, bytes([i % 256, 0]))
        frames += encode_frame(OP_BINARY, b"\x01", fin=False)
        frames += encode_frame(OP_CONT, b"\x02")
        expected += [f"t{i}", f"frag{i}", bytes([i % 256, 0]), b"\x01\x02"]
    frames += encode_frame(OP_TEXT, b"last")
    expected.append("last")
    registry = actorcore.Registry([Recorder])
    with trio.fail_after(30):
        async with (
            serve_loopback(registry) as server,
            raw_ws(server.port, b"/actors/recorder/k/ws") as client,
        ):
            await client.send(frames)
            reply = await client.read_frame()
            assert reply is not None
            assert reply.payload == str(len(expected)).encode()
    assert expected == SEEN


async def test_an_oversized_message_in_a_burst_closes_1009_after_the_ones_before() -> None:
    SEEN.clear()
    registry = actorcore.Registry([Recorder])
    with trio.fail_after(30):
        async with (
            serve_loopback(registry) as server,
            raw_ws(server.port, b"/actors/recorder/k/ws") as client,
        ):
            await client.send(
                encode_frame(OP_TEXT, b"a")
                + encode_frame(OP_TEXT, b"b")
                + encode_frame(OP_TEXT, b"x" * 1001)
                + encode_frame(OP_TEXT, b"never")
            )
            frames, (code, reason) = await client.read_until_close()
    assert (code, reason) == (1009, "message.too_large")
    assert frames == []
    assert SEEN == ["a", "b"]


async def test_trio_keeps_a_memory_channel_buffer_where_receive_message_peeks() -> None:
    """``_ServerConnection.receive_message`` looks at ``channel._state.data`` (trio's
    private buffer) to take a waiting message without a checkpoint; a trio release that
    moves it must fail here, by name, not somewhere in the read loop."""
    send, receive = trio.open_memory_channel[str](1)
    assert not receive._state.data
    send.send_nowait("m")
    assert list(receive._state.data) == ["m"]
    assert receive.receive_nowait() == "m"


class Echo(actorcore.Actor):
    name = "echo"
    options = ActorOptions(max_message_size=1 << 20)

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        await conn.send(message)


@pytest.mark.parametrize("takes", [0, 1, 3, 100])
async def test_a_message_the_socket_takes_only_part_of_arrives_whole(
    monkeypatch: pytest.MonkeyPatch, takes: int
) -> None:
    """Sends go straight to the socket when nothing else is being sent; here the socket takes
    ``takes`` bytes at once (0: it would block) and the rest goes under the stream lock."""

    def short_write(fd: int, data: bytes) -> int:
        if takes == 0:
            raise BlockingIOError
        return os.write(fd, data[:takes])

    monkeypatch.setattr(ws_server, "_write", short_write)
    messages: list[str | bytes] = ["a", "b" * 200, b"\x00\x01", "c" * 70_000, b"d" * 5]
    registry = actorcore.Registry([Echo])
    with trio.fail_after(30):
        async with serve_loopback(registry) as server, server.connect("/actors/echo/k/ws") as ws:
            for message in messages:
                await ws.send_message(message)
            assert [await ws.get_message() for _ in messages] == messages


async def test_a_send_on_a_broken_socket_ends_only_that_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def write(fd: int, data: bytes) -> int:
        if b"boom" in data:
            raise BrokenPipeError
        return os.write(fd, data)

    monkeypatch.setattr(ws_server, "_write", write)
    registry = actorcore.Registry([Echo])
    with trio.fail_after(30):
        async with (
            serve_loopback(registry) as server,
            server.connect("/actors/echo/k/ws") as other,
        ):
            async with server.connect("/actors/echo/k/ws") as broken:
                await broken.send_message("boom")
                assert (await expect_close(broken))[0] == 1006
            await other.send_message("fine")
            assert await other.get_message() == "fine"
