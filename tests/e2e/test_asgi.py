"""``actorcore.asgi.app`` (issue 18) mounted in hypercorn's trio worker on loopback: calls,
events, hibernation, 1000 on destroy, 1012 on drain and on the server's shutdown, routing
(keys, ``root_path``, another app around it, what is not an actorcore route), the server's
refusals (Origin, message size), and the lifespan.

Real clock and sockets; every wait is bounded by ``trio.fail_after``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve
from trio_websocket import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

import actorcore
from actorcore import ActorContext, ActorOptions, LifecycleState
from actorcore.asgi import ASGIApp, AsgiTransport, app
from actorcore.conn import TransportClosed
from actorcore.testing import wait_for_state
from tests._clients import tcp_websocket

TIMEOUT = 10.0


class Room(actorcore.Actor):
    name = "room"
    options = ActorOptions(sleep_timeout=0.2, sleep_grace_period=0.5, close_timeout=0.5)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"said": []}

    @actorcore.action
    async def say(self, ctx: ActorContext, text: str) -> int:
        ctx.state["said"].append(text)
        ctx.broadcast("said", text)
        return len(ctx.state["said"])

    @actorcore.action
    async def generation(self, ctx: ActorContext) -> int:
        return ctx.generation

    @actorcore.action
    async def key(self, ctx: ActorContext) -> tuple[str | None, str]:
        return ctx.key, ctx.actor_id

    @actorcore.action
    async def nap(self, ctx: ActorContext) -> None:
        ctx.sleep()

    @actorcore.action
    async def close_room(self, ctx: ActorContext) -> None:
        ctx.destroy()


class Small(actorcore.Actor):
    """Messages of at most 1 KiB (the route's limit, as the server applies it)."""

    name = "small"
    options = ActorOptions(max_message_size=1024, close_timeout=0.5)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return None


class Bye(actorcore.Actor):
    """A raw WebSocket whose message hook closes its connection and returns only once the
    close handshake waits for the client's answer (``returned`` is set then)."""

    name = "bye"
    options = ActorOptions(close_timeout=2.0)
    returned: trio.Event

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return None

    async def on_ws_message(
        self, ctx: ActorContext, conn: actorcore.Conn, message: str | bytes
    ) -> None:
        await conn.close(1000, "bye")
        await trio.testing.wait_all_tasks_blocked()  # the writer waits in receive now
        Bye.returned.set()


class Served:
    """A running hypercorn: its ``ws://`` URL, the app, and a way to stop the server."""

    def __init__(self, url: str, asgi: ASGIApp, shutdown: trio.Event) -> None:
        self.url = url
        self.asgi = asgi
        self.port = int(url.rsplit(":", 1)[1])
        self._shutdown = shutdown

    def stop(self) -> None:
        """Tell hypercorn to shut down (its ``shutdown_trigger``)."""
        self._shutdown.set()


@asynccontextmanager
async def hypercorn_serving(
    asgi: Any, *, graceful_timeout: float = 1.0, **config: Any
) -> AsyncIterator[Served]:
    """``asgi`` (an app, or a registry to make one for) in hypercorn on 127.0.0.1, a free
    port (hypercorn's ``task_status`` reports the bound address); stopped on exit."""
    if isinstance(asgi, actorcore.Registry):
        asgi = app(asgi)
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.graceful_timeout = graceful_timeout
    cfg.accesslog = None
    cfg.errorlog = None
    for name, value in config.items():
        setattr(cfg, name, value)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                asgi, cfg, shutdown_trigger=shutdown.wait, task_status=task_status
            )
        )
        try:
            yield Served(binds[0].replace("http://", "ws://"), asgi, shutdown)
        finally:
            shutdown.set()


async def _closed_with(ws: Any) -> tuple[int, str | None]:
    """Read until the server closes ``ws``; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    return closed.value.reason.code, closed.value.reason.reason


async def _raw_http(port: int, request: bytes) -> bytes:
    """Send ``request`` over a plain TCP stream to 127.0.0.1:``port``; the whole answer (the
    server closes: an error answer, or ``Connection: close`` in the request)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        answer = b""
        while data := await stream.receive_some(4096):
            answer += data
        return answer


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


