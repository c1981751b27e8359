"""Benchmark server process.

``python -m benchmarks.server actorcore --port 0 [--db PATH]``
    an actorcore registry on a SQLiteStore (a temporary file unless ``--db``) serving the
    benchmark actors: ``echo`` (raw echo), ``sink`` (raw counter, replies ``done`` after
    ``params.n`` messages), ``counter`` (``increment`` action), ``drainer`` (raw echo that counts
    messages in its persisted state) and ``control`` (actions the load generator uses to wake,
    sleep and shut down actors).
``python -m benchmarks.server baseline --port 0``
    a plain trio-websocket server with the same settings: echo on every path, except raw
    ``/actors/sink/...`` paths, which count like the ``sink`` actor, and
    ``/actors/control/...``, which speaks the same JSON action frames as actorcore's
    ``control`` actor for the actions the finalize, drain and memory workloads use:
    ``sleep_actor`` closes every open connection of ``/actors/NAME/KEY/...`` concurrently with
    1001, ``shutdown`` closes every open connection with 1012 and then exits (printing the same
    ``{"stopped": {...}}`` line), ``wait_live`` / ``stats`` count open connections.
``python -m benchmarks.server populate --db PATH --n N``
    create N asleep ``echo`` actors in a SQLite file (``SQLiteStore.create_many``) and exit.

The first stdout line is ``{"port": PORT, "pid": PID}``. The actorcore server prints a second
line ``{"stopped": {...}}`` once its registry has drained (after the ``control.shutdown``
action), with the drain time and the states the ``drainer`` actors saved, then exits.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import trio

from .common import CLOSE_TIMEOUT, HARD_TIMEOUT, HOST, raise_fd_limit, ws_options

CLOSABLE = ("/actors/echo/fin-", "/actors/drainer/", "/actors/control/")
"""Baseline paths whose open connections the baseline keeps, to close them on a control
action (``sleep_actor``: 1001, ``shutdown``: 1012)."""

CLOSE_ALL_BOUND = 60.0
"""Baseline: bound on closing every connection at a ``sleep_actor`` / ``shutdown``."""

LIVE_POLL = 0.01
"""``wait_live`` polls the connection count this often (seconds)."""

# ---------------------------------------------------------------------------- actorcore side


async def _workers(width: int, n: int, one: Any) -> None:
    """Run ``one(i)`` for i < n with ``width`` worker tasks. Not a task per item: 10,000 parked
    tasks would raise the server's RSS high-water mark, which the memory rows then measure."""
    items = iter(range(n))

    async def worker() -> None:
        for i in items:
            await one(i)

    async with trio.open_nursery() as nursery:
        for _ in range(min(width, n)):
            nursery.start_soon(worker)


