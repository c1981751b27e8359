"""The lean WebSocket client the finalize and drain benchmarks time closes with
(``benchmarks/leanws.py``): it must speak the protocol correctly for its numbers to mean
anything. Real loopback sockets against actorcore's server."""

from __future__ import annotations

import functools
import socket
import time

import pytest
import trio
from wsproto.utilities import generate_accept_token

import actorcore
from actorcore import ActorContext, ActorOptions, Conn
from actorcore.testing import serve_loopback
from benchmarks import leanws


class Echo(actorcore.Actor):
    name = "echo"
    options = ActorOptions(max_message_size=1 << 20)

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        if message == "bye":
            await conn.close(4000, "bye now")
        else:
            await conn.send(message)


async def test_lean_client_upgrades_echoes_and_reports_the_close_it_read() -> None:
    registry = actorcore.Registry([Echo])
    with trio.fail_after(20):
        async with serve_loopback(registry) as server:
            ws = await leanws.connect("127.0.0.1", server.port, "/actors/echo/k/ws")
            try:
                for size in (0, 125, 126, 70_000):  # every length encoding, both ways
                    await ws.send_message("x" * size)
                    assert await ws.get_message() == b"x" * size
                before = time.perf_counter()
                await ws.send_message("bye")
                with pytest.raises(leanws.LeanClosed) as closed:
                    await ws.get_message()
                assert closed.value.code == 4000
                assert before <= closed.value.at <= time.perf_counter()  # when it was read
                # Answered: the server saw a clean close (not 1006) and closed the TCP stream.
                with pytest.raises(leanws.LeanClosed) as again:
                    await ws.get_message()
                assert again.value is closed.value
            finally:
                ws.close()
            assert registry.statistics().closes_by_code == {4000: 1}


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "upgrade refused"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSBrZXk=\r\n\r\n",
            "wrong Sec-WebSocket-Accept",
        ),
        (b"", "no upgrade response"),
    ],
)
async def test_lean_client_refuses_a_failed_upgrade(answer: bytes, error: str) -> None:
    async def server(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        if answer:
            await stream.send_all(answer)
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(leanws.LeanProtocolError, match=error):
                await leanws.connect("127.0.0.1", port, "/actors/echo/k/ws")
            nursery.cancel_scope.cancel()


async def test_close_watcher_reads_and_answers_every_close_frame() -> None:
    """The watcher (one epoll set in a worker thread) sees every connection's close frame,
    answers it (the server records clean closes, no 1006) and reports EOF without a frame as
    1006."""
    registry = actorcore.Registry([Echo])
    with trio.fail_after(20):
        async with serve_loopback(registry) as server:
            conns = [
                await leanws.connect("127.0.0.1", server.port, "/actors/echo/k/ws")
                for _ in range(50)
            ]
            try:
                for ws in conns:  # live on the actor before the sleep
                    await ws.send_message("hi")
                    assert await ws.get_message() == b"hi"
                handle = await registry.get("echo", "k")
                watcher = leanws.CloseWatcher(conns)  # registered before the closes start
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(registry.sleep, handle.actor_id)
                    before = time.perf_counter()
                    ended = await trio.to_thread.run_sync(watcher.run, 10.0)
                assert [code for _, code in ended] == [1001] * 50
                assert all(before <= at <= time.perf_counter() for at, _ in ended)
            finally:
                for ws in conns:
                    ws.close()
            assert registry.statistics().closes_by_code == {1001: 50}

            aborted = await leanws.connect("127.0.0.1", server.port, "/actors/echo/k2/ws")
            try:
                watcher = leanws.CloseWatcher([aborted])
                aborted._sock.shutdown(socket.SHUT_RD)  # reads now see EOF, as if the server left
                assert [code for _, code in await trio.to_thread.run_sync(watcher.run, 5.0)] == [
                    1006
                ]
            finally:
                aborted.close()


async def test_lean_client_close_handshake_is_answered_and_bounded() -> None:
    """``aclose`` sends a 1000 close frame and returns once the server's answering close frame
    is read (the server never sees an abnormal close); after the server's own close it only
    closes the socket; a silent peer cannot hold it past ``within``."""
    registry = actorcore.Registry([Echo])
    with trio.fail_after(20):
        async with serve_loopback(registry) as server:
            ws = await leanws.connect("127.0.0.1", server.port, "/actors/echo/k/ws")
            await ws.send_message("hi")
            assert await ws.get_message() == b"hi"
            await ws.aclose(5.0)
            with pytest.raises(leanws.LeanClosed) as closed:
                await ws.get_message()
            assert closed.value.code == 1000  # the server's answer, read before returning
            assert registry.statistics().connections_held == 0

            ws = await leanws.connect("127.0.0.1", server.port, "/actors/echo/k/ws")
            await ws.send_message("bye")
            with pytest.raises(leanws.LeanClosed):
                await ws.get_message()
            await ws.aclose(5.0)  # the server closed first: nothing more is sent or read
            assert registry.statistics().closes_by_code == {4000: 1}

    async def silent(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + generate_accept_token(key) + b"\r\n\r\n"
        )
        await trio.sleep_forever()  # reads nothing, answers nothing

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            ws = await leanws.connect("127.0.0.1", port, "/actors/echo/k/ws")
            before = trio.current_time()
            await ws.aclose(0.5)
            assert 0.5 <= trio.current_time() - before < 5.0
            nursery.cancel_scope.cancel()
