"""actorcore as an envoy of a real Rivet engine: registration, get-or-create by key through
the gateway from a plain WebSocket client, actions, sleep and wake as the next generation
with the state kept in the engine, destroy, and the close codes a client sees."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

import actorcore
from actorcore import ActorContext, ActorOptions
from actorcore.engine.admin import EngineAdmin
from actorcore.engine.link import EnvoyOptions
from actorcore.engine.runtime import EngineRuntime
from actorcore.registry import host_of

from .._clients import tcp_websocket
from .conftest import Engine, start_engine, stop_engine

#: Bound on each test (an engine round trip takes milliseconds; starts tens of them).
TEST_TIMEOUT = 60


class Tally(actorcore.Actor):
    options = ActorOptions(sleep_timeout=3600)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, Any]:
        return {"count": 0, "wakes": []}

    async def on_wake(self, ctx: ActorContext) -> None:
        ctx.state["wakes"].append(ctx.generation)

    @actorcore.action
    async def add(self, ctx: ActorContext, n: int) -> int:
        ctx.state["count"] += n
        return int(ctx.state["count"])

    @actorcore.action
    async def save(self, ctx: ActorContext) -> None:
        await ctx.save_state()

    @actorcore.action
    async def info(self, ctx: ActorContext) -> dict[str, Any]:
        return {"generation": ctx.generation, "wakes": ctx.state["wakes"], "id": ctx.actor_id}


@asynccontextmanager
async def envoy(engine: Engine, pool: str) -> AsyncIterator[EngineRuntime]:
    registry = actorcore.Registry([Tally])
    runtime = EngineRuntime(registry, EnvoyOptions(url=engine.url, pool=pool))
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        try:
            yield runtime
        finally:
            registry.request_shutdown()


def gateway(
    engine: Engine, pool: str, key: str, path: str = "connect"
) -> AbstractAsyncContextManager[WebSocketConnection]:
    """A plain WebSocket client of the actor ``tally``/``key`` through the engine's gateway
    (get-or-create by key, in ``pool``)."""
    resource = (
        f"/gateway/tally/{path}?rvt-namespace=default&rvt-method=getOrCreate"
        f"&rvt-runner={pool}&rvt-key={key}&rvt-crash-policy=sleep"
    )
    port = int(engine.url.rsplit(":", 1)[1])
    return tcp_websocket(port, resource, subprotocols=["rivet"])


async def call(ws: WebSocketConnection, frame_id: int, name: str, *args: Any) -> Any:
    await ws.send_message(
        json.dumps({"type": "action", "id": frame_id, "name": name, "args": args})
    )
    while True:
        frame = json.loads(await ws.get_message())
        if frame.get("id") == frame_id:
            assert frame["type"] == "action_result", frame
            return frame["output"]


async def test_an_envoy_registers_and_serves_actions_through_the_gateway(engine: Engine) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with envoy(engine, "p-actions") as runtime:
            envoys = await EngineAdmin(engine.url).envoys("default")
            mine = [e for e in envoys if e.get("envoy_key") == runtime.options.envoy_key]
            assert mine, envoys
            assert "actorcore" in json.dumps(mine[0])
            async with gateway(engine, "p-actions", "a") as ws:
                init = json.loads(await ws.get_message())
                assert init["type"] == "init" and init["generation"] == 1
                assert await call(ws, 1, "add", 2) == 2
                assert await call(ws, 2, "add", 3) == 5
                info = await call(ws, 3, "info")
                assert info["generation"] == 1 and info["id"] == init["actor_id"]
            assert runtime.link.stats.commands >= 1


async def test_sleep_then_wake_is_the_next_generation_with_the_state_kept(engine: Engine) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with envoy(engine, "p-sleep") as runtime:
            async with gateway(engine, "p-sleep", "s") as ws:
                init = json.loads(await ws.get_message())
                actor_id = init["actor_id"]
                assert await call(ws, 1, "add", 7) == 7
                # The registry's sleep becomes an intent; the engine's stop carries it out, and
                # the connection gets the sleep close.
                await runtime.registry.sleep(actor_id)
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed as closed:
                    assert closed.reason.code == 1001, closed.reason
                    assert closed.reason.reason == "actor.sleeping"
            assert host_of(runtime.registry).entry(actor_id) is None or (
                runtime.registry.lifecycle(actor_id) is actorcore.LifecycleState.ASLEEP
            )
            async with gateway(engine, "p-sleep", "s") as ws:
                init = json.loads(await ws.get_message())
                assert init["actor_id"] == actor_id
                assert init["generation"] == 2
                assert await call(ws, 1, "add", 1) == 8
                info = await call(ws, 2, "info")
                assert info["wakes"] == [1, 2]
            assert runtime.store.stale_writes == 0


async def test_destroy_goes_through_the_engine(engine: Engine) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with envoy(engine, "p-destroy") as runtime:
            async with gateway(engine, "p-destroy", "d") as ws:
                init = json.loads(await ws.get_message())
                actor_id = init["actor_id"]
                await call(ws, 1, "add", 1)
                await runtime.registry.destroy(actor_id)
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed as closed:
                    assert (closed.reason.code, closed.reason.reason) == (1000, "actor.destroyed")
            admin = EngineAdmin(engine.url)
            while True:
                actors = {a["actor_id"]: a for a in await admin.actors("default", "tally")}
                if actors.get(actor_id, {}).get("destroy_ts") or actor_id not in actors:
                    break
                await trio.sleep(0.05)


class Echo(actorcore.Actor):
    async def on_ws_message(self, ctx: ActorContext, conn: actorcore.Conn, message: Any) -> None:
        await conn.send(message)


async def test_the_python_client_reaches_actors_through_the_gateway_and_follows_a_sleep(
    engine: Engine,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with envoy(engine, "p-client") as runtime:
            url = engine.ws
            gateway_of = actorcore.Gateway(pool="p-client")
            async with actorcore.connect(url, "tally", "c", gateway=gateway_of) as actor:
                assert await actor.call("add", 4) == 4
                first = actor.generation
                await runtime.registry.sleep(actor.actor_id)
                # 1001 actor.sleeping: the client reconnects and the engine starts the next
                # generation, with the state kept.
                try:
                    total = await actor.call("add", 1)
                except actorcore.ActorStopping:
                    # Sent before the client saw the close: not delivered (a finalizing
                    # generation takes no message), so sending it again is safe.
                    total = await actor.call("add", 1)
                assert total == 5
                assert actor.statistics().closes_by_code.get(1001) == 1
                assert actor.generation == first + 1
            # A write of a generation that has ended is refused before it leaves the process.
            with pytest.raises(actorcore.StaleGeneration):
                await runtime.store.save(actor.actor_id, first, b'{"count": 0, "wakes": []}')
            assert runtime.store.stale_writes == 1


async def test_raw_websockets_and_close_codes_through_the_gateway(engine: Engine) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        registry = actorcore.Registry([Tally, Echo])
        runtime = EngineRuntime(registry, EnvoyOptions(url=engine.url, pool="p-raw"))
        port = int(engine.url.rsplit(":", 1)[1])
        query = "rvt-namespace=default&rvt-method=getOrCreate&rvt-runner=p-raw&rvt-key=r"
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            async with tcp_websocket(
                port,
                f"/gateway/echo/ws/room?{query}&rvt-crash-policy=sleep",
                subprotocols=["rivet"],
            ) as ws:
                for message in ("text", b"\x00binary"):
                    await ws.send_message(message)
                    assert await ws.get_message() == message
            # A malformed protocol frame: 1008 protocol.invalid_message, as on our listener.
            async with gateway(engine, "p-raw", "bad") as ws:
                await ws.get_message()  # init
                await ws.send_message("{not json")
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
                assert (closed.value.reason.code, closed.value.reason.reason) == (
                    1008,
                    "protocol.invalid_message",
                )
            registry.request_shutdown()


async def test_an_engine_restart_while_an_envoy_runs_reconnects_and_runs_nothing_twice(
    tmp_path: Path,
) -> None:
    own = start_engine(tmp_path)
    try:
        with trio.fail_after(TEST_TIMEOUT):
            async with envoy(own, "p-restart") as runtime:
                async with gateway(own, "p-restart", "r") as ws:
                    init = json.loads(await ws.get_message())
                    actor_id = init["actor_id"]
                    assert await call(ws, 1, "add", 1) == 1
                    assert await call(ws, 2, "save") is None
                await trio.to_thread.run_sync(stop_engine, own)
                own = await trio.to_thread.run_sync(start_engine, own.folder, own.ports)
                await runtime.link.wait_connects(2)
                async with gateway(own, "p-restart", "r") as ws:
                    init = json.loads(await ws.get_message())
                    assert init["actor_id"] == actor_id
                    total = await call(ws, 1, "add", 1)
                    info = await call(ws, 2, "info")
                assert total == 2, "the state survived the restart, no change applied twice"
                # No generation started twice, and none ran beside another.
                assert info["wakes"] == sorted(set(info["wakes"])), info
                assert runtime.store.stale_writes == 0
    finally:
        await trio.to_thread.run_sync(stop_engine, own)


async def test_actors_spread_over_two_envoys_of_one_pool(engine: Engine) -> None:
    """The engine places the pool's actors on both envoys; each actor runs on exactly one."""
    with trio.fail_after(TEST_TIMEOUT):
        async with envoy(engine, "p-spread") as first, envoy(engine, "p-spread") as second:
            served: dict[str, str] = {}
            for i in range(12):
                async with gateway(engine, "p-spread", f"s{i}") as ws:
                    init = json.loads(await ws.get_message())
                    await call(ws, 1, "add", i)
                    served[init["actor_id"]] = f"s{i}"
            on_first = {a for a in served if first.registry.lifecycle(a) is not None}
            on_second = {a for a in served if second.registry.lifecycle(a) is not None}
            assert on_first and on_second, (len(on_first), len(on_second))
            assert on_first.isdisjoint(on_second)
            assert on_first | on_second == set(served)
