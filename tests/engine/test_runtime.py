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
async def envoy(
    engine: Engine, pool: str, actor: type[actorcore.Actor] | None = None
) -> AsyncIterator[EngineRuntime]:
    """An envoy of ``engine`` serving ``actor`` (this module's ``Tally``) in ``pool``."""
    registry = actorcore.Registry([actor or Tally])
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
    """The registry's sleep becomes an intent, the engine's stop carries it out; the protocol
    connection hibernates (the gateway holds it). A new connection wakes the actor as the
    next generation, and the held one comes back in it too."""
    with trio.fail_after(TEST_TIMEOUT):
        async with envoy(engine, "p-sleep") as runtime:
            async with gateway(engine, "p-sleep", "s") as held:
                init = json.loads(await held.get_message())
                actor_id = init["actor_id"]
                assert await call(held, 1, "add", 7) == 7
                await runtime.registry.sleep(actor_id)
                assert runtime.registry.lifecycle(actor_id) is actorcore.LifecycleState.ASLEEP
                async with gateway(engine, "p-sleep", "s") as ws:
                    init = json.loads(await ws.get_message())
                    assert init["actor_id"] == actor_id
                    assert init["generation"] == 2
                    assert await call(ws, 1, "add", 1) == 8
                    info = await call(ws, 2, "info")
                    assert info["wakes"] == [1, 2]
                # The held connection's next call goes to generation 2 (its init comes first).
                await held.send_message(
                    json.dumps({"type": "action", "id": 2, "name": "add", "args": [1]})
                )
                back = json.loads(await held.get_message())
                assert (back["type"], back["generation"]) == ("init", 2)
                answer = json.loads(await held.get_message())
                assert (answer["id"], answer["output"]) == (2, 9)
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


async def test_the_python_client_reaches_actors_through_the_gateway_across_a_sleep(
    engine: Engine,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with envoy(engine, "p-client") as runtime:
            url = engine.ws
            gateway_of = actorcore.Gateway(pool="p-client")
            # A first start through the engine can take seconds on a loaded 2-core host.
            async with actorcore.connect(
                url, "tally", "c", gateway=gateway_of, connect_timeout=30
            ) as actor:
                assert await actor.call("add", 4) == 4
                first = actor.generation
                await runtime.registry.sleep(actor.actor_id)
                # The connection hibernated: the next call wakes the next generation, on the
                # same connection (no close, no reconnect), with the state kept.
                assert await actor.call("add", 1) == 5
                assert actor.generation == first + 1
                assert actor.statistics().connects == 1
            # A write of a generation that has ended is refused before it leaves the process.
            with pytest.raises(actorcore.StaleGeneration):
                await runtime.store.save(actor.actor_id, first, b'{"count": 0, "wakes": []}')
            assert runtime.store.stale_writes == 1


async def ensure_placed(port: int, resource: str, *, raw: bool) -> None:
    """Open ``resource`` until its actor answers: the engine's own placement can time out on
    a loaded 2-core host (1011 ``pegboard.route_resolve_query_timeout``), which a client
    retries. The test's own connection then finds the actor placed."""
    while True:
        try:
            async with tcp_websocket(port, resource, subprotocols=["rivet"]) as ws:
                if raw:
                    await ws.send_message("warm")
                await ws.get_message()
                return
        except ConnectionClosed as closed:
            assert closed.reason.code == 1011, closed.reason


async def test_raw_websockets_and_close_codes_through_the_gateway(engine: Engine) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        registry = actorcore.Registry([Tally, Echo])
        runtime = EngineRuntime(registry, EnvoyOptions(url=engine.url, pool="p-raw"))
        port = int(engine.url.rsplit(":", 1)[1])
        query = "rvt-namespace=default&rvt-method=getOrCreate&rvt-runner=p-raw&rvt-key=r"
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            for resource, raw in (
                (f"/gateway/echo/ws/room?{query}&rvt-crash-policy=sleep", True),
                (f"/gateway/echo/ws?{query}2&rvt-crash-policy=sleep", True),
                (f"/gateway/tally/connect?{query.replace('key=r', 'key=bad')}", False),
            ):
                await ensure_placed(port, resource, raw=raw)
            async with tcp_websocket(
                port,
                f"/gateway/echo/ws/room?{query}&rvt-crash-policy=sleep",
                subprotocols=["rivet"],
            ) as ws:
                for message in ("text", b"\x00binary"):
                    await ws.send_message(message)
                    assert await ws.get_message() == message
            # A raw WebSocket does not hibernate: its actor's sleep closes it with 1001.
            async with tcp_websocket(
                port, f"/gateway/echo/ws?{query}2&rvt-crash-policy=sleep", subprotocols=["rivet"]
            ) as ws:
                await ws.send_message("ping")
                assert await ws.get_message() == "ping"
                echo_id = next(
                    e.actor_id
                    for e in host_of(registry).entries()
                    if e.name == "echo" and e.key == "r2"
                )
                await registry.sleep(echo_id)
                with pytest.raises(ConnectionClosed) as slept:
                    while True:
                        await ws.get_message()
                assert (slept.value.reason.code, slept.value.reason.reason) == (
                    1001,
                    "actor.sleeping",
                )
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
                while True:
                    try:
                        async with gateway(engine, "p-spread", f"s{i}") as ws:
                            init = json.loads(await ws.get_message())
                            await call(ws, 1, "add", i)
                            served[init["actor_id"]] = f"s{i}"
                            break
                    except ConnectionClosed as closed:
                        # The engine's own placement can time out on a loaded 2-core host
                        # (1011 pegboard.route_resolve_query_timeout): a client retries.
                        assert closed.reason.code == 1011, closed.reason
            on_first = {a for a in served if first.registry.lifecycle(a) is not None}
            on_second = {a for a in served if second.registry.lifecycle(a) is not None}
            assert on_first and on_second, (len(on_first), len(on_second))
            assert on_first.isdisjoint(on_second)
            assert on_first | on_second == set(served)


class Napper(actorcore.Actor):
    """Sleeps after 0.3 s idle; counts connects; a per-connection counter."""

    options = ActorOptions(sleep_timeout=0.3)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, Any]:
        return {"connects": 0, "touches": 0}

    def create_conn_state(self, ctx: ActorContext, params: Any) -> dict[str, Any]:
        return {"touches": 0}

    async def on_connect(self, ctx: ActorContext, conn: actorcore.Conn) -> None:
        ctx.state["connects"] += 1

    @actorcore.action
    async def touch(self, ctx: ActorContext) -> dict[str, Any]:
        conn = ctx.conn
        assert conn is not None
        conn.state["touches"] += 1
        ctx.state["touches"] += 1
        return {
            "conn": conn.state["touches"],
            "actor": ctx.state["touches"],
            "connects": ctx.state["connects"],
            "generation": ctx.generation,
        }