def _actors() -> list[type[Any]]:
    import actorcore
    from actorcore import Actor, ActorContext, ActorOptions, Conn, action
    from actorcore.registry import host_of

    long = ActorOptions(
        sleep_timeout=3600.0,
        sleep_grace_period=5.0,
        state_save_interval=3600.0,  # only the finalize save (the drain benchmark checks it)
        action_timeout=600.0,
        ready_timeout=60.0,
        max_held_work=100_000,
    )

    class Echo(Actor):
        name = "echo"
        options = long

        async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
            await conn.send(message)

        async def on_wake(self, ctx: ActorContext) -> None:
            if ctx.key.startswith("fin-"):
                HOOKS[f"on_wake:{ctx.key}"] += 1

        async def on_ws_close(self, ctx: ActorContext, conn: Conn, code: int, reason: str) -> None:
            if ctx.key.startswith("fin-"):
                HOOKS[f"on_ws_close:{ctx.key}"] += 1

        async def on_disconnect(self, ctx: ActorContext, conn: Conn) -> None:
            if ctx.key.startswith("fin-"):
                HOOKS[f"on_disconnect:{ctx.key}"] += 1

    class Sink(Actor):
        name = "sink"
        options = long

        async def create_conn_state(self, ctx: ActorContext, params: Any) -> Any:
            expect = params.get("n", 0) if isinstance(params, dict) else 0
            return [0, expect]

        async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
            st = conn.state
            st[0] += 1
            if st[0] == st[1]:
                await conn.send("done")

    class Counter(Actor):
        name = "counter"
        options = long

        def create_state(self, ctx: ActorContext, input: Any) -> Any:
            return {"count": 0}

        @action
        async def increment(self, ctx: ActorContext, by: int = 1) -> int:
            ctx.state["count"] += by
            return int(ctx.state["count"])

        @action
        async def increment_awaiting(self, ctx: ActorContext, by: int = 1) -> int:
            """``increment`` after an await: it runs in a task of its own, not inline."""
            await trio.lowlevel.checkpoint()
            ctx.state["count"] += by
            return int(ctx.state["count"])

    class UngatedCounter(Counter):
        """``Counter`` with ``durable_outputs=False``: answers leave before the state is
        saved (what every action was before issue 21's output gate)."""

        name = "counter-ungated"
        options = attrs.evolve(long, durable_outputs=False)

    class SerialCounter(Counter):
        """``Counter`` with ``serial=True``: every action takes a turn (and none runs inline)."""

        name = "counter-serial"
        options = attrs.evolve(long, serial=True)

    class Drainer(Actor):
        name = "drainer"
        options = long

        def create_state(self, ctx: ActorContext, input: Any) -> Any:
            return {"n": 0}

        async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
            ctx.state["n"] += 1
            await conn.send(message)

    class Control(Actor):
        name = "control"
        options = long

        @action
        async def wake_many(self, ctx: ActorContext, name: str, prefix: str, n: int) -> float:
            """get_or_create ``name``/``prefix{i}`` for i < n, 256 at a time; seconds taken."""
            t0 = time.perf_counter()

            async def one(i: int) -> None:
                await REGISTRY.get_or_create(name, f"{prefix}{i}")

            await _workers(256, n, one)
            return time.perf_counter() - t0

        @action
        async def sleep_many(self, ctx: ActorContext, name: str, prefix: str, n: int) -> float:
            """Sleep ``name``/``prefix{i}`` for i < n, 256 at a time; seconds taken."""
            t0 = time.perf_counter()

            async def one(i: int) -> None:
                handle = await REGISTRY.get(name, f"{prefix}{i}")
                await REGISTRY.sleep(handle.actor_id)

            await _workers(256, n, one)
            return time.perf_counter() - t0

        @action
        async def precreate(self, ctx: ActorContext, name: str, prefix: str, n: int) -> float:
            """Insert asleep actors ``name``/``prefix{i}`` with ``create_many`` and read each
            back once (so the SQLite page caches are warm); seconds taken."""
            t0 = time.perf_counter()
            store = REGISTRY.store
            rows = [(uuid.uuid4().hex, name, f"{prefix}{i}", None) for i in range(n)]
            await store.create_many(rows)  # type: ignore[attr-defined, unused-ignore]
            for _, _, key, _ in rows:
                await store.get_by_key(name, key)
            return time.perf_counter() - t0

        @action
        async def sleep_actor(self, ctx: ActorContext, name: str, key: str) -> float:
            """Sleep one actor and return when its generation has finished; seconds taken."""
            handle = await REGISTRY.get(name, key)
            t0 = time.perf_counter()
            await REGISTRY.sleep(handle.actor_id)
            return time.perf_counter() - t0

        @action
        async def lifecycle(self, ctx: ActorContext, name: str, key: str) -> dict[str, Any]:
            """The actor's lifecycle state, last generation number and live connections."""
            handle = await REGISTRY.get(name, key)
            entry = host_of(REGISTRY).entry(handle.actor_id)
            return {
                "state": handle.lifecycle.value if handle.lifecycle else None,
                "generation": entry.last_generation if entry is not None else None,
                "in_memory": entry is not None,
                "connections": _live(name, key),
            }

        @action
        async def wait_live(
            self, ctx: ActorContext, name: str, key: str | None, n: int, within: float
        ) -> dict[str, Any]:
            """Wait until ``n`` connections are live on actor ``name``/``key`` (on all actors
            named ``name`` if ``key`` is None), at most ``within`` s; the count and the wait."""
            waited = await _poll_until(lambda: _live(name, key) >= n, within)
            return {"live": _live(name, key), "waited_s": waited}

        @action
        async def shutdown(self, ctx: ActorContext) -> None:
            """Begin the registry drain (returns at once)."""
            SHUTDOWN_AT[0] = time.perf_counter()
            REGISTRY.request_shutdown()

        @action
        async def collect(self, ctx: ActorContext) -> int:
            """``gc.collect()``; returns this process's RSS in bytes."""
            gc.collect()
            return _rss()

        @action
        async def stats(self, ctx: ActorContext) -> dict[str, Any]:
            s = REGISTRY.statistics()
            return {
                "actors_by_state": s.actors_by_state,
                "connections": s.connections,
                "closes_by_code": {str(k): v for k, v in s.closes_by_code.items()},
                "messages_in": s.messages_in,
                "messages_out": s.messages_out,
                "hooks": dict(HOOKS),
            }

    del actorcore
    return [Echo, Sink, Counter, UngatedCounter, SerialCounter, Drainer, Control]


