"""Two engine nodes sharing PostgreSQL and NATS (Debian's postgresql and nats-server), one
envoy connected to each: actors created through either node's gateway are placed on both
envoys, and either gateway reaches every actor with its state."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio
from trio_websocket import ConnectionClosed

import actorcore
from actorcore.engine.link import EnvoyOptions
from actorcore.engine.runtime import EngineRuntime

from .._clients import tcp_websocket
from .conftest import Engine, _free_port, start_engine, stop_engine
from .test_runtime import Tally, call

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _require(what: str) -> None:
    message = f"{what} is not installed (.ci/run installs postgresql and nats-server)"
    if os.environ.get("ACTORCORE_REQUIRE_ENGINE") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, timeout=60, text=True)
    assert done.returncode == 0, f"{argv[-3:]}: {done.stdout[-800:]} {done.stderr[-800:]}"


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:``port`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@attrs.frozen
class Cluster:
    nodes: tuple[Engine, Engine]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not (PG_BIN / "initdb").exists():
        _require("PostgreSQL 15")
    nats_server = shutil.which("nats-server")
    if nats_server is None:
        _require("nats-server")
    assert nats_server is not None
    # Not under pytest's temporary folder: PostgreSQL runs as another user, who cannot
    # enter it.
    folder = Path(tempfile.mkdtemp(prefix="actorcore-cluster-"))
    folder.chmod(0o777)
    data = folder / "pg"
    pg_port, nats_port = _free_port(), _free_port()
    # PostgreSQL refuses to run as root: as the postgres user when we are root.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    _run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"])
    options = f"-p {pg_port} -k {folder} -c listen_addresses=127.0.0.1"
    pg_ctl = [*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data)]
    _run([*pg_ctl, "-o", options, "-l", str(folder / "pg.log"), "-w", "start"])
    nats = subprocess.Popen(
        [nats_server, "-a", "127.0.0.1", "-p", str(nats_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nodes: list[Engine] = []
    try:
        _wait_listening(nats_port)
        for n in (1, 2):
            ports = (_free_port(), _free_port(), _free_port())
            config = {
                "postgres": {"url": f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"},
                "nats": {"addresses": [f"127.0.0.1:{nats_port}"]},
                "guard": {"host": "127.0.0.1", "port": ports[0]},
                "api_peer": {"host": "127.0.0.1", "port": ports[1]},
                "metrics": {"host": "127.0.0.1", "port": ports[2]},
                "telemetry": {"enabled": False},
            }
            node_folder = folder / f"node{n}"
            node_folder.mkdir()
            nodes.append(start_engine(node_folder, ports, config))
        yield Cluster((nodes[0], nodes[1]))
    finally:
        for node in nodes:
            stop_engine(node)
        nats.terminate()
        nats.wait(timeout=10)
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _port(engine: Engine) -> int:
    return int(engine.url.rsplit(":", 1)[1])


async def test_two_engine_nodes_share_actors_and_route_to_both_envoys(cluster: Cluster) -> None:
    first_node, second_node = cluster.nodes
    with trio.fail_after(120):
        registries = (actorcore.Registry([Tally]), actorcore.Registry([Tally]))
        runtimes = (
            EngineRuntime(registries[0], EnvoyOptions(url=first_node.url, pool="mn")),
            EngineRuntime(registries[1], EnvoyOptions(url=second_node.url, pool="mn")),
        )
        async with trio.open_nursery() as nursery:
            for runtime in runtimes:
                await nursery.start(runtime.run)
            query = (
                "rvt-namespace=default&rvt-method=getOrCreate&rvt-runner=mn&rvt-crash-policy=sleep"
            )
            ids: dict[str, int] = {}
            for i in range(12):
                node = cluster.nodes[i % 2]
                resource = f"/gateway/tally/connect?{query}&rvt-key=m{i}"
                while True:
                    try:
                        async with tcp_websocket(
                            _port(node), resource, subprotocols=["rivet"]
                        ) as ws:
                            init = json.loads(await ws.get_message())
                            ids[init["actor_id"]] = i
                            assert await call(ws, 1, "add", i) == i
                            break
                    except ConnectionClosed as closed:
                        # Placement can time out on a loaded 2-core host (1011
                        # pegboard.route_resolve_query_timeout): a client retries. The add is
                        # not sent before the init, so it is not applied twice.
                        assert closed.reason.code == 1011 and i not in ids.values(), closed
            # Each actor through the other node's gateway: the same actor, its state kept.
            for actor_id, i in ids.items():
                node = cluster.nodes[(i + 1) % 2]
                resource = f"/gateway/tally/connect?{query}&rvt-key=m{i}"
                async with tcp_websocket(_port(node), resource, subprotocols=["rivet"]) as ws:
                    init = json.loads(await ws.get_message())
                    assert init["actor_id"] == actor_id
                    assert await call(ws, 1, "add", 0) == i
            placed = [
                {a for a in ids if registry.lifecycle(a) is not None} for registry in registries
            ]
            assert placed[0] and placed[1], [len(p) for p in placed]
            assert placed[0].isdisjoint(placed[1])
            for registry in registries:
                registry.request_shutdown()


async def test_an_envoy_given_several_node_urls_moves_to_another_node_when_its_node_stops(
    cluster: Cluster,
) -> None:
    """Runs last in this module: it stops the first node. An envoy whose first URL is dead
    connects to the next; one connected to the first node moves its link to the second when
    the first stops, and keeps its actors (same generation, same state) reachable through
    the second node's gateway."""
    first_node, second_node = cluster.nodes
    query = "rvt-namespace=default&rvt-method=getOrCreate&rvt-runner=fo&rvt-crash-policy=sleep"
    resource = f"/gateway/tally/connect?{query}&rvt-key=f1"
    with trio.fail_after(120):
        registry = actorcore.Registry([Tally])
        runtime = EngineRuntime(
            registry,
            EnvoyOptions(url=first_node.url, fallback_urls=(second_node.url,), pool="fo"),
        )
        dead = f"http://127.0.0.1:{_free_port()}"
        spare_registry = actorcore.Registry([Tally])
        spare = EngineRuntime(
            spare_registry,
            EnvoyOptions(url=dead, fallback_urls=(second_node.url,), pool="fo-spare"),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(spare.run)
            assert spare.link.url == second_node.url
            await nursery.start(runtime.run)
            assert runtime.link.url == first_node.url
            async with tcp_websocket(_port(second_node), resource, subprotocols=["rivet"]) as ws:
                init = json.loads(await ws.get_message())
                assert await call(ws, 1, "add", 5) == 5
            await trio.to_thread.run_sync(stop_engine, first_node)
            await runtime.link.wait_connects(2)
            assert runtime.link.url == second_node.url
            async with tcp_websocket(_port(second_node), resource, subprotocols=["rivet"]) as ws:
                again = json.loads(await ws.get_message())
                assert (again["actor_id"], again["generation"]) == (
                    init["actor_id"],
                    init["generation"],
                )
                assert await call(ws, 1, "add", 1) == 6
            for each in (registry, spare_registry):
                each.request_shutdown()
