"""The message path from trio-websocket's reader to the read loop (``_ServerConnection``):
whole messages are handed over without a scheduler round when they can be; fragments,
oversized messages and a full channel take trio-websocket's own path. Whatever the path, a
pipelined burst arrives whole, in order, with its type."""

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


async def test_trio_keeps_a_memory_channel_buffer_where_receive_message_peeks() -> None:
    """``_ServerConnection.receive_message`` looks at ``channel._state.data`` (trio's
    private buffer) to take a waiting message without a checkpoint; a trio release that
    moves it must fail here, by name, not somewhere in the read loop."""
    send, receive = trio.open_memory_channel[str](1)
    assert not receive._state.data
    send.send_nowait("m")
    assert list(receive._state.data) == ["m"]
    assert receive.receive_nowait() == "m"
