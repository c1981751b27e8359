"""Envoy processes (``actorcore serve --engine``) under a real engine: SIGTERM drains and the
engine moves the actors to another envoy with their state; SIGKILL of an envoy brings its
actors back on another one with every answered (saved) change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

from actorcore import Gateway

from .._clients import tcp_websocket
from ..http._http import request
from .conftest import Engine, start_engine, stop_engine

ROOT = Path(__file__).resolve().parents[2]
#: The lost threshold of this module's engine (ms): a killed envoy's actors move after it.
LOST_THRESHOLD_MS = 4000


@pytest.fixture(scope="module")
def fast_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine that declares a silent envoy lost after 4 s (instead of 15)."""
    os.environ["RIVET__PEGBOARD__ENVOY_LOST_THRESHOLD"] = str(LOST_THRESHOLD_MS)
    try:
        running = start_engine(tmp_path_factory.mktemp("engine"))
    finally:
        del os.environ["RIVET__PEGBOARD__ENVOY_LOST_THRESHOLD"]
    try:
        yield running
    finally:
        stop_engine(running)


class Envoy:
    """``actorcore serve tests.engine.app:registry --engine URL --pool POOL`` as a process."""

    def __init__(self, engine: Engine, pool: str, log: Path, *extra: str) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "actorcore",
                "serve",
                "tests.engine.app:registry",
                "--engine",
                engine.url,
                "--pool",
                pool,
                *extra,
            ],
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        return b"serving tests.engine.app:registry as envoy" in self.log.read_bytes()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait(10)


async def wait_ready(envoy: Envoy) -> None:
    while not envoy.ready():
        assert envoy.process.poll() is None, envoy.log.read_text()
        await trio.sleep(0.05)


def ledger(engine: Engine, pool: str, key: str, name: str = "ledger") -> Any:
    resource = (
        f"/gateway/{name}/connect?rvt-namespace=default&rvt-method=getOrCreate"
        f"&rvt-runner={pool}&rvt-key={key}&rvt-crash-policy=sleep"
    )
    return tcp_websocket(int(engine.url.rsplit(":", 1)[1]), resource, subprotocols=["rivet"])


async def call(ws: WebSocketConnection, frame_id: int, name: str, *args: Any) -> Any:
    await ws.send_message(
        json.dumps({"type": "action", "id": frame_id, "name": name, "args": list(args)})
    )
    while True:
        frame = json.loads(await ws.get_message())
        if frame.get("id") == frame_id:
            assert frame["type"] == "action_result", frame
            return frame["output"]


async def read_when_back(
    engine: Engine, pool: str, key: str, name: str = "ledger"
) -> dict[str, Any]:
    """Reconnect through the gateway until the actor answers again (a new generation)."""
    while True:
        try:
            async with ledger(engine, pool, key, name) as ws:
                init = json.loads(await ws.get_message())
                state: dict[str, Any] = await call(ws, 1, "read")
                state["init_generation"] = init["generation"]
                return state
        except (ConnectionClosed, HandshakeError, OSError):
            await trio.sleep(0.2)


async def test_sigterm_drains_and_the_engine_moves_the_actor_with_its_state(
    fast_engine: Engine, tmp_path: Path
) -> None:
    pool = "p-drain"
    first = Envoy(fast_engine, pool, tmp_path / "a.log")
    second: Envoy | None = None
    try:
        with trio.fail_after(60):
            await wait_ready(first)
            async with ledger(fast_engine, pool, "k") as ws:
                init = json.loads(await ws.get_message())
                assert init["generation"] == 1
                for i in range(5):
                    answer = await call(ws, i + 1, "add", 10)
                assert answer["total"] == 50
                second = Envoy(fast_engine, pool, tmp_path / "b.log")
                await wait_ready(second)
                first.process.send_signal(signal.SIGTERM)
                # The client's connection ends with a close frame, never a dropped socket.
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
                assert closed.value.reason.code in (1001, 1012), closed.value.reason
            assert await trio.to_thread.run_sync(first.wait, 30) == 0, first.log.read_text()
            state = await read_when_back(fast_engine, pool, "k")
            assert state["total"] == 50 and state["adds"] == 5
            assert state["generation"] == 2
    finally:
        first.kill()
        if second is not None:
            second.kill()


