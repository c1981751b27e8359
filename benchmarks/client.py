"""Load generator process: ``python -m benchmarks.client WORKLOAD --port P [options]``.

Prints ``READY <tag>`` lines (then waits for a line on stdin) where the runner measures the
server between phases, and one final line ``{"result": {...}}``. Every loop is bounded in
count, and the whole process by ``HARD_TIMEOUT``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket

from .common import HARD_TIMEOUT, HOST, MSG32, raise_fd_limit, ws_options

OPEN_CONCURRENCY = 64
"""Connections being opened at once (the listen backlog is never the limit)."""

OPEN_TIMEOUT = 30.0


@asynccontextmanager
async def ws_connect(port: int, path: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket(HOST, port, path, use_ssl=False, **ws_options()) as ws:
        yield ws


async def ready(tag: str) -> None:
    """Tell the runner a phase is done and wait for its go."""
    print(f"READY {tag}", flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)


def percentiles(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    if not s:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}

    def pick(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"p50": pick(0.50), "p99": pick(0.99), "max": s[-1], "n": len(s)}


class Protocol:
    """A minimal ``/connect`` protocol client (one action at a time)."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def init(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.ws.get_message())
        assert frame["type"] == "init", frame
        return frame

    async def call(self, name: str, *args: Any) -> Any:
        action_id = next(self.ids)
        await self.ws.send_message(
            json.dumps({"type": "action", "id": action_id, "name": name, "args": list(args)})
        )
        while True:
            frame = json.loads(await self.ws.get_message())
            if frame.get("id") != action_id:
                continue
            if frame["type"] == "error":
                raise RuntimeError(f"action {name} failed: {frame}")
            return frame["output"]


@asynccontextmanager
async def control(port: int) -> AsyncIterator[Protocol]:
    async with ws_connect(port, "/actors/control/main/connect") as ws:
        proto = Protocol(ws)
        await proto.init()
        yield proto


# ---------------------------------------------------------------------------- throughput


async def rtt(port: int, path: str, n: int, warmup: int) -> dict[str, Any]:
    async with ws_connect(port, path) as ws:
        for _ in range(warmup):
            await ws.send_message(MSG32)
            await ws.get_message()
        t0 = time.perf_counter()
        for _ in range(n):
            await ws.send_message(MSG32)
            await ws.get_message()
        dt = time.perf_counter() - t0
    return {"msgs_per_s": n / dt, "us_per_rtt": dt / n * 1e6}


async def pipe(port: int, path: str, n: int) -> dict[str, Any]:
    sep = "&" if "?" in path else "?"
    async with ws_connect(port, f"{path}{sep}params=%7B%22n%22%3A{n}%7D") as ws:
        t0 = time.perf_counter()
        for _ in range(n):
            await ws.send_message(MSG32)
        reply = await ws.get_message()
        dt = time.perf_counter() - t0
    assert reply == "done", reply
    return {"msgs_per_s": n / dt}


async def action(port: int, path: str, n: int, warmup: int, baseline: bool) -> dict[str, Any]:
    """Round trips of ``increment`` over /connect; the baseline echoes the same frame."""
    async with ws_connect(port, path) as ws:
        if not baseline:
            await Protocol(ws).init()
        t0 = 0.0
        for i in range(warmup + n):
            if i == warmup:
                t0 = time.perf_counter()
            frame = f'{{"type":"action","id":{i},"name":"increment","args":[]}}'
            await ws.send_message(frame)
            reply = await ws.get_message()
        dt = time.perf_counter() - t0
    assert isinstance(reply, str) and str(warmup + n - 1) in reply, reply
    return {"msgs_per_s": n / dt, "us_per_rtt": dt / n * 1e6, "last_reply": reply[:120]}


# ---------------------------------------------------------------------------- connect latency


async def connect_series(port: int, paths: list[str]) -> list[float]:
    """Sequential connects: time from TCP connect to the echo of a first 32 B message (ms);
    each connection is closed (untimed) before the next opens."""
    out = []
    for path in paths:
        with trio.fail_after(OPEN_TIMEOUT):
            t0 = time.perf_counter()
            async with ws_connect(port, path) as ws:
                await ws.send_message(MSG32)
                await ws.get_message()
                out.append((time.perf_counter() - t0) * 1e3)
    return out


async def connect(port: int, n: int, baseline: bool, tag: str) -> dict[str, Any]:
    if baseline:
        await connect_series(port, ["/actors/echo/warm/ws"] * 20)
        lat = await connect_series(port, [f"/actors/echo/awake/ws?i={i}" for i in range(n)])
        return {"baseline": percentiles(lat)}
    out: dict[str, Any] = {}
    await connect_series(port, ["/actors/echo/awake/ws"] * 20)  # wakes it; warms the path
    await connect_series(port, [f"/actors/echo/warm-{i}/ws" for i in range(20)])
    lat = await connect_series(port, ["/actors/echo/awake/ws"] * n)
    out["awake"] = percentiles(lat)
    lat = await connect_series(port, [f"/actors/echo/new{tag}-{i}/ws" for i in range(n)])
    out["new"] = percentiles(lat)
    async with control(port) as ctl:
        out["setup_wake_s"] = await ctl.call("wake_many", "echo", f"asleep{tag}-", n)
        out["setup_sleep_s"] = await ctl.call("sleep_many", "echo", f"asleep{tag}-", n)
        stats = await ctl.call("stats")
    out["awake_actors_after_sleep"] = stats["actors_by_state"]
    lat = await connect_series(port, [f"/actors/echo/asleep{tag}-{i}/ws" for i in range(n)])
    out["asleep"] = percentiles(lat)
    return out