def _upgrade(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


# ---------------------------------------------------------------- calls, events, hibernation


async def test_calls_events_and_hibernation() -> None:
    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(registry) as served:
            assert registry.running, "the lifespan started the registry"
            async with actorcore.connect(served.url, "room", "lobby") as room:
                await room.subscribe("said")
                events = room.events()
                assert await room.call("say", "hello") == 1
                event = await events.receive()
                assert (event.name, event.args) == ("said", ("hello",))
                assert await room.call("generation") == 1
                handle = await registry.get("room", "lobby")
                await room.call("nap")
                await wait_for_state(registry, handle.actor_id, LifecycleState.ASLEEP)
                # The protocol connection stayed open while its actor slept: the next call
                # wakes it.
                assert await room.call("generation") == 2
                assert await room.call("say", "again") == 2
        assert not registry.running, "the lifespan shutdown drained the registry"


async def test_keys_are_routed_as_the_server_routes_them() -> None:
    # The route is read from the percent-encoded path (raw_path), as the server reads its
    # request target: "a/b" is one key, and "%41" is not "A".
    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(registry) as served:
            ids = set()
            for key in ["a/b", "%41", "A", "sp ace", "é"]:
                async with actorcore.connect(served.url, "room", key, reconnect=False) as room:
                    got, actor_id = await room.call("key")
                    assert got == key
                    ids.add(actor_id)
            assert len(ids) == 5


# ---------------------------------------------------------------- closes


async def test_destroy_closes_with_1000() -> None:
    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_serving(registry) as served,
            actorcore.connect(served.url, "room", "doomed") as room,
        ):
            await room.call("close_room")
            await room.wait_finished()  # 1000 is not reconnected
            assert isinstance(room.final_error, actorcore.ActorDestroyed)
            assert room.last_close is not None
            assert (room.last_close.code, room.last_close.reason) == (1000, "actor.destroyed")


async def test_a_drain_closes_with_1012() -> None:
    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)  # the embedder runs the registry
            async with (
                hypercorn_serving(registry) as served,
                actorcore.connect(served.url, "room", "busy", reconnect=False) as room,
            ):
                assert await room.call("say", "hi") == 1
                await registry.shutdown()  # drain first, then the server stops
                await room.wait_finished()
                assert isinstance(room.final_error, actorcore.RuntimeShutdown)
                assert room.last_close is not None
                assert (room.last_close.code, room.last_close.reason) == (1012, "runtime.shutdown")


async def test_a_server_shutdown_closes_with_1012_then_drains() -> None:
    # `hypercorn app:asgi` stopped (SIGTERM): hypercorn waits graceful_timeout, then cancels
    # its connections (the app sends 1012 then), and only then runs the lifespan shutdown,
    # which drains the registry (the actor's state is saved).
    store = actorcore.MemoryStore()
    registry = actorcore.Registry([Room], store)
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_serving(registry, graceful_timeout=0.1) as served,
            actorcore.connect(served.url, "room", "late", reconnect=False) as room,
        ):
            assert await room.call("say", "kept") == 1
            served.stop()
            await room.wait_finished()
            assert isinstance(room.final_error, actorcore.RuntimeShutdown)
            assert room.last_close is not None
            assert (room.last_close.code, room.last_close.reason) == (1012, "runtime.shutdown")
        assert not registry.running
        async with actorcore.Registry([Room], store) as again:
            handle = await again.get("room", "late")
            assert await handle.call("say", "again") == 2


