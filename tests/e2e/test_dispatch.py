"""The WebSocket dispatcher end to end: every close code, the check points, hibernation.

Each test runs twice: over real loopback sockets (``tcp``) and over in-memory streams
(``memory``), through the same trio-websocket adapter. Waits are bounded; timeouts that matter
are made small so the real clock stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

import actorcore
from actorcore import ActorContext, ActorOptions, Conn, LifecycleState
from actorcore.testing import (
    MemoryServer,
    expect_close,
    receive_json,
    serve_in_memory,
    serve_loopback,
)

S = LifecycleState


@pytest.fixture(params=["tcp", "memory"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def served(
    transport: str, actors: list[type[actorcore.Actor]], **kwargs: Any
) -> AsyncIterator[MemoryServer]:
    registry = actorcore.Registry(actors, **kwargs)
    serve = serve_loopback if transport == "tcp" else serve_in_memory
    with trio.fail_after(30):
        async with serve(registry) as server:
            yield server


async def send_json(ws: WebSocketConnection, frame: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(frame))


async def call(ws: WebSocketConnection, action_id: int, name: str, *args: Any) -> Any:
    await send_json(ws, {"type": "action", "id": action_id, "name": name, "args": list(args)})
    with trio.fail_after(10):
        reply = await receive_json(ws)
    assert reply["id"] == action_id, reply
    return reply


async def wait_for_state(registry: actorcore.Registry, actor_id: str, state: S) -> None:
    with trio.fail_after(10):
        while registry.lifecycle(actor_id) is not state:  # noqa: ASYNC110 - test polling
            await trio.sleep(0.001)


class Room(actorcore.Actor):
    """A protocol actor: counting, broadcasting, connection hooks recorded in ``events``."""

    name = "room"
    events: list[str] = []  # reset per test

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"count": 0}

    async def create_conn_state(self, ctx: ActorContext, params: Any) -> Any:
        return {"nick": (params or {}).get("nick", "anon"), "seen": 0}

    async def on_before_connect(self, ctx: ActorContext, params: Any, request: Any) -> None:
        if (params or {}).get("token") == "bad":
            raise actorcore.Forbidden()
        if (params or {}).get("token") == "worse":
            raise actorcore.Forbidden("auth.token_expired")

    async def on_connect(self, ctx: ActorContext, conn: Conn) -> None:
        self.events.append(f"connect:{conn.state['nick']}:{ctx.generation}")

    async def on_disconnect(self, ctx: ActorContext, conn: Conn) -> None:
        self.events.append(f"disconnect:{conn.state['nick']}:{ctx.generation}")

    async def on_wake(self, ctx: ActorContext) -> None:
        self.events.append(f"wake:{ctx.generation}")

    @actorcore.action
    async def increment(self, ctx: ActorContext, by: int = 1) -> dict[str, Any]:
        ctx.state["count"] += by
        conn = ctx.conn
        assert conn is not None
        conn.state["seen"] += 1
        ctx.broadcast("changed", ctx.state["count"])
        return {
            "count": ctx.state["count"],
            "generation": ctx.generation,
            "seen": conn.state["seen"],
        }

    @actorcore.action
    async def increment_later(self, ctx: ActorContext, by: int = 1) -> int:
        """Awaits first, so it runs in a task of its own (await-free actions run inline)."""
        await trio.lowlevel.checkpoint()
        ctx.state["count"] += by
        return int(ctx.state["count"])

    @actorcore.action
    async def fail(self, ctx: ActorContext, kind: str) -> None:
        if kind == "user":
            raise actorcore.UserError("nope", code="room.nope")
        raise RuntimeError("secret detail")


class Echo(actorcore.Actor):
    """A raw actor; non-hibernatable."""

    name = "echo"
    options = ActorOptions(max_message_size=1024)
    events: list[str] = []

    async def on_ws_open(self, ctx: ActorContext, conn: Conn) -> None:
        self.events.append(f"open:{ctx.generation}")

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        if message == "crash":
            raise RuntimeError("handler crashed")
        self.events.append(f"msg:{message!r}:{ctx.generation}")
        await conn.send(message)

    async def on_ws_close(self, ctx: ActorContext, conn: Conn, code: int, reason: str) -> None:
        self.events.append(f"close:{code}:{reason}")


class HibernatingEcho(Echo):
    """A raw actor whose sockets stay open while it sleeps."""

    name = "hecho"
    options = ActorOptions(hibernatable_websockets=True, hibernation_buffer=4)


@pytest.fixture(autouse=True)
def _reset_events() -> None:
    Room.events = []
    Echo.events = []


# --------------------------------------------------------------------------- protocol basics


async def test_protocol_round_trip_events_and_errors(transport: str) -> None:
    async with (
        served(transport, [Room]) as server,
        server.connect("/actors/room/r1/connect?params=%7B%22nick%22%3A%22ann%22%7D") as ws,
    ):
        init = await receive_json(ws)
        assert init["type"] == "init" and init["generation"] == 1
        assert set(init) == {"type", "actor_id", "conn_id", "generation", "resume_token", "resumed"}
        assert init["resumed"] is False
        await send_json(ws, {"type": "subscribe", "event": "changed"})
        await send_json(ws, {"type": "action", "id": 7, "name": "increment", "args": [2]})
        assert await receive_json(ws) == {"type": "event", "name": "changed", "args": [2]}
        reply = await receive_json(ws)
        assert reply == {
            "type": "action_result",
            "id": 7,
            "output": {"count": 2, "generation": 1, "seen": 1},
        }
        reply = await call(ws, 8, "missing")
        assert reply == {
            "type": "error",
            "id": 8,
            "code": "actor.action_not_found",
            "message": "actor 'room' has no action 'missing'",
            "retryable": False,
        }
        reply = await call(ws, 9, "fail", "user")
        assert reply["code"] == "room.nope" and reply["message"] == "nope"
        reply = await call(ws, 10, "fail", "internal")
        assert reply["code"] == "actor.internal_error"
        assert "secret" not in reply["message"]
        await send_json(ws, {"type": "unsubscribe", "event": "changed"})
        reply = await call(ws, 11, "increment")
        assert reply["type"] == "action_result", "no event frame once unsubscribed"
        assert Room.events == ["wake:1", "connect:ann:1"]


async def test_raw_echo(transport: str) -> None:
    async with served(transport, [Echo]) as server, server.connect("/actors/echo/e/ws/sub") as ws:
        await ws.send_message("hello")
        assert await ws.get_message() == "hello"
        await ws.send_message(b"\x00bin")
        assert await ws.get_message() == b"\x00bin"


# --------------------------------------------------------------------------- close-code table


@pytest.mark.parametrize(
    "path",
    [
        "/actors/nope/k/connect",
        "/actors/by-id/0123456789abcdef/connect",
        "/actors/by-id/0123456789abcdef/ws",
        "/actors/room/k/bogus",
        "/nothing",
        "/actors/room//connect",
        "/actors/room/%ff/connect",
    ],
)
async def test_not_found_closes_1008(transport: str, path: str) -> None:
    async with served(transport, [Room]) as server, server.connect(path) as ws:
        assert await expect_close(ws) == (1008, "actor.not_found")


async def test_forbidden_closes_1008(transport: str) -> None:
    async with served(transport, [Room]) as server:
        async with server.connect('/actors/room/k/connect?params={"token":"bad"}') as ws:
            assert await expect_close(ws) == (1008, "auth.forbidden")
        async with server.connect('/actors/room/k/connect?params={"token":"worse"}') as ws:
            assert await expect_close(ws) == (1008, "auth.token_expired")


async def test_ready_timeout_closes_1013(transport: str) -> None:
    class Slow(Room):
        name = "slow"
        options = ActorOptions(ready_timeout=0.2, hook_timeout=1)

        async def on_wake(self, ctx: ActorContext) -> None:
            await trio.sleep(30)

    async with served(transport, [Slow]) as server, server.connect("/actors/slow/k/connect") as ws:
        assert await expect_close(ws) == (1013, "actor.ready_timeout")


async def test_start_failed_closes_1011(transport: str) -> None:
    class Broken(Room):
        name = "broken"

        async def on_wake(self, ctx: ActorContext) -> None:
            raise RuntimeError("cannot wake")

    async with served(transport, [Broken]) as server:
        async with server.connect("/actors/broken/k/connect") as ws:
            assert await expect_close(ws) == (1011, "actor.start_failed")
        async with server.connect("/actors/broken/k/ws") as ws:
            assert await expect_close(ws) == (1011, "actor.start_failed")


async def test_hook_raising_closes_1011_and_server_keeps_serving(transport: str) -> None:
    class BadConnect(Room):
        name = "badconnect"

        async def on_connect(self, ctx: ActorContext, conn: Conn) -> None:
            raise RuntimeError("on_connect bug")

    async with served(transport, [BadConnect, Echo]) as server:
        async with server.connect("/actors/badconnect/k/connect") as ws:
            assert await expect_close(ws) == (1011, "actor.internal_error")
        async with server.connect("/actors/echo/k/ws") as other:
            async with server.connect("/actors/echo/k/ws") as crashing:
                await crashing.send_message("crash")
                assert await expect_close(crashing) == (1011, "actor.internal_error")
            await other.send_message("still here")
            assert await other.get_message() == "still here"


async def test_a_crashing_connection_task_closes_only_its_connection_with_1011(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer and action tasks run in the nursery trio-websocket opens per connection; a bug
    in one (simulated here) closes that connection with 1011 and nothing else."""
    send_frame = Conn.send_frame

    async def buggy_send_frame(self: Conn, frame: Any) -> None:
        # The answer to action 1 (increment_later, which awaits: an action task) fails to go
        # out: a bug in the action task after the action ran.
        if isinstance(frame, str) and json.loads(frame).get("id") == 1:
            raise RuntimeError("bug in an action task")
        await send_frame(self, frame)

    monkeypatch.setattr(Conn, "send_frame", buggy_send_frame)
    # Bounded well below the 15 s grace: the crashed action's reserved work must be released,
    # or the drain at the end waits for it until the grace deadline.
    with trio.fail_after(5):
        async with (
            served(transport, [Room]) as server,
            server.connect("/actors/room/k/connect") as other,
        ):
            assert (await receive_json(other))["type"] == "init"
            async with server.connect("/actors/room/k/connect") as crashing:
                assert (await receive_json(crashing))["type"] == "init"
                await send_json(
                    crashing,
                    {"type": "action", "id": 1, "name": "increment_later", "args": [13]},
                )
                assert await expect_close(crashing) == (1011, "actor.internal_error")
            reply = await call(other, 2, "increment", 1)
            assert reply["output"]["count"] == 14, reply  # action 1 ran; its answer failed

    monkeypatch.undo()  # the answers go out again
    run_writer = Conn.run_writer

    async def buggy_run_writer(self: Conn, *args: Any) -> Any:
        if self.params == {"nick": "w"}:
            raise RuntimeError("bug in a writer task")
        return await run_writer(self, *args)

    monkeypatch.setattr(Conn, "run_writer", buggy_run_writer)
    async with served(transport, [Room]) as server:
        # The init frame is queued, so the writer is the first task the connection starts.
        path = '/actors/room/k/connect?params={"nick":"w"}'
        async with server.connect(path) as crashing:
            assert await expect_close(crashing) == (1011, "actor.internal_error")
        async with server.connect("/actors/room/k/connect") as other:
            assert (await receive_json(other))["type"] == "init"
            assert (await call(other, 1, "increment", 2))["output"]["count"] == 2


