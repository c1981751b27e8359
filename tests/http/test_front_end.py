"""The front end: one listener for HTTP and WebSockets, keep-alive, and every HTTP bound."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import trio

import actorcore
from actorcore import ActorContext
from actorcore.conn import Conn

from .._clients import tcp_websocket
from ._http import Client, request

ROOT = Path(__file__).resolve().parents[2] / "actorcore"


class Echo(actorcore.Actor):
    name = "echo"

    @actorcore.action
    async def hello(self, ctx: ActorContext, who: str = "you") -> str:
        return f"hello {who}"

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        await conn.send(message)


async def test_http_and_websockets_share_the_port_and_a_connection(serve: Any) -> None:
    server = await serve(actorcore.Registry([Echo]))
    port = server.port
    async with tcp_websocket(port, "/actors/echo/a/ws") as ws:
        await ws.send_message("hi")
        assert await ws.get_message() == "hi"
        assert (await request(port, "GET", "/healthz")).status == 200
    # An upgrade after HTTP requests on one kept-alive connection.
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        client = Client(stream, f"127.0.0.1:{port}")
        for _ in range(3):
            assert (await client.request("GET", "/healthz")).status == 200
        upgrade = (
            b"GET /actors/echo/a/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await stream.send_all(upgrade)
        head = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(4096)
        assert head.startswith(b"HTTP/1.1 101 ")


async def test_keep_alive_is_bounded_by_requests_and_idle_time(serve: Any) -> None:
    server = await serve(
        actorcore.Registry([Echo]), http_max_requests=3, http_keepalive_timeout=0.3
    )
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        client = Client(stream, "x")
        replies = [await client.request("GET", "/healthz") for _ in range(3)]
        assert [r.status for r in replies] == [200, 200, 200]
        assert "connection" not in replies[0].headers
        assert replies[-1].headers["connection"] == "close"
        assert await client.closed_by_server()
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        client = Client(stream, "x")
        assert (await client.request("GET", "/healthz")).status == 200
        started = trio.current_time()
        assert await client.closed_by_server()  # idle past the keep-alive timeout
        assert trio.current_time() - started < 5


async def test_a_request_slower_than_the_request_timeout_gets_408(serve: Any) -> None:
    server = await serve(actorcore.Registry([Echo]), http_request_timeout=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(
            b"POST /actors/echo/a/actions/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{"
        )
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.1 408 ")


async def test_a_head_over_16_kib_gets_431(serve: Any) -> None:
    server = await serve(actorcore.Registry([Echo]))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        # 20 KiB of a head that has not ended: all of it is read, and refused.
        start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
        await stream.send_all(start + b"a" * (20 * 1024 - len(start)))
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.1 431 ")


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(serve: Any) -> None:
    server = await serve(actorcore.Registry([Echo]))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        client = Client(stream, "x")
        size = Echo.options.max_message_size + 1
        await stream.send_all(
            b"POST /actors/echo/a/actions/hello HTTP/1.1\r\nHost: x\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % size
        )
        reply = await client.read_reply()
        assert reply.status == 413


async def test_expect_100_continue_is_answered(serve: Any) -> None:
    server = await serve(actorcore.Registry([Echo]))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        body = json.dumps({"args": ["curl"]}).encode()
        await stream.send_all(
            b"POST /actors/echo/a/actions/hello HTTP/1.1\r\nHost: x\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        with trio.fail_after(10):
            head = await stream.receive_some(4096)
        assert head.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(body)
        data = b""
        with trio.fail_after(10):
            while b'"hello curl"' not in data:
                data += await stream.receive_some(4096)
        assert data.startswith(b"HTTP/1.1 200 ")


async def test_http_connections_count_against_max_connections(serve: Any) -> None:
    server = await serve(actorcore.Registry([Echo]), max_connections=1)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        client = Client(stream, "x")
        assert (await client.request("GET", "/healthz")).status == 200  # kept alive
        assert server.statistics().http_connections == 1
        reply = await request(server.port, "GET", "/healthz")
        assert reply.status == 503
        assert reply.headers["retry-after"] == "1"
    # Once the kept-alive connection is gone, a new one is served (the server may see the
    # close a moment after the client: retried, bounded).
    with trio.fail_after(10):
        while (await request(server.port, "GET", "/healthz")).status != 200:
            pass


def test_the_front_end_uses_no_private_attribute_of_other_packages_and_no_os_write() -> None:
    """The server's own modules reach trio, h11 and wsproto through public names only."""
    modules = [*(ROOT / "ws").glob("*.py"), *(ROOT / "http").glob("*.py")]
    foreign = {"trio", "h11", "wsproto", "trio_websocket", "os", "socket"}
    for path in modules:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert not (node.attr == "write" and _name(node.value) == "os"), path
                root = node
                while isinstance(root, ast.Attribute):
                    root = root.value  # type: ignore[assignment]
                if isinstance(root, ast.Name) and root.id in foreign:
                    assert not node.attr.startswith("_"), f"{path}: {ast.unparse(node)}"
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "trio_websocket", path
                for alias in node.names:
                    assert not alias.name.startswith("_"), f"{path}: {alias.name}"


def _name(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else None