async def test_a_close_answered_late_ends_the_connection() -> None:
    # The hook closes its connection and returns before the client answers the close: the
    # read loop and the close handshake both wait for the ASGI disconnect, and both see it.
    registry = actorcore.Registry([Bye])
    asgi = app(registry)
    ended = trio.Event()
    Bye.returned = trio.Event()

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asgi(scope, receive, send)
        finally:
            if scope["type"] == "websocket":
                ended.set()

    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(watched) as served:
            ws = WSConnection(ConnectionType.CLIENT)
            stream = await trio.open_tcp_stream("127.0.0.1", served.port)
            async with stream:
                await stream.send_all(ws.send(Request(host="x", target="/actors/bye/k/ws")))
                close: CloseConnection | None = None
                while close is None:
                    ws.receive_data(await stream.receive_some(4096))
                    for event in ws.events():
                        if isinstance(event, AcceptConnection):
                            await stream.send_all(ws.send(TextMessage("hi")))
                        elif isinstance(event, CloseConnection):
                            close = event
                assert (close.code, close.reason) == (1000, "bye")
                # Answer once the hook has returned and the read loop reads again.
                await Bye.returned.wait()
                await trio.testing.wait_all_tasks_blocked()
                await stream.send_all(ws.send(close.response()))
                await ended.wait()
            assert asgi.dispatcher.connections == 0


# ---------------------------------------------------------------- routing and refusals


async def test_what_is_not_an_actor_route() -> None:
    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(registry) as served:
            health = await _raw_http(served.port, _get("/health"))
            assert health.startswith(b"HTTP/1.1 404")
            # A WebSocket elsewhere: refused, not upgraded (left to the app around this one).
            for path in ["/elsewhere", "/actors"]:
                assert (await _raw_http(served.port, _upgrade(path))).startswith(b"HTTP/1.1 403")
            # Actor routes refused as actorcore's own server refuses them: accepted, then the
            # close frame with the code.
            nobody = actorcore.connect(served.url, "nobody", "k", reconnect=False)
            with pytest.raises(actorcore.ActorNotFound):
                async with nobody:
                    pass
            assert nobody.last_close is not None
            assert (nobody.last_close.code, nobody.last_close.reason) == (1008, "actor.not_found")
            for path in ["/actors/room/k/nope", "/actors/room", "/actors/room/k/connect?params=["]:
                async with tcp_websocket(served.port, path) as ws:
                    code, reason = await _closed_with(ws)
                    expected = "protocol.invalid_message" if "params" in path else "actor.not_found"
                    assert (code, reason) == (1008, expected)


async def test_origin_is_checked_as_the_server_checks_it() -> None:
    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(registry) as served:
            port = served.port
            evil = [(b"Origin", b"http://evil.example")]
            async with tcp_websocket(port, "/actors/room/k/connect", extra_headers=evil) as ws:
                assert await _closed_with(ws) == (1008, "auth.forbidden")
            same = [(b"Origin", f"http://127.0.0.1:{port}".encode())]
            async with tcp_websocket(port, "/actors/room/k/connect", extra_headers=same) as ws:
                assert '"init"' in await ws.get_message()
        allowed = app(actorcore.Registry([Room]), allowed_origins=["http://evil.example"])
        async with hypercorn_serving(allowed) as served:
            port = served.port
            async with tcp_websocket(port, "/actors/room/k/connect", extra_headers=evil) as ws:
                assert '"init"' in await ws.get_message()


async def test_message_size_limits() -> None:
    # The route's max_message_size, as the server applies it: 1009 message.too_large.
    # Above hypercorn's own websocket_max_message_size, hypercorn closes first (no reason).
    registry = actorcore.Registry([Small])
    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(registry, websocket_max_message_size=4096) as served:
            async with tcp_websocket(served.port, "/actors/small/k/connect") as ws:
                assert '"init"' in await ws.get_message()
                await ws.send_message("x" * 2000)
                assert await _closed_with(ws) == (1009, "message.too_large")
            async with tcp_websocket(served.port, "/actors/small/k/connect") as ws:
                assert '"init"' in await ws.get_message()
                await ws.send_message("x" * 5000)
                code, _ = await _closed_with(ws)
                assert code == 1009