async def test_message_too_large_closes_1009(transport: str) -> None:
    async with served(transport, [Echo]) as server, server.connect("/actors/echo/k/ws") as ws:
        await ws.send_message("x" * 1025)
        assert await expect_close(ws) == (1009, "message.too_large")
    assert not any(e.startswith("msg:") for e in Echo.events), "never delivered"


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '{"type": "teleport"}',
        '{"type": "action", "id": -1, "name": "increment"}',
        '{"type": "action", "id": 1e400, "name": "increment"}',
        '{"type": "action", "id": 1, "name": "increment", "args": {}}',
        '{"type": "action", "id": 1}',
        '{"type": "subscribe"}',
        b'{"type": "action", "id": 1, "name": "increment"}',
        "[" * 50_000,  # deep nesting: RecursionError in the parser
    ],
)
async def test_invalid_protocol_frame_closes_1008(transport: str, frame: str | bytes) -> None:
    async with served(transport, [Room]) as server, server.connect("/actors/room/k/connect") as ws:
        await receive_json(ws)
        await ws.send_message(frame)
        assert await expect_close(ws) == (1008, "protocol.invalid_message")


async def test_bad_params_closes_1008(transport: str) -> None:
    async with (
        served(transport, [Room]) as server,
        server.connect("/actors/room/k/connect?params={oops") as ws,
    ):
        assert await expect_close(ws) == (1008, "protocol.invalid_message")