# ---------------------------------------------------------------------------- many connections


async def open_many(
    nursery: trio.Nursery,
    port: int,
    paths: list[str],
    on_open: Any,
) -> None:
    """Open one task per path (OPEN_CONCURRENCY at a time); each runs ``on_open(i, ws)`` on
    its connection, then closes it. Returns when every connection is open."""
    gate = trio.Semaphore(OPEN_CONCURRENCY)
    opened = trio.Semaphore(0)
    failures: list[BaseException] = []

    async def one(i: int, path: str) -> None:
        await gate.acquire()
        pending = True
        try:
            async with ws_connect(port, path) as ws:
                gate.release()
                opened.release()
                pending = False
                await on_open(i, ws)
        except Exception as exc:
            if pending:
                failures.append(exc)
        finally:
            if pending:
                gate.release()
                opened.release()

    for i, path in enumerate(paths):
        nursery.start_soon(one, i, path)
    with trio.fail_after(OPEN_TIMEOUT * 4):
        for _ in paths:
            await opened.acquire()
    if failures:
        raise RuntimeError(f"{len(failures)} connections failed to open: {failures[0]!r}")


async def hold(port: int, n: int, path: str) -> dict[str, Any]:
    release = trio.Event()

    async def idle(i: int, ws: WebSocketConnection) -> None:
        await release.wait()

    async with trio.open_nursery() as nursery:
        await open_many(nursery, port, [path] * n, idle)
        await ready("held")
        release.set()
    return {"held": n}


async def await_close(ws: WebSocketConnection) -> tuple[float, int]:
    """Wait for the server's close frame: (perf_counter time, code); 1006 if none came."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as exc:
        code = int(exc.reason.code) if exc.reason is not None else 1006
        return time.perf_counter(), code


async def finalize(port: int, n: int, close_wait: float) -> dict[str, Any]:
    """One echo actor with ``n`` raw (non-hibernatable) connections; sleep it; time until
    every client has its close frame."""
    key = f"fin-{n}"
    closed: list[tuple[float, int]] = []
    all_closed = trio.Event()

    async def watch(i: int, ws: WebSocketConnection) -> None:
        if i == 0:  # prove the actor is live end to end before the trigger
            with contextlib.suppress(ConnectionClosed):  # counted below via its close code
                await ws.send_message(MSG32)
                await ws.get_message()
        closed.append(await await_close(ws))
        if len(closed) == n:
            all_closed.set()

    async with control(port) as ctl:
        async with trio.open_nursery() as nursery:
            await open_many(nursery, port, [f"/actors/echo/{key}/ws"] * n, watch)
            stats = await ctl.call("stats")
            t0 = time.perf_counter()
            sleep_error = None
            try:
                server_s = await ctl.call("sleep_actor", "echo", key)
            except RuntimeError as exc:  # e.g. actor.stopping: the sleep outran its budget
                server_s = None
                sleep_error = str(exc)[:300]
            with trio.move_on_after(close_wait):
                await all_closed.wait()
            nursery.cancel_scope.cancel()
        await trio.sleep(0.5)
        after = await ctl.call("lifecycle", "echo", key)
        after["hooks"] = {
            k: v for k, v in (await ctl.call("stats"))["hooks"].items() if k.endswith(key)
        }
    codes = collections.Counter(code for _, code in closed)
    last = max((t for t, _ in closed), default=float("nan"))
    return {
        "n": n,
        "connections_before": stats["connections"],
        "seconds": last - t0,
        "server_seconds": server_s,
        "codes": {str(k): v for k, v in codes.items()},
        "abnormal": n - codes.get(1001, 0),
        "closed": len(closed),
        "sleep_error": sleep_error,
        "actor_after": after,
    }


async def drain(port: int, actors: int, per: int, close_wait: float) -> dict[str, Any]:
    """``actors`` drainer actors with ``per`` raw connections each, one message per
    connection (state n = per); shut the registry down; time until all are closed."""
    n = actors * per
    closed: list[tuple[float, int]] = []
    all_closed = trio.Event()

    echoed = [0]
    all_echoed = trio.Event()

    async def watch(i: int, ws: WebSocketConnection) -> None:
        await ws.send_message(MSG32)
        await ws.get_message()  # echoed after the actor counted it in its state
        echoed[0] += 1
        if echoed[0] == n:
            all_echoed.set()
        closed.append(await await_close(ws))
        if len(closed) == n + 1:
            all_closed.set()

    paths = [f"/actors/drainer/d{i % actors}/ws" for i in range(n)]
    async with control(port) as ctl, trio.open_nursery() as nursery:
        await open_many(nursery, port, paths, watch)
        # Every connection's message must be echoed (counted in state) before the trigger.
        with trio.fail_after(OPEN_TIMEOUT):
            await all_echoed.wait()
        t0 = time.perf_counter()

        async def ctl_watch() -> None:
            with contextlib.suppress(ConnectionClosed):
                await ctl.call("shutdown")
            closed.append(await await_close(ctl.ws))
            if len(closed) == n + 1:
                all_closed.set()

        nursery.start_soon(ctl_watch)
        with trio.move_on_after(close_wait):
            await all_closed.wait()
        nursery.cancel_scope.cancel()
    codes = collections.Counter(code for _, code in closed)
    last = max((t for t, _ in closed), default=float("nan"))
    return {
        "connections": n,
        "seconds": last - t0,
        "codes": {str(k): v for k, v in codes.items()},
        "not_1012": n + 1 - codes.get(1012, 0),
    }


async def awake_mem(port: int, n: int) -> dict[str, Any]:
    """Memory of ``n`` awake idle actors: rows are created (asleep) and read once first, so
    the measured delta is what waking adds; the runner reads the server's RSS at each READY."""
    async with control(port) as ctl:
        await ctl.call("wake_many", "echo", "warm-", 100)  # code paths and caches warm
        precreate_s = await ctl.call("precreate", "echo", "m-", n)
        await ctl.call("collect")
        await ready("before")
        wake_s = await ctl.call("wake_many", "echo", "m-", n)
        await ctl.call("collect")
        stats = await ctl.call("stats")
        await ready("after")
    return {
        "n": n,
        "precreate_s": precreate_s,
        "wake_s": wake_s,
        "actors": stats["actors_by_state"],
    }