async def test_mounted_under_a_root_path() -> None:
    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_serving(registry, root_path="/base") as served,
            actorcore.connect(served.url + "/base", "room", "a/b") as room,
        ):
            assert (await room.call("key"))[0] == "a/b"


async def test_mounted_in_another_app() -> None:
    # An app around ours that routes /rt/... to it (setting root_path, as frameworks' mounts
    # do) and does not forward the lifespan: it runs the registry itself.
    registry = actorcore.Registry([Room])
    asgi = app(registry)

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            async with registry:
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["path"].startswith("/rt/"):
            await asgi({**scope, "root_path": scope.get("root_path", "") + "/rt"}, receive, send)
        else:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(outer) as served:
            head = await _raw_http(served.port, _get("/api"))
            assert head.startswith(b"HTTP/1.1 204")
            async with actorcore.connect(served.url + "/rt", "room", "%41") as room:
                assert (await room.call("key"))[0] == "%41"
        assert not registry.running


async def test_a_registry_nobody_runs(caplog: pytest.LogCaptureFixture) -> None:
    registry = actorcore.Registry([Room])
    asgi = app(registry)

    async def no_lifespan(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
        else:
            await asgi(scope, receive, send)

    with trio.fail_after(TIMEOUT), caplog.at_level(logging.ERROR, "actorcore.asgi"):
        async with hypercorn_serving(no_lifespan) as served:
            for _ in range(2):
                async with tcp_websocket(served.port, "/actors/room/k/connect") as ws:
                    assert await _closed_with(ws) == (1011, "actor.internal_error")
    assert [r.getMessage() for r in caplog.records if "not running" in r.getMessage()] == [
        "actorcore.asgi: the registry is not running: serve the app with its lifespan, or run "
        "the registry yourself (`async with registry:`)"
    ]


# ---------------------------------------------------------------- the fallback app


async def test_a_fallback_app_gets_the_other_routes_and_the_lifespan() -> None:
    registry = actorcore.Registry([Room])
    seen: list[Any] = []

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                seen.append((message["type"], registry.running))
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        seen.append(scope["path"])
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close"})
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(app(registry, fallback=fallback)) as served:
            head = await _raw_http(served.port, _get("/api/things"))
            assert head.startswith(b"HTTP/1.1 204")
            assert (await _raw_http(served.port, _upgrade("/chat"))).startswith(b"HTTP/1.1 403")
            async with actorcore.connect(served.url, "room", "side") as room:
                assert await room.call("say", "still served") == 1
    # The registry starts before the fallback and stops after it.
    assert seen == [
        ("lifespan.startup", True),
        "/api/things",
        "/chat",
        ("lifespan.shutdown", True),
    ]
    assert not registry.running


async def _drive_lifespan(asgi: ASGIApp, *messages: str) -> list[Any]:
    """Run ``asgi``'s lifespan with ``messages`` (as an ASGI server would); its answers."""
    inbox = list(messages)
    answers: list[Any] = []

    async def receive() -> dict[str, Any]:
        if not inbox:
            await trio.sleep_forever()  # (the test's fail_after bounds it)
        return {"type": inbox.pop(0)}

    async def send(message: Any) -> None:
        answers.append(dict(message))
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(asgi, {"type": "lifespan"}, receive, send)
    return answers


async def test_lifespan_failures_are_reported_as_such(tmp_path: Any) -> None:
    with trio.fail_after(TIMEOUT):
        # The registry cannot start (its store cannot open): startup.failed.
        broken = actorcore.Registry([Room], actorcore.SQLiteStore(tmp_path / "no" / "x.db"))
        answers = await _drive_lifespan(app(broken), "lifespan.startup")
        assert [a["type"] for a in answers] == ["lifespan.startup.failed"]
        assert "open failed" in answers[0]["message"]

        # The fallback's startup fails: the registry is drained again, and startup.failed.
        registry = actorcore.Registry([Room])

        async def failing(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})

        answers = await _drive_lifespan(app(registry, fallback=failing), "lifespan.startup")
        assert answers == [{"type": "lifespan.startup.failed", "message": "no database"}]
        assert not registry.running

        # A fallback without lifespan support (it raises): served without it.
        registry = actorcore.Registry([Room])

        async def http_only(scope: Any, receive: Any, send: Any) -> None:
            assert scope["type"] == "http"

        asgi = app(registry, fallback=http_only)
        answers = await _drive_lifespan(asgi, "lifespan.startup", "lifespan.shutdown")
        assert [a["type"] for a in answers] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        assert not registry.running