async def test_sleep_finalize_closes_non_hibernatable_1001(transport: str) -> None:
    async with served(transport, [Echo]) as server:
        registry = server.registry
        async with server.connect("/actors/echo/k/ws") as ws:
            await ws.send_message("a")
            assert await ws.get_message() == "a"
            handle = await registry.get("echo", "k")
            await registry.sleep(handle.actor_id)
            assert await expect_close(ws) == (1001, "actor.sleeping")
        assert "close:1001:actor.sleeping" in Echo.events
        stats = registry.statistics()
        assert stats.closes_by_code.get(1001) == 1


@pytest.mark.parametrize("pause_gc", [True, False])
async def test_finalize_of_many_connections_pauses_the_garbage_collector(
    transport: str, monkeypatch: pytest.MonkeyPatch, pause_gc: bool
) -> None:
    """With ``pause_gc=True``, closing GC_PAUSE_CLOSES or more connections at once runs with
    the cyclic collector off (its full passes dominated a 10,000-connection finalize); it is
    back on afterwards, and a smaller finalize leaves it alone. By default (the collector is
    the application's) it is never touched."""
    import gc

    from actorcore import generation

    monkeypatch.setattr(generation, "GC_PAUSE_CLOSES", 3)
    seen: list[bool] = []

    class Watching(Echo):
        name = "watching"

        async def on_ws_close(self, ctx: ActorContext, conn: Conn, code: int, reason: str) -> None:
            seen.append(gc.isenabled())

    async with served(transport, [Watching], pause_gc=pause_gc) as server:
        registry = server.registry
        for count, paused in ((3, pause_gc), (2, False)):
            seen.clear()
            async with contextlib.AsyncExitStack() as stack:
                sockets = [
                    await stack.enter_async_context(server.connect("/actors/watching/k/ws"))
                    for _ in range(count)
                ]
                for ws in sockets:
                    await ws.send_message("live")
                    assert await ws.get_message() == "live"
                handle = await registry.get("watching", "k")
                assert gc.isenabled()
                await registry.sleep(handle.actor_id)
                for ws in sockets:
                    assert await expect_close(ws) == (1001, "actor.sleeping")
            assert seen == [not paused] * count, (count, seen)
            assert gc.isenabled(), "restored after the finalize"


