"""The ``engine`` workload's processes: a real Rivet engine, the two runtimes it routes to and
the load generator, all on loopback.

``python -m benchmarks.engine envoy --url URL --pool POOL``
    actorcore's envoy: an :class:`~actorcore.engine.runtime.EngineRuntime` serving ``echo``
    (a raw WebSocket echo on ``/ws``; the message ``__sleep`` makes the actor sleep) and
    ``counter`` (the action ``increment``; ``counter-ungated`` the same with
    ``durable_outputs=False``). Prints ``{"ready": true, "pid": PID}`` once the
    engine lists it, then runs until SIGTERM (a drain).
``python -m benchmarks.engine floor --url URL --pool POOL``
    the floor: an envoy with no registry, no actor and no dispatcher
    (:class:`~benchmarks.engine_floor.FloorHandler` on an
    :class:`~actorcore.engine.link.EnvoyLink`) that reports each ``echo`` actor running at once
    and echoes each tunnelled WebSocket message straight back: the round trip through the
    engine when the runtime does (almost) nothing. Prints the same ready line, runs until
    SIGTERM.
``node benchmarks/engine_peer/server.mjs`` (env ``ENGINE_URL``, ``POOL``, ``RIVETKIT_DIR``)
    rivetkit 2.3.19's own runtime serving the same two actors (see that file).
``python -m benchmarks.engine client MEASURE --port GUARD --side SIDE --pool POOL ...``
    one measurement through the engine's gateway (trio-websocket, subprotocol ``rivet``),
    printed as one JSON line: ``echo``, ``action``, ``connect_new``, ``connect_asleep``,
    ``aggregate``. ``--side actorcore`` speaks actorcore's JSON protocol on ``/connect`` and
    its raw route ``/ws``; ``--side rivetkit`` speaks rivetkit's client protocol (JSON
    encoding, ``rivet_encoding.json``) on ``/connect`` and its raw ``onWebSocket`` on
    ``/websocket``.

The driver (:func:`benchmarks.runner.w_engine`) installs what is missing (``.ci/install-engine``
for the engine, ``npm install rivetkit@2.3.19`` into a cache folder next to it), starts the
engine on free ports with a temporary RocksDB folder, telemetry off and
``RIVET__GUARD__TCP_NODELAY=true`` (and the settings in ``ENGINE_ENV``), and the runtimes,
each with its own pool: rivetkit a second time with TCP_NODELAY forced on its sockets
(``engine_peer/nodelay.c``, an LD_PRELOAD shim). Results: ``docs/benchmarks.md``, *Through the
Rivet engine*.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket

from .common import HARD_TIMEOUT, HOST, MSG32, ws_options

ENGINE_VERSION: Final = "2.3.19"
RIVETKIT_VERSION: Final = "2.3.19"
ROOT: Final = Path(__file__).resolve().parent.parent
_CACHE: Final = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "actorcore"
ENGINE_DIR: Final = Path(
    os.environ.get("ACTORCORE_ENGINE_DIR", _CACHE / f"engine-{ENGINE_VERSION}")
)
RIVETKIT_DIR: Final = Path(
    os.environ.get("ACTORCORE_RIVETKIT_DIR", _CACHE / f"rivetkit-{RIVETKIT_VERSION}")
)
PEER_SCRIPT: Final = ROOT / "benchmarks" / "engine_peer" / "server.mjs"
NODELAY_SOURCE: Final = ROOT / "benchmarks" / "engine_peer" / "nodelay.c"

ENGINE_START_TIMEOUT: Final = 30.0
RUNTIME_START_TIMEOUT: Final = 60.0
NPM_TIMEOUT: Final = 600.0
ASLEEP_TIMEOUT: Final = 15.0
"""Bound on the engine reporting every actor of a ``connect_asleep`` run asleep (those that
are not by then are not measured, and listed in ``setup_failed``)."""

SLEEP_MESSAGE: Final = "__sleep"
UNGATED_COUNTER: Final = "counter-ungated"
"""actorcore's counter with ``durable_outputs=False`` (answers do not wait for the save)."""