async def test_sigkill_of_an_envoy_brings_its_actors_back_elsewhere_with_every_saved_change(
    fast_engine: Engine, tmp_path: Path
) -> None:
    pool = "p-kill"
    first = Envoy(fast_engine, pool, tmp_path / "a.log")
    second: Envoy | None = None
    try:
        with trio.fail_after(90):
            await wait_ready(first)
            totals = {}
            # The ledger saves before it answers; the counter never saves itself: the output
            # gate holds its answers until the state they follow is in the engine.
            actors = [(name, key) for name in ("ledger", "counter") for key in ("x", "y", "z")]
            for name, key in actors:
                async with ledger(fast_engine, pool, key, name) as ws:
                    await ws.get_message()
                    for i in range(3):
                        answer = await call(ws, i + 1, "add", i + 1)
                    totals[name, key] = answer["total"]
            # HTTP through the gateway: its answers wait for the save too.
            actors.append(("counter", "h"))
            port = int(fast_engine.url.rsplit(":", 1)[1])
            add = Gateway(pool=pool).path("counter", "h", "/actions/add")
            for i in range(3):
                reply = await request(port, "POST", add, body=f'{{"args": [{i + 1}]}}'.encode())
                assert reply.status == 200, reply
            totals["counter", "h"] = reply.json()["output"]["total"]
            second = Envoy(fast_engine, pool, tmp_path / "b.log")
            await wait_ready(second)
            first.process.kill()
            killed_at = time.monotonic()
            for name, key in actors:
                state = await read_when_back(fast_engine, pool, key, name)
                assert state["total"] == totals[name, key], (name, key, state)
                assert state["adds"] == 3
                assert state["generation"] >= 2
            # Within the engine's lost threshold plus 5 s (the target), with room
            # for the engine's own detection and the starts.
            assert time.monotonic() - killed_at < LOST_THRESHOLD_MS / 1000 + 15
    finally:
        first.kill()
        if second is not None:
            second.kill()


async def test_a_link_down_near_the_lost_threshold_stops_local_actors_and_refuses_their_writes(
    tmp_path: Path,
) -> None:
    """The engine is gone for longer than its lost threshold less the margin: the envoy stops
    its actors first (the engine will place them elsewhere), and from then on the fence
    refuses their writes."""
    import actorcore
    from actorcore.engine.link import EnvoyOptions
    from actorcore.engine.runtime import EngineRuntime

    from .app import Ledger

    os.environ["RIVET__PEGBOARD__ENVOY_LOST_THRESHOLD"] = str(LOST_THRESHOLD_MS)
    try:
        engine = start_engine(tmp_path)
    finally:
        del os.environ["RIVET__PEGBOARD__ENVOY_LOST_THRESHOLD"]
    try:
        with trio.fail_after(60):
            registry = actorcore.Registry([Ledger])
            runtime = EngineRuntime(
                registry, EnvoyOptions(url=engine.url, pool="p-lost", lost_margin=3.0)
            )
            stopped = trio.Event()

            def watch(actor_id: str, old: Any, new: Any) -> None:
                if new is actorcore.LifecycleState.ASLEEP:
                    stopped.set()

            registry.watch_transitions(watch)
            async with trio.open_nursery() as nursery:
                await nursery.start(runtime.run)
                assert runtime.link.lost_threshold == LOST_THRESHOLD_MS / 1000
                async with ledger(engine, "p-lost", "k") as ws:
                    actor_id = json.loads(await ws.get_message())["actor_id"]
                    assert (await call(ws, 1, "add", 5))["total"] == 5
                await trio.to_thread.run_sync(stop_engine, engine)
                down_at = trio.current_time()
                await stopped.wait()
                # Stopped about lost_threshold - lost_margin (1 s) after the link went down.
                assert trio.current_time() - down_at < LOST_THRESHOLD_MS / 1000
                # The fence is closed: no write of that generation leaves the process now.
                assert runtime.store.held(actor_id) is None
                with pytest.raises(actorcore.StaleGeneration):
                    await runtime.store.save(actor_id, 1, b'{"total": 0, "adds": 0}')
                registry.request_shutdown()
    finally:
        stop_engine(engine)


async def test_a_second_envoy_with_the_same_key_evicts_the_first(fast_engine: Engine) -> None:
    import actorcore
    from actorcore.engine.link import EnvoyEvicted, EnvoyOptions
    from actorcore.engine.runtime import EngineRuntime

    from .app import Ledger

    options = EnvoyOptions(url=fast_engine.url, pool="p-evict", envoy_key="same-key")
    first = EngineRuntime(actorcore.Registry([Ledger]), options)
    second = EngineRuntime(actorcore.Registry([Ledger]), options)
    with trio.fail_after(30):
        with pytest.RaisesGroup(EnvoyEvicted, flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                await nursery.start(first.run)
                await nursery.start(second.run)
                await trio.sleep_forever()
        second.registry.request_shutdown()