async def test_destroy_closes_every_connection_1000(transport: str) -> None:
    async with served(transport, [Room, HibernatingEcho]) as server:
        registry = server.registry
        async with (
            server.connect("/actors/room/k/connect") as ws,
            server.connect("/actors/hecho/k/ws") as raw,
        ):
            init = await receive_json(ws)
            await raw.send_message("x")
            await raw.get_message()
            await registry.destroy(init["actor_id"])
            assert await expect_close(ws) == (1000, "actor.destroyed")
            handle = await registry.get("hecho", "k")
            await registry.destroy(handle.actor_id)
            assert await expect_close(raw) == (1000, "actor.destroyed")
        async with server.connect(f"/actors/by-id/{init['actor_id']}/connect") as ws:
            assert (await expect_close(ws))[0] in (1000, 1008)


async def test_connect_to_destroying_actor_closes_1000(transport: str) -> None:
    class SlowDestroy(Room):
        name = "slowdestroy"

        async def on_destroy(self, ctx: ActorContext) -> None:
            await trio.sleep(1)

    async with served(transport, [SlowDestroy]) as server:
        registry = server.registry
        handle = await registry.get_or_create("slowdestroy", "k")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registry.destroy, handle.actor_id)
            await wait_for_state(registry, handle.actor_id, S.DESTROY_GRACE)
            async with server.connect("/actors/slowdestroy/k/connect") as ws:
                assert await expect_close(ws) == (1000, "actor.destroyed")
            async with server.connect(f"/actors/by-id/{handle.actor_id}/ws") as ws:
                assert await expect_close(ws) == (1000, "actor.destroyed")