ENGINE_ENV: Final = {
    "RIVET__TELEMETRY__ENABLED": "false",
    "RIVET__GUARD__TCP_NODELAY": "true",
    # Two engine rate limits, raised for both sides alike, or the rows would time the
    # limiters, not the runtimes: the gateway's per-WebSocket message limit (with the default
    # a connection drops to about 90 messages/s after its first ~2,500) and the actor-create
    # limit (with the default each create of a run of new actors waits for the limiter, and
    # after a burst a create can stall until the gateway's 15 s route timeout, 1011
    # ``pegboard.route_resolve_query_timeout``, with either runtime).
    "RIVET__PEGBOARD__GATEWAY_WEBSOCKET_RATE_LIMIT_REQUESTS": "1000000",
    "RIVET__PEGBOARD__ACTOR_CREATE_RATE_LIMIT_REQUESTS": "1000000",
}

SAMPLE_TIMEOUT: Final = 5.0
"""Bound on one connect sample. On a busy machine the engine's workflow worker sheds load
(``gasoline_load_shedding_ratio``): a get-or-create of a new actor, or the wake of an asleep
one, then waits seconds for its workflow to be pulled (6 s and more in the engine's debug log,
with either runtime; past 15 s the gateway refuses with 1011
``pegboard.route_resolve_query_timeout``, a wake can take 30 s). Such a sample is counted as
failed (``failed`` in the details) and left out of the latencies."""
SETUP_ATTEMPTS: Final = 10
"""Tries (each bounded by SAMPLE_TIMEOUT) at reaching an actor a measurement needs."""


# ---------------------------------------------------------------------------- installing


def engine_binary() -> Path:
    return Path(
        os.environ.get(
            "ACTORCORE_RIVET_ENGINE",
            ENGINE_DIR / "node_modules/@rivetkit/engine-cli-linux-x64-musl/rivet-engine",
        )
    )


def ensure_engine() -> Path:
    """The pinned engine binary, installed with ``.ci/install-engine`` if missing."""
    binary = engine_binary()
    if not binary.is_file():
        subprocess.run(
            [str(ROOT / ".ci" / "install-engine")], check=True, timeout=NPM_TIMEOUT, stdout=2
        )
    if not binary.is_file():
        raise RuntimeError(f"no rivet-engine at {binary} after .ci/install-engine")
    return binary


def ensure_rivetkit() -> Path:
    """An npm folder holding ``rivetkit@RIVETKIT_VERSION``, installed if missing. Raises
    RuntimeError with npm's own words when it cannot be installed."""
    marker = RIVETKIT_DIR / "node_modules" / "rivetkit" / "package.json"
    if marker.is_file() and json.loads(marker.read_text())["version"] == RIVETKIT_VERSION:
        return RIVETKIT_DIR
    RIVETKIT_DIR.mkdir(parents=True, exist_ok=True)
    package = RIVETKIT_DIR / "package.json"
    if not package.is_file():
        package.write_text('{"name": "actorcore-rivetkit-peer", "private": true}\n')
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
         f"rivetkit@{RIVETKIT_VERSION}"],
        cwd=RIVETKIT_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT,
    )  # fmt: skip
    if done.returncode != 0 or not marker.is_file():
        raise RuntimeError(f"npm install rivetkit@{RIVETKIT_VERSION} failed: {done.stderr[-2000:]}")
    return RIVETKIT_DIR


def ensure_nodelay_shim() -> Path:
    """``engine_peer/nodelay.c`` built (with the system C compiler) into the rivetkit folder,
    for the "TCP_NODELAY forced" rivetkit baseline; RuntimeError if it cannot be built."""
    shim = RIVETKIT_DIR / "libnodelay.so"
    if shim.is_file() and shim.stat().st_mtime >= NODELAY_SOURCE.stat().st_mtime:
        return shim
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build the TCP_NODELAY shim")
    done = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(shim), str(NODELAY_SOURCE), "-ldl"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"building the TCP_NODELAY shim failed: {done.stderr[-1000:]}")
    return shim


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@attrs.frozen
class Engine:
    url: str
    port: int
    process: subprocess.Popen[bytes]


