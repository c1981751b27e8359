"""Close frames over real sockets: a close waits its turn behind a frame being sent, a ping
that crosses our close is ignored, a peer that never answers our close is cut after
``close_timeout``, and a crash in one connection's code ends only that connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest
import trio
from trio_websocket import WebSocketConnection

import actorcore
from actorcore import ActorContext, ActorOptions, Conn, ConnKind
from actorcore.testing import expect_close, receive_json, serve_loopback
from actorcore.ws import connection as ws_connection
from actorcore.ws import server as ws_server
from actorcore.ws.handshake import UpgradeRequest

from ..reliability import _wire
from ..reliability._wire import OP_CLOSE, OP_PING, OP_TEXT, RawClient, encode_frame

#: Bytes each close_nowait below found written by the time it returned.
WRITTEN_AT_RETURN: list[int] = []
WRITES: list[bytes] = []


class Closer(actorcore.Actor):
    name = "closer"
    options = ActorOptions(close_timeout=2.0, sleep_timeout=1000.0)

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        if message == "big":
            await conn.send("x" * (8 << 20))  # more than the socket buffers take
        elif isinstance(message, str) and message.startswith("close:"):
            _, code, reason = message.split(":")
            before = sum(map(len, WRITES))
            conn.close_nowait(int(code), reason)
            WRITTEN_AT_RETURN.append(sum(map(len, WRITES)) - before)
        else:
            await conn.send(message)

    @actorcore.action
    async def send_raw(self, ctx: ActorContext, text: str) -> int:
        """Send ``text`` to every raw connection of this actor (each send waits its turn)."""
        raw = [c for c in ctx.conns if c.kind is ConnKind.RAW]
        async with trio.open_nursery() as nursery:
            for conn in raw:
                nursery.start_soon(conn.send, text)
        return len(raw)

    @actorcore.action
    async def close_raw(self, ctx: ActorContext, code: int, reason: str) -> int:
        """Close every raw connection of this actor; how many."""
        raw = [c for c in ctx.conns if c.kind is ConnKind.RAW]
        for conn in raw:
            conn.close_nowait(code, reason)
        return len(raw)


def raw_ws(
    port: int, path: bytes = b"/actors/closer/k/ws"
) -> AbstractAsyncContextManager[RawClient]:
    """A hand-made WebSocket client over loopback, upgraded on ``path``."""
    return _wire.raw_ws(port, path)


@contextlib.asynccontextmanager
async def behind_a_blocked_frame(
    action: str, *args: object
) -> AsyncIterator[tuple[RawClient, WebSocketConnection]]:
    """A raw client of ``closer/k`` that asked for an 8 MiB frame and reads nothing yet (the
    send blocks, holding the stream), and a protocol connection to the same actor that has
    sent ``action(*args)``."""
    registry = actorcore.Registry([Closer])
    async with serve_loopback(registry) as server, raw_ws(server.port) as client:
        await client.send_text("big")
        async with server.connect("/actors/closer/k/connect") as ctl:
            await receive_json(ctl)
            frame = {"type": "action", "id": 1, "name": action, "args": list(args)}
            await ctl.send_message(json.dumps(frame))
            yield client, ctl


def frame_of_close(code: int, reason: str) -> bytes:
    payload = code.to_bytes(2, "big") + reason.encode()
    return bytes((0x88, len(payload))) + payload


async def test_a_close_never_cuts_into_a_frame_being_sent() -> None:
    """A send blocked on a peer that does not read holds the stream: the close then waits its
    turn behind the frame (the writer sends it), so the peer gets the whole frame, then the
    close."""
    with trio.fail_after(20):
        # Bounded by close_timeout: the blocked send is not cut before it.
        async with behind_a_blocked_frame("close_raw", 4003, "after-the-frame") as (client, ctl):
            assert (await receive_json(ctl))["output"] == 1
            frames, code = await client.read_until_close()
    assert [(f.opcode, len(f.payload)) for f in frames] == [(OP_TEXT, 8 << 20)]
    assert code == (4003, "after-the-frame")


async def test_a_message_never_cuts_into_a_frame_being_sent() -> None:
    """Behind a frame blocked on a peer that does not read, a second message waits for the
    send lock: it is never written around the first."""
    with trio.fail_after(20):
        async with behind_a_blocked_frame("send_raw", "after") as (client, ctl):
            with trio.move_on_after(0.2):  # the action waits behind the blocked frame
                await receive_json(ctl)
                raise AssertionError("the second send did not wait for the first")
            first = await client.read_frame()
            second = await client.read_frame()
            assert (await receive_json(ctl))["output"] == 1
    assert first is not None and (first.opcode, len(first.payload)) == (OP_TEXT, 8 << 20)
    assert second is not None and (second.opcode, second.payload) == (OP_TEXT, b"after")


async def test_a_ping_that_crosses_our_close_is_ignored_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """wsproto refuses a pong once our close is out: the ping is ignored (RFC 6455 lets a
    closing endpoint do that), the close handshake completes, and the server goes on."""
    caplog.set_level(logging.ERROR)
    registry = actorcore.Registry([Closer])
    with trio.fail_after(20):
        async with serve_loopback(registry) as server:
            async with raw_ws(server.port) as client:
                await client.send_text("close:4004:crossed")
                first = await client.read_frame()
                assert first is not None
                assert (first.opcode, first.close_code()) == (OP_CLOSE, (4004, "crossed"))
                # A ping sent before this client saw the close (a heartbeat, say), then the
                # answer to the close.
                await client.send(encode_frame(OP_PING, b"p") + encode_frame(OP_CLOSE, b"\x0f\xa4"))
                assert await client.read_frame() is None  # the server closed the TCP stream
            async with server.connect("/actors/closer/k/ws") as ws:
                await ws.send_message("still here")
                assert await ws.get_message() == "still here"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_crash_in_the_websocket_library_ends_only_its_connection(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last line of defence (the ping bug above took the whole server down): an exception
    escaping a connection's task group is logged, that stream is closed, the rest go on."""

    calls = 0
    real = ws_server.accept_response

    def broken(request: UpgradeRequest) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a bug in the connection's code")
        return real(request)

    monkeypatch.setattr(ws_server, "accept_response", broken)
    registry = actorcore.Registry([Closer])
    with trio.fail_after(20):
        async with (
            serve_loopback(registry) as server,
            server.connect("/actors/closer/k/ws") as bystander,
        ):
            client = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with client:
                await client.send_all(_wire.upgrade_request(b"/actors/closer/k/ws"))
                assert await client.receive_some() == b""  # its stream was closed
            await bystander.send_message("still here")
            assert await bystander.get_message() == "still here"
    crashes = [r for r in caplog.records if r.getMessage().startswith("connection crashed")]
    assert len(crashes) == 1
    assert "a bug in the connection's code" in (crashes[0].exc_text or "")