REGISTRY: Any = None
HOOKS: collections.Counter[str] = collections.Counter()
"""Hook calls of the finalize benchmark's ``echo`` actors (keys ``fin-*``) by ``hook:key``."""
SHUTDOWN_AT = [0.0]


async def _poll_until(done: Callable[[], bool], within: float) -> float:
    """Poll ``done()`` every LIVE_POLL s until it is true, at most ``within`` s (neither server
    has an event for "a connection became live", so this polls); seconds waited."""
    t0 = time.perf_counter()
    with trio.move_on_after(within):
        while not done():  # noqa: ASYNC110 - no event to wait on (see above)
            await trio.sleep(LIVE_POLL)
    return time.perf_counter() - t0


def _live(name: str, key: str | None) -> int:
    """Connections live on in-memory actors ``name``/``key`` (every key if None): attached
    to the actor's generation (``entry.conns``) and not closing. A connection the client
    has opened may still be in setup here (not yet counted)."""
    from actorcore.registry import host_of

    n = 0
    for entry in host_of(REGISTRY).entries():
        if entry.name == name and (key is None or entry.key == key):
            n += sum(1 for c in entry.conns if not c.closing)
    return n


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _drainer_states(db: str) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT state FROM actors WHERE name = 'drainer'").fetchall()
    finally:
        conn.close()
    counts: dict[str, int] = {}
    for (state,) in rows:
        n = json.loads(state)["n"] if state is not None else None
        counts[str(n)] = counts.get(str(n), 0) + 1
    return {"actors": len(rows), "saved_n": counts}


async def run_actorcore(port: int, db: str, max_connections: int) -> None:
    global REGISTRY
    from actorcore import Registry, SQLiteStore

    # The load generator is one address creating thousands of actors: no creation budget.
    registry = REGISTRY = Registry(_actors(), SQLiteStore(db), create_rate=None, pause_gc=True)
    with trio.move_on_after(HARD_TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(
                    registry.serve,
                    max_connections=max_connections,
                    # The load generator is one address: it may hold every connection.
                    max_connections_per_client=max_connections,
                    # ACTORCORE_BENCH_METRICS=0: the rows "metrics off" (docs/benchmarks.md).
                    metrics=os.environ.get("ACTORCORE_BENCH_METRICS", "1") != "0",
                ),
                HOST,
                port,
            )
            print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
            await registry.wait_stopped()
            stopped = time.perf_counter()
            nursery.cancel_scope.cancel()
    report = {
        "drain_s": stopped - SHUTDOWN_AT[0] if SHUTDOWN_AT[0] else None,
        "drainers": _drainer_states(db),
    }
    print(json.dumps({"stopped": report}), flush=True)


# ---------------------------------------------------------------------------- baseline side


