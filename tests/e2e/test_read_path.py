"""The message path from the socket to the read loop (``actorcore.ws.connection``): a
pipelined burst of whole and fragmented messages arrives whole, in order, with its type, and
large messages go out whole."""

from __future__ import annotations

import pytest
import trio

import actorcore
from actorcore import ActorContext, ActorOptions, Conn
from actorcore.testing import serve_loopback

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


class Echo(actorcore.Actor):
    name = "echo"
    options = ActorOptions(max_message_size=1 << 20)

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        await conn.send(message)


async def test_messages_small_and_larger_than_the_socket_buffer_arrive_whole() -> None:
    messages: list[str | bytes] = ["a", "b" * 200, b"\x00\x01", "c" * 700_000, b"d" * 5]
    registry = actorcore.Registry([Echo])
    with trio.fail_after(30):
        async with serve_loopback(registry) as server, server.connect("/actors/echo/k/ws") as ws:
            for message in messages:
                await ws.send_message(message)
            assert [await ws.get_message() for _ in messages] == messages
