"""``actorcore.asgi.app`` (issue 18) mounted in hypercorn's trio worker on loopback: calls,
events, hibernation, 1000 on destroy, 1012 on drain, and what is not an actorcore route.

Real clock and sockets; every wait is bounded by ``trio.fail_after``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

import actorcore
from actorcore import ActorContext, ActorOptions, LifecycleState
from actorcore.asgi import app
from actorcore.testing import wait_for_state

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
    async def nap(self, ctx: ActorContext) -> None:
        ctx.sleep()

    @actorcore.action
    async def close_room(self, ctx: ActorContext) -> None:
        ctx.destroy()


async def _not_found(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not used")


@asynccontextmanager
async def hypercorn_serving(registry: actorcore.Registry, **kwargs: Any) -> AsyncIterator[str]:
    """``app(registry)`` in hypercorn on 127.0.0.1 (a free port); yields ``ws://host:port``.
    The registry runs in the app's lifespan."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = None
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app(registry, **kwargs),
                config,
                shutdown_trigger=shutdown.wait,
                task_status=task_status,
            )
        )
        try:
            yield binds[0].replace("http://", "ws://")
        finally:
            shutdown.set()


async def test_calls_events_and_hibernation() -> None:
    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(registry) as url:
            assert registry.running, "the lifespan started the registry"
            async with actorcore.connect(url, "room", "lobby") as room:
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


async def test_destroy_closes_with_1000() -> None:
    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_serving(registry) as url,
            actorcore.connect(url, "room", "doomed") as room,
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
                hypercorn_serving(registry) as url,
                actorcore.connect(url, "room", "busy", reconnect=False) as room,
            ):
                assert await room.call("say", "hi") == 1
                await registry.shutdown()  # drain first, then the server stops
                await room.wait_finished()
                assert isinstance(room.final_error, actorcore.RuntimeShutdown)
                assert room.last_close is not None
                assert (room.last_close.code, room.last_close.reason) == (1012, "runtime.shutdown")


UPGRADE = (
    b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def _raw(url: str, request: bytes) -> bytes:
    """Send ``request`` over a plain TCP stream to the server at ``url``; the answer's head."""
    host, port = url.replace("ws://", "").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        return await stream.receive_some(4096)


async def test_what_is_not_an_actor_route() -> None:
    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(registry) as url:
            health = await _raw(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert health.startswith(b"HTTP/1.1 404")
            refused = await _raw(url, UPGRADE)  # a WebSocket elsewhere: refused, not upgraded
            assert refused.startswith(b"HTTP/1.1 403")
            # An actorcore route to an unknown actor: accepted, then the same close as
            # actorcore's own server gives.
            nobody = actorcore.connect(url, "nobody", "k", reconnect=False)
            with pytest.raises(actorcore.ActorNotFound):
                async with nobody:
                    pass
            assert nobody.last_close is not None
            assert (nobody.last_close.code, nobody.last_close.reason) == (1008, "actor.not_found")


async def test_a_fallback_app_gets_the_other_routes() -> None:
    seen: list[str] = []

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    registry = actorcore.Registry([Room])
    with trio.fail_after(TIMEOUT):
        async with hypercorn_serving(registry, fallback=fallback) as url:
            head = await _raw(url, b"GET /api/things HTTP/1.1\r\nHost: x\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 204")
            assert seen == ["/api/things"]
            async with actorcore.connect(url, "room", "side") as room:
                assert await room.call("say", "still served") == 1