def test_it_says_so_when_not_served_on_trio() -> None:
    # hypercorn's default worker is asyncio's: the error names the trio worker.
    asgi = app(actorcore.Registry([Room]))

    async def receive() -> dict[str, Any]:
        raise AssertionError("not reached")

    async def send(message: Any) -> None:
        raise AssertionError("not reached")

    with pytest.raises(RuntimeError, match="--worker-class trio"):
        asyncio.run(asgi({"type": "http", "path": "/"}, receive, send))


# ---------------------------------------------------------------- the transport alone


async def test_abort_ends_a_blocked_receive_and_waiting_sends() -> None:
    blocked = trio.Event()
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        sent.append(message)
        blocked.set()
        await trio.sleep_forever()  # a peer that does not read

    transport = AsgiTransport(receive, send)
    errors: list[TransportClosed] = []

    async def expect_closed(fn: Any, *args: Any) -> None:
        with pytest.raises(TransportClosed) as closed:
            await fn(*args)
        errors.append(closed.value)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect_closed, transport.receive)
            nursery.start_soon(expect_closed, transport.send, "first")
            await blocked.wait()
            nursery.start_soon(expect_closed, transport.send, "second")  # waits its turn
            await trio.testing.wait_all_tasks_blocked()
            await transport.abort()
        assert [e.code for e in errors] == [1006, 1006, 1006]
        assert [m["text"] for m in sent] == ["first"]
        with pytest.raises(TransportClosed):
            await transport.send("after")
        await transport.close(1000, "")  # returns at once: the transport has ended


# ---------------------------------------------------------------- the documented example


async def test_the_example_app_as_hypercorn_serves_it() -> None:
    # examples/asgi_app.py as `hypercorn --worker-class trio examples.asgi_app:asgi` runs it
    # (its module-level registry runs once: this is its only test).
    from examples.asgi_app import asgi, registry

    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(asgi) as served:
            assert registry.running
            health = await _raw_http(served.port, _get("/health"))
            assert health.startswith(b"HTTP/1.1 200") and health.endswith(b"\r\n\r\nok")
            async with actorcore.connect(served.url, "counter", "docs") as counter:
                assert await counter.call("increment", 5) == 5
        assert not registry.running


async def test_the_read_loop_takes_over_from_a_close_that_gave_up() -> None:
    # close() reads for the peer's answer first, the read loop waits for its turn; the
    # close's wait is cut (its close_timeout): the read loop must then read, and see the
    # disconnect when it comes.
    to_app, from_peer = trio.open_memory_channel[dict[str, Any]](10)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)
        await trio.lowlevel.checkpoint()

    transport = AsgiTransport(from_peer.receive, send)
    got: list[int] = []

    async def read_loop() -> None:
        with pytest.raises(TransportClosed) as closed:
            while True:
                await transport.receive()
        got.append(closed.value.code)

    close_wait = trio.CancelScope()

    async def closing() -> None:
        with close_wait:
            await transport.close(1000, "bye")

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(closing)
            await trio.testing.wait_all_tasks_blocked()  # close() reads for the answer
            assert sent == [{"type": "websocket.close", "code": 1000, "reason": "bye"}]
            nursery.start_soon(read_loop)
            await trio.testing.wait_all_tasks_blocked()  # the read loop waits its turn
            close_wait.cancel()  # the close gives up
            await trio.testing.wait_all_tasks_blocked()
            await to_app.send({"type": "websocket.receive", "text": "late"})
            await to_app.send({"type": "websocket.disconnect", "code": 1000})
    assert got == [1000]