def start_engine(folder: Path, log: Path, settings: Mapping[str, str] | None = None) -> Engine:
    """``rivet-engine start`` on free loopback ports, its RocksDB in ``folder``, with
    ``settings`` (``RIVET__...`` environment variables) on top of ``ENGINE_ENV``; returns once
    the default namespace exists (bounded)."""
    guard, peer, metrics = free_port(), free_port(), free_port()
    env = dict(
        os.environ,
        RIVET__GUARD__HOST=HOST,
        RIVET__GUARD__PORT=str(guard),
        RIVET__API_PEER__HOST=HOST,
        RIVET__API_PEER__PORT=str(peer),
        RIVET__METRICS__HOST=HOST,
        RIVET__METRICS__PORT=str(metrics),
        RIVET__FILE_SYSTEM__PATH=str(folder / "db"),
        **ENGINE_ENV,
        **(settings or {}),
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(ensure_engine()), "start"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://{HOST}:{guard}"
    deadline = time.monotonic() + ENGINE_START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"{url}/namespaces", timeout=1) as answer:
                if answer.status == 200 and b'"default"' in answer.read():
                    return Engine(url, guard, process)
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"the engine did not start; see {log}")
        time.sleep(0.1)


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# ---------------------------------------------------------------------------- actorcore envoy


def _registry() -> Any:
    import actorcore
    from actorcore import Actor, ActorContext, ActorOptions, Conn, action

    long = ActorOptions(sleep_timeout=3600.0, state_save_interval=3600.0)

    class Echo(Actor):
        name = "echo"
        options = long

        async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
            if message == SLEEP_MESSAGE:
                ctx.sleep()
            else:
                await conn.send(message)

    class Counter(Actor):
        name = "counter"
        options = long  # durable_outputs: an answer waits for its save to the engine's KV

        def create_state(self, ctx: ActorContext, input: Any) -> Any:
            return {"count": 0}

        @action
        async def increment(self, ctx: ActorContext, by: int = 1) -> int:
            ctx.state["count"] += by
            return int(ctx.state["count"])

    class UngatedCounter(Counter):
        name = UNGATED_COUNTER
        options = attrs.evolve(long, durable_outputs=False)  # answers leave at once

    return actorcore.Registry([Echo, Counter, UngatedCounter])


async def run_envoy(url: str, pool: str) -> None:
    from actorcore.engine.link import EnvoyOptions
    from actorcore.engine.runtime import EngineRuntime

    registry = _registry()
    runtime = EngineRuntime(registry, EnvoyOptions(url=url, pool=pool))
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        with trio.fail_after(RUNTIME_START_TIMEOUT):
            await _poll(lambda: _pool_listed(url, pool))
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                registry.request_shutdown()
                break


async def run_floor(url: str, pool: str) -> None:
    """The floor envoy (see the module docstring) on ``pool``, until SIGTERM or SIGINT."""
    from actorcore.engine.link import EnvoyOptions

    from .engine_floor import FloorHandler

    async with trio.open_nursery() as nursery:
        floor = FloorHandler(EnvoyOptions(url=url, pool=pool), nursery)
        await nursery.start(floor.link.run)
        with trio.fail_after(RUNTIME_START_TIMEOUT):
            await _poll(lambda: _pool_listed(url, pool))
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


async def _poll(done: Callable[[], Awaitable[bool]], interval: float = 0.05) -> None:
    """Until ``done()`` (the caller bounds it)."""
    while True:
        if await done():
            return
        await trio.sleep(interval)


async def _pool_listed(url: str, pool: str) -> bool:
    def get() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/envoys?namespace=default", timeout=2) as r:
                envoys = json.loads(r.read()).get("envoys", [])
        except OSError:
            return False
        return any(e.get("pool_name") == pool for e in envoys)

    return await trio.to_thread.run_sync(get)


# ---------------------------------------------------------------------------- the client


def _query(pool: str, key: str) -> str:
    return (
        f"rvt-namespace=default&rvt-method=getOrCreate&rvt-runner={pool}&rvt-key={key}"
        "&rvt-crash-policy=sleep"
    )