async def tail(
    port: int, conns: int, actors: int, rate: float, duration: float, warmup: float
) -> dict[str, Any]:
    """``conns`` raw echo connections over ``actors`` actors, each sending a 32 B message
    every 1/rate s on a fixed schedule (random phase) and waiting for its echo; round-trip
    times of messages sent after ``warmup`` s are recorded."""
    latencies: list[float] = []
    late: list[int] = [0]
    period = 1.0 / rate
    box = {"start": 0.0}
    go = trio.Event()
    sent = [0]

    async def load(i: int, ws: WebSocketConnection) -> None:
        await go.wait()
        begin = box["start"] + random.random() * period
        end = box["start"] + warmup + duration
        k = 0
        while True:
            at = begin + k * period
            if at >= end:
                break
            now = trio.current_time()
            if now > at + period:  # a whole period late: skip (counted), keep the grid
                late[0] += 1
                k += 1
                continue
            await trio.sleep_until(at)
            t0 = time.perf_counter()
            await ws.send_message(MSG32)
            await ws.get_message()
            if at >= box["start"] + warmup:
                latencies.append((time.perf_counter() - t0) * 1e3)
            sent[0] += 1
            k += 1

    paths = [f"/actors/echo/t{i % actors}/ws" for i in range(conns)]
    async with trio.open_nursery() as nursery:
        await open_many(nursery, port, paths, load)
        box["start"] = trio.current_time() + 0.5
        go.set()
    return {
        "connections": conns,
        "actors": actors,
        "rate_per_conn": rate,
        "duration_s": duration,
        "sent": sent[0],
        "skipped_late": late[0],
        **percentiles(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.client")
    p.add_argument(
        "workload",
        choices=[
            "rtt",
            "pipe",
            "action",
            "connect",
            "hold",
            "finalize",
            "drain",
            "tail",
            "awake_mem",
        ],
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/actors/echo/a/ws")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--warmup", type=float, default=1000)
    p.add_argument("--baseline", action="store_true")
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--per", type=int, default=10)
    p.add_argument("--rate", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--tag", default="", help="makes actor keys unique per run")
    a = p.parse_args(argv)
    raise_fd_limit()

    async def run() -> dict[str, Any]:
        with trio.fail_after(HARD_TIMEOUT):
            w = a.workload
            if w == "rtt":
                return await rtt(a.port, a.path, a.n, int(a.warmup))
            if w == "pipe":
                return await pipe(a.port, a.path, a.n)
            if w == "action":
                return await action(a.port, a.path, a.n, int(a.warmup), a.baseline)
            if w == "connect":
                return await connect(a.port, a.n, a.baseline, a.tag)
            if w == "hold":
                return await hold(a.port, a.n, a.path)
            if w == "finalize":
                return await finalize(a.port, a.n, a.timeout)
            if w == "drain":
                return await drain(a.port, a.actors, a.per, a.timeout)
            if w == "awake_mem":
                return await awake_mem(a.port, a.n)
            return await tail(a.port, a.n, a.actors, a.rate, a.duration, a.warmup)

    result = trio.run(run)
    print(json.dumps({"result": result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