async def test_shutdown_closes_1012_and_saves_state(transport: str) -> None:
    store = actorcore.MemoryStore()
    async with served(transport, [Room, Echo], store=store) as server:
        registry = server.registry
        async with (
            server.connect("/actors/room/k/connect") as ws,
            server.connect("/actors/echo/k/ws") as raw,
        ):
            init = await receive_json(ws)
            assert (await call(ws, 1, "increment", 5))["output"]["count"] == 5
            await raw.send_message("x")
            await raw.get_message()
            await registry.shutdown()
            assert await expect_close(ws) == (1012, "runtime.shutdown")
            assert await expect_close(raw) == (1012, "runtime.shutdown")
    async with actorcore.store.open_store(store):
        record = await store.get_by_id(init["actor_id"])
    assert record is not None and json.loads(record.state or b"") == {"count": 5}


async def test_shutdown_lets_in_flight_actions_answer_before_1012(transport: str) -> None:
    """A drain must not close a connection under an action that is about to answer: the
    client would not know whether its action ran. The answer comes first, then 1012; frames
    read after the drain began are not started."""
    started = trio.Event()

    class Slow(Room):
        name = "slowroom"

        @actorcore.action
        async def slow(self, ctx: ActorContext) -> str:
            started.set()
            await trio.sleep(0.3)
            ctx.state["count"] += 1
            return "answered"

    store = actorcore.MemoryStore()
    async with served(transport, [Slow], store=store) as server:
        registry = server.registry
        async with server.connect("/actors/slowroom/k/connect") as ws:
            init = await receive_json(ws)
            await ws.send_message(json.dumps({"type": "action", "id": 1, "name": "slow"}))
            with trio.fail_after(5):
                await started.wait()
            await registry.shutdown()
            reply = await receive_json(ws)
            assert reply == {"type": "action_result", "id": 1, "output": "answered"}
            assert await expect_close(ws) == (1012, "runtime.shutdown")
    async with actorcore.store.open_store(store):
        record = await store.get_by_id(init["actor_id"])
    assert record is not None and json.loads(record.state or b"") == {"count": 1}


async def test_hibernation_buffer_full_closes_1013(transport: str) -> None:
    class SlowWake(HibernatingEcho):
        name = "slowwake"
        options = ActorOptions(hibernatable_websockets=True, hibernation_buffer=3)

        async def on_wake(self, ctx: ActorContext) -> None:
            if ctx.generation > 1:
                await trio.sleep(0.5)

    async with served(transport, [SlowWake]) as server:
        registry = server.registry
        async with server.connect("/actors/slowwake/k/ws") as ws:
            await ws.send_message("a")
            assert await ws.get_message() == "a"
            handle = await registry.get("slowwake", "k")
            await registry.sleep(handle.actor_id)
            with contextlib.suppress(ConnectionClosed):
                for i in range(10):
                    await ws.send_message(f"m{i}")
            assert await expect_close(ws) == (1013, "actor.overloaded")


async def test_connection_limit_closes_1013(transport: str) -> None:
    registry = actorcore.Registry([Echo])
    serve = serve_loopback if transport == "tcp" else serve_in_memory
    with trio.fail_after(30):
        async with (
            serve(registry, max_connections=2) as server,
            server.connect("/actors/echo/a/ws") as one,
            server.connect("/actors/echo/b/ws") as two,
        ):
            await one.send_message("1")
            await two.send_message("2")
            await one.get_message()
            await two.get_message()
            async with server.connect("/actors/echo/c/ws") as three:
                assert await expect_close(three) == (1013, "actor.overloaded")


# --------------------------------------------------------------------------- check points


async def test_before_setup_holds_connection_until_actor_is_awake(transport: str) -> None:
    class SlowWake(Room):
        name = "slowwake"

        async def on_wake(self, ctx: ActorContext) -> None:
            await trio.sleep(0.3)
            self.events.append(f"wake:{ctx.generation}")

    async with (
        served(transport, [SlowWake]) as server,
        server.connect("/actors/slowwake/k/connect") as ws,
    ):
        init = await receive_json(ws)
        assert init["generation"] == 1
        assert Room.events[:2] == ["wake:1", "connect:anon:1"]