@attrs.frozen
class Side:
    """How a client reaches one runtime's actors through the gateway."""

    name: str
    pool: str
    port: int
    counter: str = "counter"
    """The actor the action rows call (actorcore: ``counter``, gated, or
    ``counter-ungated``)."""

    def raw(self, key: str) -> str:
        path = "ws" if self.name == "actorcore" else "websocket"
        return f"/gateway/echo/{path}?{_query(self.pool, key)}"

    def connect(self, key: str) -> str:
        return f"/gateway/{self.counter}/connect?{_query(self.pool, key)}"

    @property
    def protocols(self) -> list[str]:
        return ["rivet"] if self.name == "actorcore" else ["rivet", "rivet_encoding.json"]


@asynccontextmanager
async def _ws(side: Side, resource: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket(
        HOST, side.port, resource, use_ssl=False, subprotocols=side.protocols, **ws_options()
    ) as ws:
        yield ws


class Actions:
    """Action calls in the side's own protocol, one in flight."""

    def __init__(self, side: Side, ws: WebSocketConnection) -> None:
        self.side, self.ws, self.next_id = side, ws, 0

    async def init(self) -> None:
        frame = json.loads(await self.ws.get_message())
        kind = frame.get("type") if self.side.name == "actorcore" else frame["body"]["tag"]
        if kind not in ("init", "Init"):
            raise RuntimeError(f"expected init, got {frame}")

    async def call(self, name: str, *args: Any) -> Any:
        self.next_id += 1
        i = self.next_id
        if self.side.name == "actorcore":
            await self.ws.send_message(
                json.dumps({"type": "action", "id": i, "name": name, "args": list(args)})
            )
            while True:
                frame = json.loads(await self.ws.get_message())
                if frame.get("id") == i:
                    if frame.get("type") != "action_result":
                        raise RuntimeError(f"action failed: {frame}")
                    return frame["output"]
        big = ["$BigInt", str(i)]
        request = {"body": {"tag": "ActionRequest", "val": {"id": big, "name": name, "args": args}}}
        await self.ws.send_message(json.dumps(request))
        while True:
            body = json.loads(await self.ws.get_message())["body"]
            if body["tag"] == "ActionResponse" and body["val"]["id"] == big:
                return body["val"]["output"]
            if body["tag"] == "Error":
                raise RuntimeError(f"action failed: {body}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _round_trips(
    one: Callable[[], Awaitable[None]], warmup: int, duration: float
) -> dict[str, Any]:
    """``warmup`` calls of ``one``, then as many as fit in ``duration`` s, one in flight."""
    for _ in range(warmup):
        await one()
    lat = []
    t0 = time.perf_counter()
    end = t0 + duration
    while (t := time.perf_counter()) < end:
        await one()
        lat.append(time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    return {
        "per_s": len(lat) / seconds,
        "n": len(lat),
        "calls": warmup + len(lat),
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * _pct(lat, 0.99),
    }


async def _ensure(side: Side, resource: str) -> int:
    """Reach ``resource`` (creating its actor) and close again, retried while the gateway
    refuses (at most SETUP_ATTEMPTS tries); the number of refusals."""
    for attempt in range(SETUP_ATTEMPTS):
        try:
            with trio.move_on_after(SAMPLE_TIMEOUT):
                async with _ws(side, resource) as ws:
                    if "/connect?" in resource:
                        await Actions(side, ws).init()
                    else:
                        await ws.send_message(MSG32)
                        await ws.get_message()
                return attempt
        except (ConnectionClosed, HandshakeError):
            continue
    raise RuntimeError(f"{resource}: refused {SETUP_ATTEMPTS} times")


async def echo(side: Side, duration: float, warmup: int, tag: str) -> dict[str, Any]:
    """Round trips of a 32 B text message on one raw WebSocket, one in flight."""
    await _ensure(side, side.raw(f"echo-{tag}"))
    async with _ws(side, side.raw(f"echo-{tag}")) as ws:

        async def one() -> None:
            await ws.send_message(MSG32)
            if await ws.get_message() != MSG32:
                raise RuntimeError("echo mismatch")

        return await _round_trips(one, warmup, duration)


async def action(side: Side, duration: float, warmup: int, tag: str) -> dict[str, Any]:
    """Round trips of ``increment(1)`` over ``/connect``, one in flight; checks the count."""
    await _ensure(side, side.connect(f"act-{tag}"))
    async with _ws(side, side.connect(f"act-{tag}")) as ws:
        calls = Actions(side, ws)
        await calls.init()

        async def one() -> None:
            await calls.call("increment", 1)

        out = await _round_trips(one, warmup, duration)
        total = await calls.call("increment", 0)
        if total != out["n"] + warmup:
            raise RuntimeError(f"count {total} != {out['n'] + warmup}")
        return out


async def _open_and_echo(side: Side, key: str) -> float:
    """Seconds from opening a raw WebSocket to ``key`` to its first echo."""
    t = time.perf_counter()
    async with _ws(side, side.raw(key)) as ws:
        await ws.send_message(MSG32)
        await ws.get_message()
        return time.perf_counter() - t


async def _latencies(side: Side, keys: list[str]) -> dict[str, Any]:
    """:func:`_open_and_echo` for each key in turn: p50/p99 of those that succeeded, and the
    refusals (close code and reason) of those that did not."""
    ms: list[float] = []
    failed: list[str] = []
    for key in keys:
        try:
            with trio.move_on_after(SAMPLE_TIMEOUT):
                ms.append(1000 * await _open_and_echo(side, key))
                continue
            failed.append(f"no echo within {SAMPLE_TIMEOUT} s")
        except (ConnectionClosed, HandshakeError) as exc:
            failed.append(str(exc)[:200])
    if not ms:
        return {"p50_ms": None, "p99_ms": None, "n": 0, "failed": failed}
    return {"p50_ms": statistics.median(ms), "p99_ms": _pct(ms, 0.99), "n": len(ms),
            "failed": failed}  # fmt: skip


async def connect_new(side: Side, n: int, tag: str) -> dict[str, Any]:
    """Open + first echo to a new actor (the engine creates it and starts it on an envoy)."""
    return await _latencies(side, [f"new-{tag}-{i}" for i in range(n)])


async def connect_asleep(side: Side, n: int, tag: str, url: str) -> dict[str, Any]:
    """Open + first echo to an actor the engine has put to sleep (asked by the actor)."""
    keys = []
    setup_failed = []
    setup_refused = 0
    for key in (f"asleep-{tag}-{i}" for i in range(n)):
        try:
            setup_refused += await _ensure(side, side.raw(key))
            async with _ws(side, side.raw(key)) as ws:
                await ws.send_message(MSG32)
                await ws.get_message()
                await ws.send_message(SLEEP_MESSAGE)
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await ws.get_message()
        except (ConnectionClosed, HandshakeError, RuntimeError) as exc:  # not measured
            setup_failed.append(str(exc)[:200])
            continue
        keys.append(key)
    t = time.perf_counter()
    with trio.move_on_after(ASLEEP_TIMEOUT):
        await _poll(lambda: _all_asleep(url, keys))
    settle = time.perf_counter() - t
    asleep = await trio.to_thread.run_sync(lambda: [k for k in keys if _asleep(url, k)])
    setup_failed += [f"{k}: not asleep after {ASLEEP_TIMEOUT} s" for k in keys if k not in asleep]
    out = await _latencies(side, asleep)
    out["asleep_after_s"] = settle
    out["setup_failed"] = setup_failed
    out["setup_refused"] = setup_refused
    return out


def _asleep(url: str, key: str) -> bool:
    """Whether the engine has the ``echo`` actor ``key`` asleep."""
    target = f"{url}/actors?namespace=default&name=echo&key={key}"
    with urllib.request.urlopen(target, timeout=5) as r:
        actors = json.loads(r.read()).get("actors", [])
    return bool(actors) and all(a.get("sleep_ts") for a in actors)


async def _all_asleep(url: str, keys: list[str]) -> bool:
    return await trio.to_thread.run_sync(lambda: all(_asleep(url, k) for k in keys))


async def aggregate(sides: list[Side], conns: int, duration: float, tag: str) -> dict[str, Any]:
    """``conns`` raw WebSockets to as many actors (``sides`` round-robin; one pool is spread
    by the engine over its envoys; the actors are created first, or reused), each doing echo
    round trips back to back for ``duration`` s; total round trips per second."""
    counts = [0] * conns
    async with trio.open_nursery() as nursery:
        sockets: list[WebSocketConnection] = []
        for i in range(conns):
            side = sides[i % len(sides)]
            await _ensure(side, side.raw(f"agg-{tag}-{i}"))
            ws = await nursery.start(_hold, side, side.raw(f"agg-{tag}-{i}"))
            await ws.send_message(MSG32)  # the actor is started before the clock runs
            await ws.get_message()
            sockets.append(ws)
        stop = trio.current_time() + duration

        async def load(i: int, ws: WebSocketConnection) -> None:
            while trio.current_time() < stop:
                await ws.send_message(MSG32)
                await ws.get_message()
                counts[i] += 1

        t0 = time.perf_counter()
        async with trio.open_nursery() as loaders:
            for i, ws in enumerate(sockets):
                loaders.start_soon(load, i, ws)
        seconds = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"per_s": sum(counts) / seconds, "per_conn": counts, "seconds": seconds}


async def _hold(
    side: Side, resource: str, *, task_status: trio.TaskStatus[WebSocketConnection]
) -> None:
    async with _ws(side, resource) as ws:
        task_status.started(ws)
        await trio.sleep_forever()


# ---------------------------------------------------------------------------- entry points


async def run_client(a: argparse.Namespace) -> dict[str, Any]:
    sides = [Side(a.side, pool, a.port, a.counter) for pool in a.pool]
    side = sides[0]
    url = f"http://{HOST}:{a.port}"
    job: Callable[[], Awaitable[dict[str, Any]]]
    if a.measure == "echo":
        job = lambda: echo(side, a.duration, a.warmup, a.tag)  # noqa: E731
    elif a.measure == "action":
        job = lambda: action(side, a.duration, a.warmup, a.tag)  # noqa: E731
    elif a.measure == "connect_new":
        job = lambda: connect_new(side, a.n, a.tag)  # noqa: E731
    elif a.measure == "connect_asleep":
        job = lambda: connect_asleep(side, a.n, a.tag, url)  # noqa: E731
    else:
        job = lambda: aggregate(sides, a.n, a.duration, a.tag)  # noqa: E731

    with trio.fail_after(a.timeout):
        return await job()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine")
    sub = parser.add_subparsers(dest="cmd", required=True)
    envoy = sub.add_parser("envoy")
    envoy.add_argument("--url", required=True)
    envoy.add_argument("--pool", required=True)
    floor = sub.add_parser("floor")
    floor.add_argument("--url", required=True)
    floor.add_argument("--pool", required=True)
    client = sub.add_parser("client")
    client.add_argument(
        "measure", choices=["echo", "action", "connect_new", "connect_asleep", "aggregate"]
    )
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--side", choices=["actorcore", "rivetkit"], required=True)
    client.add_argument("--pool", action="append", required=True, help="the side's pool")
    client.add_argument(
        "--n", type=int, default=10, help="actors (connect_*) or connections (aggregate)"
    )
    client.add_argument("--warmup", type=int, default=100, help="round trips before the clock")
    client.add_argument(
        "--duration",
        type=float,
        default=3.0,
        help="seconds of round trips (echo, action, aggregate)",
    )
    client.add_argument("--tag", default=uuid.uuid4().hex[:8], help="makes the actor keys")
    client.add_argument(
        "--counter", default="counter", help="the actor of the action rows (actorcore's side)"
    )
    client.add_argument("--timeout", type=float, default=HARD_TIMEOUT)
    a = parser.parse_args(argv)
    if a.cmd == "envoy":
        trio.run(run_envoy, a.url, a.pool)
        return 0
    if a.cmd == "floor":
        trio.run(run_floor, a.url, a.pool)
        return 0
    t = time.process_time()
    result = trio.run(run_client, a)
    result["cpu_s"] = time.process_time() - t
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