class Quick(Closer):
    name = "quick"
    options = ActorOptions(close_timeout=0.5, sleep_timeout=1000.0)


async def test_a_started_close_the_peer_never_answers_is_cut_after_close_timeout() -> None:
    """A peer that never answers our close frame is cut after ``close_timeout`` (the stream
    is closed: it sees EOF)."""
    registry = actorcore.Registry([Quick])
    with trio.fail_after(20):
        async with serve_loopback(registry) as server:
            async with raw_ws(server.port, b"/actors/quick/k/ws") as client:
                await client.send_text("close:4005:no-answer")
                frame = await client.read_frame()
                assert frame is not None and frame.close_code() == (4005, "no-answer")
                closed_at = trio.current_time()
                assert await client.read_frame() is None  # no answer from us: EOF
                waited = trio.current_time() - closed_at
            stats = registry.statistics()
    # The watchdog checks every TICK (0.25 s); a loaded machine may add a little.
    assert 0.4 <= waited <= 0.5 + 0.25 + 1.0, waited
    assert stats.closes_by_code == {4005: 1}


async def test_close_frames_of_a_finalize_with_many_connections_arrive_whole() -> None:
    """A finalize closes each of its connections with a whole close frame, sent through the
    trio stream (the front end never writes to the socket's descriptor itself)."""
    assert not any(
        name == "write_nonblocking" or name.startswith("_CAN_WRITE") for name in vars(ws_connection)
    )
    registry = actorcore.Registry([Closer])
    with trio.fail_after(20):
        async with serve_loopback(registry) as server:
            for key in ("a", "b"):
                async with server.connect(f"/actors/closer/{key}/ws") as ws:
                    await ws.send_message("close:4002:whole-frame")
                    assert await expect_close(ws) == (4002, "whole-frame")
            async with (
                server.connect("/actors/closer/many/connect") as ctl,
                contextlib.AsyncExitStack() as stack,
            ):
                init = await receive_json(ctl)
                clients = [
                    await stack.enter_async_context(server.connect("/actors/closer/many/ws"))
                    for _ in range(20)
                ]
                for ws in clients:
                    await ws.send_message("ping")
                    assert await ws.get_message() == "ping"
                await registry.sleep(init["actor_id"])
                codes = [await expect_close(ws) for ws in clients]
            assert codes == [(1001, "actor.sleeping")] * 20