async def test_on_open_recheck_runs_setup_again_in_next_generation(transport: str) -> None:
    calls: list[int] = []

    class Racy(Room):
        name = "racy"

        async def on_before_connect(self, ctx: ActorContext, params: Any, request: Any) -> None:
            calls.append(ctx.generation)
            if ctx.generation == 1:
                ctx.sleep()  # the state changes while setup awaits
                await trio.sleep(0.05)

    async with served(transport, [Racy]) as server, server.connect("/actors/racy/k/connect") as ws:
        init = await receive_json(ws)
        assert init["generation"] == 2, "live only in a generation that passed check point 2"
        assert calls == [1, 2]
        assert Room.events == ["wake:1", "wake:2", "connect:anon:2"]


async def test_message_to_non_hibernatable_conn_during_finalize_is_not_delivered(
    transport: str,
) -> None:
    class Stubborn(Echo):
        name = "stubborn"
        options = ActorOptions(sleep_grace_period=0.1, close_timeout=1.0)

        @actorcore.action
        async def stubborn(self, ctx: ActorContext) -> None:
            # Ignores the grace deadline for a while: finalize starts before it unwinds.
            with trio.CancelScope(shield=True):
                await trio.sleep(0.5)

    async with served(transport, [Stubborn]) as server:
        registry = server.registry
        async with server.connect("/actors/stubborn/k/ws") as ws:
            await ws.send_message("a")
            assert await ws.get_message() == "a"
            handle = await registry.get("stubborn", "k")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_ignore_stopping, handle.call("stubborn"))
                await trio.sleep(0.01)
                nursery.start_soon(registry.sleep, handle.actor_id)
                await wait_for_state(registry, handle.actor_id, S.SLEEP_FINALIZE)
                await ws.send_message("late")  # check point 3: not delivered
                assert await expect_close(ws) == (1001, "actor.sleeping")
        assert "msg:'a':1" in Echo.events
        assert not any(e.startswith("msg:'late'") for e in Echo.events)


async def _ignore_stopping(coro: Any) -> None:
    with contextlib.suppress(actorcore.ActorStopping):
        await coro


async def test_held_connection_lands_on_next_generation(transport: str) -> None:
    class SlowSleep(Room):
        name = "slowsleep"

        async def on_sleep(self, ctx: ActorContext) -> None:
            await trio.sleep(0.3)

    async with served(transport, [SlowSleep]) as server:
        registry = server.registry
        handle = await registry.get_or_create("slowsleep", "k")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registry.sleep, handle.actor_id)
            await wait_for_state(registry, handle.actor_id, S.SLEEP_GRACE)
            async with server.connect("/actors/slowsleep/k/connect") as ws:
                init = await receive_json(ws)
                assert init["generation"] == 2
                reply = await call(ws, 1, "increment")
                assert reply["output"]["generation"] == 2


# --------------------------------------------------------------------------- hibernation


async def test_protocol_connection_hibernates_across_two_sleeps(transport: str) -> None:
    async with served(transport, [Room]) as server:
        registry = server.registry
        async with server.connect('/actors/room/k/connect?params={"nick":"bo"}') as ws:
            init = await receive_json(ws)
            actor_id = init["actor_id"]
            await send_json(ws, {"type": "subscribe", "event": "changed"})
            results: dict[int, Any] = {}
            events: list[int] = []
            next_id = 1
            for _ in range(2):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(registry.sleep, actor_id)
                    # Messages sent while the sleep is under way: all answered exactly once.
                    for _ in range(5):
                        await send_json(ws, {"type": "action", "id": next_id, "name": "increment"})
                        next_id += 1
                        await trio.lowlevel.checkpoint()
                    with trio.fail_after(10):
                        while len(results) < next_id - 1:
                            frame = await receive_json(ws)
                            if frame["type"] == "event":
                                events.append(frame["args"][0])
                                continue
                            assert frame["type"] == "action_result", frame
                            assert frame["id"] not in results, "answered twice"
                            results[frame["id"]] = frame["output"]
                await registry.sleep(actor_id)
                assert registry.lifecycle(actor_id) is S.ASLEEP
            counts = [results[i]["count"] for i in sorted(results)]
            assert counts == list(range(1, 11)), "every message delivered once, in order"
            seen = [results[i]["seen"] for i in sorted(results)]
            assert seen == list(range(1, 11)), "conn.state survived the sleeps"
            assert events == list(range(1, 11)), "the subscription survived the sleeps"
            assert results[10]["generation"] >= 3
        # The client left while the actor slept: it wakes to run on_disconnect.
        with trio.fail_after(5):
            while not any(e.startswith("disconnect:") for e in Room.events):  # noqa: ASYNC110
                await trio.sleep(0.001)
        connects = [e for e in Room.events if e.startswith("connect:")]
        assert connects == ["connect:bo:1"], "on_connect ran once"
        disconnects = [e for e in Room.events if e.startswith("disconnect:")]
        assert len(disconnects) == 1, "on_disconnect only when the client left"