async def test_idle_sleep_keeps_a_hibernating_connection_open_into_the_next_generation(
    engine: Engine,
) -> None:
    """The gateway holds the protocol connection while the actor sleeps; the next message
    wakes it as generation + 1, the connection comes back with its id and state, and
    ``on_connect`` does not run again."""
    with trio.fail_after(TEST_TIMEOUT):
        registry = actorcore.Registry([Napper])
        runtime = EngineRuntime(registry, EnvoyOptions(url=engine.url, pool="p-hib"))
        asleep = trio.Event()

        def watch(actor_id: str, old: Any, new: Any) -> None:
            if new is actorcore.LifecycleState.ASLEEP:
                asleep.set()

        registry.watch_transitions(watch)
        port = int(engine.url.rsplit(":", 1)[1])
        query = "rvt-namespace=default&rvt-method=getOrCreate&rvt-runner=p-hib&rvt-key=n"
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            async with tcp_websocket(
                port,
                f"/gateway/napper/connect?{query}&rvt-crash-policy=sleep",
                subprotocols=["rivet"],
            ) as ws:
                first = json.loads(await ws.get_message())
                assert first["generation"] == 1
                answer = await call(ws, 1, "touch")
                assert answer == {"conn": 1, "actor": 1, "connects": 1, "generation": 1}
                await asleep.wait()  # idle: the engine granted the sleep; the socket stays
                await ws.send_message(json.dumps({"type": "action", "id": 2, "name": "touch"}))
                again = json.loads(await ws.get_message())
                assert again["type"] == "init", again
                assert again["generation"] == 2
                assert again["conn_id"] == first["conn_id"]
                answer = json.loads(await ws.get_message())
                assert answer["output"] == {
                    "conn": 2,
                    "actor": 2,
                    "connects": 1,
                    "generation": 2,
                }
            registry.request_shutdown()


class Alarmist(actorcore.Actor):
    """Schedules a ring and goes to sleep: the engine must wake it for the ring."""

    options = ActorOptions(sleep_timeout=3600)
    rang = trio.Event()

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, Any]:
        return {"rings": [], "armed_in": 0}

    @actorcore.action
    async def arm(self, ctx: ActorContext, delay: float) -> str:
        alarm_id = await ctx.schedule.after(delay, "ring")
        ctx.state["armed_in"] = ctx.generation
        await ctx.save_state()
        ctx.sleep()
        return alarm_id

    @actorcore.action
    async def ring(self, ctx: ActorContext) -> None:
        ctx.state["rings"].append(ctx.generation)
        await ctx.save_state()
        type(self).rang.set()

    @actorcore.action
    async def rings(self, ctx: ActorContext) -> dict[str, Any]:
        return {"rings": ctx.state["rings"], "armed_in": ctx.state["armed_in"]}


async def test_an_alarm_of_a_sleeping_actor_is_handed_to_the_engine_which_wakes_it(
    engine: Engine,
) -> None:
    Alarmist.rang = trio.Event()
    with trio.fail_after(TEST_TIMEOUT):
        registry = actorcore.Registry([Alarmist])
        runtime = EngineRuntime(registry, EnvoyOptions(url=engine.url, pool="p-alarm"))
        port = int(engine.url.rsplit(":", 1)[1])
        query = "rvt-namespace=default&rvt-method=getOrCreate&rvt-runner=p-alarm&rvt-key=a"
        resource = f"/gateway/alarmist/connect?{query}&rvt-crash-policy=sleep"
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            async with tcp_websocket(port, resource, subprotocols=["rivet"]) as ws:
                init = json.loads(await ws.get_message())
                actor_id = init["actor_id"]
                await call(ws, 1, "arm", 1.0)
            # Asleep with its alarm in the engine: nothing of it runs here until the engine
            # starts it again, when the alarm falls due.
            await Alarmist.rang.wait()
            assert registry.lifecycle(actor_id) is actorcore.LifecycleState.STARTED
            async with tcp_websocket(port, resource, subprotocols=["rivet"]) as ws:
                init = json.loads(await ws.get_message())
                state = await call(ws, 1, "rings")
            assert state["armed_in"] == 1
            assert state["rings"] == [init["generation"]] and init["generation"] >= 2
            registry.request_shutdown()