async def run_baseline(port: int) -> None:
    from trio_websocket import (
        ConnectionClosed,
        WebSocketConnection,
        WebSocketRequest,
        serve_websocket,
    )

    # What the baseline keeps per connection: a count of open connections by path (no
    # allocation per connection), and the connection itself only on the paths whose
    # connections a control action closes (finalize's ``fin-*`` keys, the drainers, control).
    counts: collections.Counter[str] = collections.Counter()
    closable: dict[str, set[WebSocketConnection]] = collections.defaultdict(set)
    shutdown_at = [0.0]

    def prefix(name: str, key: str | None) -> str:
        return f"/actors/{name}/" if key is None else f"/actors/{name}/{key}/"

    def count(name: str, key: str | None) -> int:
        start = prefix(name, key)
        return sum(v for path, v in counts.items() if path.startswith(start))

    def closable_conns(name: str | None, key: str | None) -> list[WebSocketConnection]:
        start = "/" if name is None else prefix(name, key)
        return [ws for path, g in closable.items() if path.startswith(start) for ws in g]

    async def close_all(conns: list[WebSocketConnection], code: int, reason: str) -> float:
        """Close ``conns`` concurrently, a task per connection, each waiting for the peer's
        close frame (no per-connection timeout: this measures how fast trio-websocket can
        close them, not a close policy); bounded as a whole by CLOSE_ALL_BOUND. Seconds until
        all are done."""
        t0 = time.perf_counter()
        with trio.move_on_after(CLOSE_ALL_BOUND):
            async with trio.open_nursery() as nursery:
                for ws in conns:
                    nursery.start_soon(ws.aclose, code, reason)
        return time.perf_counter() - t0

    async def drain(server_scope: trio.CancelScope) -> None:
        await close_all(closable_conns(None, None), 1012, "runtime.shutdown")
        report = {"drain_s": time.perf_counter() - shutdown_at[0], "drainers": None}
        print(json.dumps({"stopped": report}), flush=True)
        server_scope.cancel()

    async def control(ws: WebSocketConnection, nursery: trio.Nursery) -> None:
        """The subset of the ``control`` actor's actions the workloads call on a baseline."""
        init = {"type": "init", "actor_id": "control", "conn_id": "", "generation": 1}
        await ws.send_message(json.dumps(init))
        while True:
            frame = json.loads(await ws.get_message())
            name, args = frame["name"], frame.get("args", [])
            output: Any = None
            if name == "stats":
                total = sum(counts.values())
                output = {"connections": total, "actors_by_state": {}, "hooks": {}}
            elif name == "wait_live":
                what, key, n, within = args
                enough = functools.partial(lambda w, k, m: count(w, k) >= m, what, key, n)
                waited = await _poll_until(enough, within)
                output = {"live": count(what, key), "waited_s": waited}
            elif name == "sleep_actor":
                output = await close_all(closable_conns(*args), 1001, "actor.sleeping")
            elif name == "shutdown":
                shutdown_at[0] = time.perf_counter()
                nursery.start_soon(drain, nursery.cancel_scope)
            elif name == "collect":
                gc.collect()
                output = _rss()
            else:
                error = {"type": "error", "id": frame["id"], "code": "action.not_found"}
                await ws.send_message(json.dumps(error))
                continue
            result = {"type": "action_result", "id": frame["id"], "output": output}
            await ws.send_message(json.dumps(result))

    with trio.move_on_after(HARD_TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def handler(request: WebSocketRequest) -> None:
                ws = await request.accept()
                path = request.path
                counts[path] += 1
                group = closable[path] if path.startswith(CLOSABLE) else None
                if group is not None:
                    group.add(ws)
                try:
                    if path.startswith("/actors/sink/"):
                        query = urlsplit(path).query
                        params = json.loads(parse_qs(query).get("params", ["{}"])[-1])
                        expect = params.get("n", 0)
                        n = 0
                        while True:
                            await ws.get_message()
                            n += 1
                            if n == expect:
                                await ws.send_message("done")
                    elif path.startswith("/actors/control/"):
                        await control(ws, nursery)
                    else:
                        while True:
                            await ws.send_message(await ws.get_message())
                except ConnectionClosed:
                    pass
                finally:
                    counts[path] -= 1
                    if not counts[path]:
                        del counts[path]
                    if group is not None:
                        group.discard(ws)

            server = await nursery.start(
                lambda task_status: serve_websocket(
                    handler,
                    HOST,
                    port,
                    None,
                    connect_timeout=10,
                    disconnect_timeout=CLOSE_TIMEOUT,
                    task_status=task_status,
                    **ws_options(),
                )
            )
            print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
            await trio.sleep_forever()


# ---------------------------------------------------------------------------- populate


async def populate(db: str, n: int) -> None:
    from actorcore import SQLiteStore
    from actorcore.store import open_store

    t0 = time.perf_counter()
    chunk = 100_000
    async with open_store(SQLiteStore(db)) as store:
        for start in range(0, n, chunk):
            rows: list[tuple[str, str, str, bytes | None]] = [
                (uuid.uuid4().hex, "echo", f"asleep-{i}", None)
                for i in range(start, min(n, start + chunk))
            ]
            await store.create_many(rows)
        count = await store.count()
    print(json.dumps({"populated": count, "seconds": time.perf_counter() - t0}), flush=True)


def log_gc() -> None:
    """Diagnostics (``ACTORCORE_BENCH_GCLOG=1``): every full collection on stderr, with its
    wall-clock end, its duration, and the objects the oldest generation holds after it."""
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
            return
        print(
            f"gc2 at {time.time():.3f} took {time.perf_counter() - started[0]:.3f} s, "
            f"collected {info['collected']}, tracked {len(gc.get_objects(2))}",
            file=sys.stderr,
            flush=True,
        )

    gc.callbacks.append(callback)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server")
    parser.add_argument("kind", choices=["actorcore", "baseline", "populate"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", default=None)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--max-connections", type=int, default=50_000)
    args = parser.parse_args(argv)
    raise_fd_limit()
    if os.environ.get("ACTORCORE_BENCH_GCLOG"):
        log_gc()
    if args.kind == "baseline":
        trio.run(run_baseline, args.port)
        return 0
    if args.kind == "populate":
        trio.run(populate, args.db, args.n)
        return 0
    if args.db is not None:
        trio.run(run_actorcore, args.port, args.db, args.max_connections)
        return 0
    with tempfile.TemporaryDirectory(prefix="actorcore-bench-") as tmp:
        trio.run(run_actorcore, args.port, os.path.join(tmp, "actors.db"), args.max_connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