async def test_hibernatable_raw_socket_stays_open_and_wakes_actor(transport: str) -> None:
    async with served(transport, [HibernatingEcho]) as server:
        registry = server.registry
        async with server.connect("/actors/hecho/k/ws") as ws:
            await ws.send_message("one")
            assert await ws.get_message() == "one"
            handle = await registry.get("hecho", "k")
            for cycle in range(2):
                await registry.sleep(handle.actor_id)
                assert registry.lifecycle(handle.actor_id) is S.ASLEEP
                stats = registry.statistics()
                assert stats.hibernatable_connections == 1
                await ws.send_message(f"after-sleep-{cycle}")
                assert await ws.get_message() == f"after-sleep-{cycle}"
                assert registry.lifecycle(handle.actor_id) is S.STARTED
        assert Echo.events.count("open:1") == 1
        assert [e for e in Echo.events if e.startswith("open:")] == ["open:1"]


async def test_non_hibernatable_connection_keeps_actor_awake_hibernatable_does_not(
    transport: str,
) -> None:
    class QuickEcho(Echo):
        name = "quick"
        options = ActorOptions(sleep_timeout=0.2)

    class QuickRoom(Room):
        name = "quickroom"
        options = ActorOptions(sleep_timeout=0.2)

    async with served(transport, [QuickEcho, QuickRoom]) as server:
        registry = server.registry
        async with (
            server.connect("/actors/quick/k/ws") as raw,
            server.connect("/actors/quickroom/k/connect") as ws,
        ):
            await raw.send_message("x")
            await raw.get_message()
            init = await receive_json(ws)
            await trio.sleep(0.6)
            raw_handle = await registry.get("quick", "k")
            assert registry.lifecycle(raw_handle.actor_id) is S.STARTED
            assert registry.lifecycle(init["actor_id"]) is S.ASLEEP
            reply = await call(ws, 1, "increment")
            assert reply["output"]["generation"] == 2


async def test_statistics_and_logging(transport: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="actorcore")
    async with served(transport, [Room]) as server:
        registry = server.registry
        async with server.connect("/actors/room/k/connect") as ws:
            await receive_json(ws)
            await call(ws, 1, "increment")
            stats = registry.statistics()
            assert stats.connections == 1 and stats.hibernatable_connections == 1
            assert stats.messages_in >= 1 and stats.messages_out >= 2
            assert stats.actors_by_state == {"started": 1}
            await registry.shutdown()
            assert await expect_close(ws) == (1012, "runtime.shutdown")
        assert registry.statistics().closes_by_code == {1012: 1}
    assert any(getattr(r, "new_state", None) == "started" for r in caplog.records)
    assert any(getattr(r, "close_code", None) == 1012 for r in caplog.records)


async def test_actor_chosen_close_reaches_the_client(transport: str) -> None:
    class Closer(Echo):
        name = "closer"

        async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
            if message == "bad":
                with pytest.raises(ValueError, match="cannot be sent"):
                    await conn.close(1006, "")
                with pytest.raises(ValueError, match="ASCII"):
                    await conn.close(4000, "é")
            await conn.close(4001, "room.closed")

    async with served(transport, [Closer]) as server, server.connect("/actors/closer/k/ws") as ws:
        await ws.send_message("bad")
        assert await expect_close(ws) == (4001, "room.closed")
        # The hook runs once the server has the client's answer: wait for it before the
        # drain (a drain skips disconnect hooks).
        with trio.fail_after(5):
            while "close:4001:room.closed" not in Echo.events:  # noqa: ASYNC110
                await trio.sleep(0.001)
    assert "close:4001:room.closed" in Echo.events, "on_ws_close saw the actor's own close"
