"""Load generator process.

``python -m benchmarks.client WORKLOAD --port P [options]``
    one run: prints ``READY <tag>`` lines (then waits for a line on stdin) where the runner
    measures the server between phases, and one final line ``{"result": {...}}``.
``python -m benchmarks.client serve``
    many runs in one process (the runner keeps one per workload, so that a run does not pay
    for a Python start-up and the imports): reads one JSON list of arguments (the argv of the
    form above) per line from stdin, runs it in a fresh ``trio.run`` and answers with the same
    lines, ``{"error": "..."}`` instead of a result if the run raised; ``gc.collect()`` between
    runs. Exits at end of input, after ``HARD_TIMEOUT`` without a command, or right after the
    result of a run with ``--abort`` (see ``exit_with``).

Result lines carry ``cpu_s``, the load generator's CPU seconds for the run.

Every loop is bounded in count, and every run by ``HARD_TIMEOUT``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import itertools
import json
import os
import random
import select
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket,
    wrap_client_stream,
)

from . import leanws
from .common import HARD_TIMEOUT, HOST, MSG32, raise_fd_limit, ws_options

OPEN_CONCURRENCY = 64
"""Connections being opened at once (the listen backlog is never the limit)."""

OPEN_TIMEOUT = 30.0

CLOSE_WAIT = 30.0
"""Bound on a client-initiated close handshake of a connection from ``open_many``."""

LIVE_TIMEOUT = 30.0
"""Bound on waiting for the server to report every opened connection live (set up on its
actor) before a finalize / drain / memory measurement."""

START_DELAY = 0.1
"""tail: the schedule starts this long after the last connection is open."""

LOAD_GRACE = 60.0
"""tail: bound on the load phase beyond its schedule (a connection still waiting for an echo
then is cancelled and counted as unfinished)."""

SETTLE = 0.25
"""finalize: wait after the last close before reading the actor's lifecycle and hook counts
(a re-wake by the teardown, as once happened, shows up within this)."""


@asynccontextmanager
async def ws_connect(port: int, path: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket(HOST, port, path, use_ssl=False, **ws_options()) as ws:
        yield ws


async def ready(tag: str) -> None:
    """Tell the runner a phase is done and wait for its go."""
    print(f"READY {tag}", flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)


RUN_CPU = [0.0]
"""``time.process_time()`` at the start of the current run (its CPU seconds go with the
result, as ``cpu_s``)."""


def exit_with(result: dict[str, Any]) -> NoReturn:
    """``--abort``: print the run's result and end the process at once, closing nothing (the
    kernel drops the connections). Used where the server is stopped right after the run: a
    load generator tearing down 10,000 connections costs seconds of CPU that measure nothing;
    the runner starts a new load generator (while it starts the next server)."""
    print(json.dumps({"result": result, "cpu_s": time.process_time() - RUN_CPU[0]}), flush=True)
    os._exit(0)


class Phases:
    """Seconds spent in each phase of a run (where a run's wall time goes)."""

    def __init__(self) -> None:
        self.out: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.out[phase] = round(now - self._last, 4)
        self._last = now


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


PAIR_CHUNKS = 20
"""Chunks per side of a paired run (``--pair-port``); a run on one server is one side of it."""


class _Side:
    """One server of a paired run: ``chunk(k)`` does k units of the workload and returns the
    seconds they took (the connection set-up of each side is not timed)."""

    def __init__(self, workload: str, port: int, path: str, action: str, baseline: bool):
        self.workload, self.port, self.path = workload, port, path
        self.action, self.baseline = action, baseline
        self.ws: WebSocketConnection | None = None
        self.next_id = 0

    async def open(self, stack: contextlib.AsyncExitStack, warmup: int) -> None:
        if self.workload == "pipe":
            await self.chunk(warmup)  # a connection per chunk: the sink answers once per one
            return
        self.ws = await stack.enter_async_context(ws_connect(self.port, self.path))
        if self.workload == "action" and not self.baseline:
            await Protocol(self.ws).init()
        await self.chunk(warmup)

    async def chunk(self, k: int) -> float:
        if self.workload == "pipe":
            sep = "&" if "?" in self.path else "?"
            path = f"{self.path}{sep}params=%7B%22n%22%3A{k}%7D"
            async with ws_connect(self.port, path) as sink:
                t0 = time.perf_counter()
                for _ in range(k):
                    await sink.send_message(MSG32)
                done = await sink.get_message()
                dt = time.perf_counter() - t0
            assert done == "done", done
            return dt
        ws = self.ws
        assert ws is not None
        t0 = time.perf_counter()
        if self.workload == "rtt":
            for _ in range(k):
                await ws.send_message(MSG32)
                await ws.get_message()
        else:
            name = self.action
            reply: str | bytes = ""
            for i in range(self.next_id, self.next_id + k):
                await ws.send_message(f'{{"type":"action","id":{i},"name":"{name}","args":[]}}')
                reply = await ws.get_message()
            self.next_id += k
            last = self.next_id - 1  # the echo has it compact, actorcore's reply with a space
            assert isinstance(reply, str) and f'"id":{last},' in reply.replace(" ", ""), reply
        return time.perf_counter() - t0


async def paired(
    workload: str,
    ports: tuple[int, ...],
    path: str,
    n: int,
    warmup: int,
    action_name: str,
    baseline: bool,
) -> dict[str, Any]:
    """``workload`` (rtt, pipe or action) on one server, or on two at once: actorcore on
    ``ports[0]`` and the baseline on ``ports[1]``, in alternating chunks of ``n /
    PAIR_CHUNKS`` (the order flips every chunk). On a host whose speed drifts from one moment
    to the next, both sides see the same drift: each side's rate is its units over its own
    summed time, and ``chunk_ratios`` are the per-chunk actorcore/baseline rate ratios. With
    one port, ``baseline`` says which server it is (the action frame is echoed, not answered)."""
    k = max(1, n // PAIR_CHUNKS)
    kinds = [baseline] if len(ports) == 1 else [False, True]
    sides = [
        _Side(workload, port, path, action_name, kind)
        for port, kind in zip(ports, kinds, strict=True)
    ]
    spent = [0.0] * len(sides)
    ratios = []
    async with contextlib.AsyncExitStack() as stack:
        for side in sides:
            await side.open(stack, warmup)
        for c in range(PAIR_CHUNKS):
            order = range(len(sides)) if c % 2 == 0 else reversed(range(len(sides)))
            took = [0.0] * len(sides)
            for i in order:
                took[i] = await sides[i].chunk(k)
                spent[i] += took[i]
            if len(sides) == 2:
                ratios.append(round(took[1] / took[0], 4))
    units = k * PAIR_CHUNKS
    result: dict[str, Any] = {"msgs_per_s": units / spent[0], "us_per_unit": spent[0] / units * 1e6}
    if len(sides) == 2:
        result["baseline_msgs_per_s"] = units / spent[1]
        result["chunk_ratios"] = ratios
    return result


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


async def connect_paired(ports: tuple[int, int], n: int, tag: str) -> dict[str, Any]:
    """The three actorcore series of :func:`connect` (on ``ports[0]``) and the baseline series
    (on ``ports[1]``), interleaved: ``PAIR_CHUNKS`` rounds, each a block of ``n /
    PAIR_CHUNKS`` connects of every series, the order rotating from round to round, so that
    every series samples the same seconds of a host whose speed drifts."""
    ours, base = ports
    await connect_series(base, ["/actors/echo/warm/ws"] * 20)
    await connect_series(ours, ["/actors/echo/awake/ws"] * 20)  # wakes it; warms the path
    await connect_series(ours, [f"/actors/echo/warm-{i}/ws" for i in range(20)])
    out: dict[str, Any] = {}
    async with control(ours) as ctl:
        out["setup_wake_s"] = await ctl.call("wake_many", "echo", f"asleep{tag}-", n)
        out["setup_sleep_s"] = await ctl.call("sleep_many", "echo", f"asleep{tag}-", n)
        stats = await ctl.call("stats")
    out["awake_actors_after_sleep"] = stats["actors_by_state"]
    k = max(1, n // PAIR_CHUNKS)
    # name -> (port, path pattern; {i} is the connect's index)
    series = {
        "baseline": (base, "/actors/echo/awake/ws?i={i}"),
        "awake": (ours, "/actors/echo/awake/ws"),
        "new": (ours, f"/actors/echo/new{tag}-{{i}}/ws"),
        "asleep": (ours, f"/actors/echo/asleep{tag}-{{i}}/ws"),
    }
    names = list(series)
    lat: dict[str, list[float]] = {name: [] for name in names}
    for c in range(PAIR_CHUNKS):
        for name in names[c % 4 :] + names[: c % 4]:
            port, pattern = series[name]
            paths = [pattern.format(i=i) for i in range(c * k, c * k + k)]
            lat[name] += await connect_series(port, paths)
    for name in names:
        out[name] = percentiles(lat[name])
    return out


# ---------------------------------------------------------------------------- many connections


async def connect_lean(readers: trio.Nursery, port: int, path: str) -> WebSocketConnection:
    """A trio-websocket client connection over a plain TCP socket, its reader task in
    ``readers``: the same ``WebSocketConnection``, handshake and reader as ``open_websocket``
    without its per-connection costs (host resolution, happy eyeballs, a nursery), which
    made the load generator, not the server, the bottleneck when opening thousands of
    connections. The caller closes it."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.connect((HOST, port))
    except BaseException:
        sock.close()
        raise
    stream = trio.SocketStream(sock)
    try:
        return await wrap_client_stream(readers, stream, f"{HOST}:{port}", path, **ws_options())
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def open_many(
    nursery: trio.Nursery,
    port: int,
    paths: list[str],
    on_open: Any,
    *,
    lean: bool = False,
) -> None:
    """Open one connection per path (OPEN_CONCURRENCY at a time, see ``connect_lean``; the
    tasks and readers run in ``nursery``); each runs ``on_open(i, ws)`` on its connection,
    then closes it (close handshake, bounded; none if ``nursery`` is cancelled). Returns when
    every connection is open. ``lean``: the connections are :mod:`benchmarks.leanws` clients
    (closed with a bounded close handshake unless the server closed first)."""
    gate = trio.Semaphore(OPEN_CONCURRENCY)
    opened = trio.Semaphore(0)
    failures: list[BaseException] = []

    async def one(i: int, path: str) -> None:
        await gate.acquire()
        try:
            ws: WebSocketConnection | leanws.LeanWebSocket
            with trio.fail_after(OPEN_TIMEOUT):
                if lean:
                    ws = await leanws.connect(HOST, port, path)
                else:
                    ws = await connect_lean(nursery, port, path)
        except Exception as exc:
            failures.append(exc)
            return
        finally:
            gate.release()
            opened.release()
        try:
            await on_open(i, ws)
        except Exception:  # e.g. ConnectionClosed: the workload counts what it needs
            pass
        finally:
            if isinstance(ws, leanws.LeanWebSocket):
                await ws.aclose(CLOSE_WAIT)
            else:
                with trio.move_on_after(CLOSE_WAIT):
                    await ws.aclose()

    for i, path in enumerate(paths):
        nursery.start_soon(one, i, path)
    with trio.fail_after(OPEN_TIMEOUT * 4):
        for _ in paths:
            await opened.acquire()
    if failures:
        raise RuntimeError(f"{len(failures)} connections failed to open: {failures[0]!r}")


def _target(path: str) -> tuple[str, str]:
    """``(name, key)`` of an ``/actors/NAME/KEY/...`` path."""
    parts = path.split("?", 1)[0].split("/")
    return parts[2], parts[3]


async def wait_live(ctl: Protocol, name: str, key: str | None, n: int) -> dict[str, Any]:
    """Ask the server to wait (bounded) until ``n`` connections to ``name``/``key`` (every key
    if None) are live on their actor; returns ``{"live": count, "waited_s": seconds}``."""
    with trio.fail_after(LIVE_TIMEOUT + 10):
        out: dict[str, Any] = await ctl.call("wait_live", name, key, n, LIVE_TIMEOUT)
    return out


async def hold(port: int, n: int, path: str, warmup: int, abort: bool) -> dict[str, Any]:
    """``warmup`` round trips on one connection (closed again), ``READY before``; ``n`` idle
    connections to ``path``, ``READY held`` once the server reports all of them live; then
    close them (``abort``: see ``exit_with``)."""
    release = trio.Event()

    async def idle(i: int, ws: WebSocketConnection) -> None:
        await release.wait()

    name, key = _target(path)
    async with control(port) as ctl:
        if warmup:
            await paired("rtt", (port,), path, warmup, 0, "", baseline=False)
        await ready("before")
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            await open_many(nursery, port, [path] * n, idle)
            open_s = time.perf_counter() - t0
            live = await wait_live(ctl, name, key, n)
            await ready("held")
            result = {"held": n, "open_s": open_s, "live": live}
            if abort:
                exit_with(result)
            release.set()
    return result


async def await_close(ws: WebSocketConnection | leanws.LeanWebSocket) -> tuple[float, int]:
    """Wait for the server's close frame: (perf_counter time, code); 1006 if none came. The
    time is when trio-websocket's ``get_message`` raised, or when the lean client read the
    frame off the socket."""
    if isinstance(ws, leanws.LeanWebSocket):
        try:
            while True:
                await ws.get_message()
        except leanws.LeanClosed as closed:
            return closed.at, closed.code
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as exc:
        code = int(exc.reason.code) if exc.reason is not None else 1006
        return time.perf_counter(), code


def arrivals(closed: list[tuple[float, int]], t0: float) -> dict[str, float]:
    """When the close frames arrived, s after ``t0``: the first, p10, p50 and p90 (the last
    is the workload's result): frames that all arrive late point at the server, frames
    spread out from an early first one at what reads them."""
    spread = sorted(t - t0 for t, _ in closed)
    if not spread:
        return {}
    picks = (("first", 0.0), ("p10", 0.1), ("p50", 0.5), ("p90", 0.9))
    return {q: round(spread[min(len(spread) - 1, int(len(spread) * f))], 4) for q, f in picks}


async def finalize(
    port: int, n: int, close_wait: float, baseline: bool, tag: str, abort: bool
) -> dict[str, Any]:
    """One echo actor with ``n`` raw (non-hibernatable) connections; once the server reports
    all ``n`` live on it, sleep it (``control.sleep_actor``); time until every client has its
    close frame. The baseline server closes its ``n`` connections of that path with 1001.
    ``abort``: see ``exit_with``."""
    key = f"fin-{n}{tag}"
    closed: list[tuple[float, int]] = []
    conns: list[leanws.LeanWebSocket] = []
    probed = trio.Event()
    release = trio.Event()

    async def watch(i: int, ws: leanws.LeanWebSocket) -> None:
        if i == 0:  # prove the actor is live end to end before the trigger
            with contextlib.suppress(leanws.LeanClosed):  # then its close is counted below
                await ws.send_message(MSG32)
                await ws.get_message()
            probed.set()
        conns.append(ws)
        await release.wait()  # its close frame is read by the CloseWatcher

    async def watch_closes(watcher: leanws.CloseWatcher) -> None:
        closed.extend(await trio.to_thread.run_sync(watcher.run, close_wait))

    after: dict[str, Any] | None = None
    phases = Phases()
    async with control(port) as ctl, trio.open_nursery() as nursery:
        t_open = time.perf_counter()
        await open_many(nursery, port, [f"/actors/echo/{key}/ws"] * n, watch, lean=True)
        open_s = time.perf_counter() - t_open
        phases.mark("open")
        live = await wait_live(ctl, "echo", key, n)
        phases.mark("live")
        with trio.move_on_after(LIVE_TIMEOUT):
            await probed.wait()
        stats = await ctl.call("stats")
        watching = len(conns)  # n, unless the probe connection was refused
        sleep_error = None
        async with trio.open_nursery() as watchers:
            watchers.start_soon(watch_closes, leanws.CloseWatcher(conns))
            t0 = time.perf_counter()
            try:
                server_s = await ctl.call("sleep_actor", "echo", key)
            except RuntimeError as exc:  # e.g. actor.stopping: the sleep outran its budget
                server_s = None
                sleep_error = str(exc)[:300]
            phases.mark("sleep_actor")
        phases.mark("all_closed")
        release.set()
        if not baseline:
            await trio.sleep(SETTLE)
            after = await ctl.call("lifecycle", "echo", key)
            hooks = (await ctl.call("stats"))["hooks"]
            after["hooks"] = {k: v for k, v in hooks.items() if k.split(":", 1)[1] == key}
        phases.mark("after")
        codes = collections.Counter(code for _, code in closed)
        last = max((t for t, _ in closed), default=float("nan"))
        result = {
            "n": n,
            "open_s": open_s,
            "live_before": live,
            "connections_before": stats["connections"],
            "seconds": last - t0,
            "close_arrivals_s": arrivals(closed, t0),
            "server_seconds": server_s,
            "codes": {str(k): v for k, v in codes.items()},
            "abnormal": n - codes.get(1001, 0),
            "closed": len(closed),
            "watched": watching,
            "sleep_error": sleep_error,
            "actor_after": after,
            "phases": phases.out,
        }
        if abort:
            exit_with(result)
        nursery.cancel_scope.cancel()
    return result


async def drain(port: int, actors: int, per: int, close_wait: float, abort: bool) -> dict[str, Any]:
    """``actors`` drainer actors with ``per`` raw connections each, one message per
    connection (state n = per); once the server reports all of them live, shut the registry
    down (the baseline server: close every connection with 1012); time until all are
    closed. ``abort``: see ``exit_with``."""
    n = actors * per
    closed: list[tuple[float, int]] = []
    all_closed = trio.Event()

    echoed = [0]
    all_echoed = trio.Event()

    async def watch(i: int, ws: leanws.LeanWebSocket) -> None:
        await ws.send_message(MSG32)
        await ws.get_message()  # echoed after the actor counted it in its state
        echoed[0] += 1
        if echoed[0] == n:
            all_echoed.set()
        closed.append(await await_close(ws))
        if len(closed) == n + 1:
            all_closed.set()

    paths = [f"/actors/drainer/d{i % actors}/ws" for i in range(n)]
    phases = Phases()
    async with control(port) as ctl, trio.open_nursery() as nursery:
        t_open = time.perf_counter()
        await open_many(nursery, port, paths, watch, lean=True)
        open_s = time.perf_counter() - t_open
        phases.mark("open")
        # Every connection's message must be echoed (counted in state) before the trigger.
        with trio.fail_after(OPEN_TIMEOUT):
            await all_echoed.wait()
        phases.mark("echoed")
        live = await wait_live(ctl, "drainer", None, n)
        phases.mark("live")
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
        phases.mark("all_closed")
        codes = collections.Counter(code for _, code in closed)
        last = max((t for t, _ in closed), default=float("nan"))
        result = {
            "connections": n,
            "open_s": open_s,
            "live_before": live,
            "phases": phases.out,
            "seconds": last - t0,
            "close_arrivals_s": arrivals(closed, t0),
            "codes": {str(k): v for k, v in codes.items()},
            "not_1012": n + 1 - codes.get(1012, 0),
        }
        if abort:
            exit_with(result)
        nursery.cancel_scope.cancel()
    return result


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
    port: int,
    conns: int,
    actors: int,
    rate: float,
    duration: float,
    warmup: float,
    abort: bool,
) -> dict[str, Any]:
    """``conns`` raw echo connections over ``actors`` actors, each sending a 32 B message
    every 1/rate s on a fixed schedule (random phase) and waiting for its echo; round-trip
    times of messages sent after ``warmup`` s are recorded. Then the connections are closed
    (``abort``: see ``exit_with``).

    The clients are :mod:`benchmarks.leanws` connections: with trio-websocket's client (a
    reader task, wsproto and a channel per connection) the load generator's CPU ran out
    before either server's, so the row timed the load generator's queue."""
    latencies: list[float] = []
    late: list[int] = [0]
    period = 1.0 / rate
    box = {"start": 0.0}
    go = trio.Event()
    sent = [0]
    finished = [0]
    all_finished = trio.Event()
    release = trio.Event()

    async def schedule(ws: leanws.LeanWebSocket) -> None:
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

    async def load(i: int, ws: leanws.LeanWebSocket) -> None:
        try:
            await schedule(ws)
        finally:
            finished[0] += 1
            if finished[0] == conns:
                all_finished.set()
        await release.wait()

    paths = [f"/actors/echo/t{i % actors}/ws" for i in range(conns)]
    async with trio.open_nursery() as nursery:
        await open_many(nursery, port, paths, load, lean=True)
        # Every task is past ``go`` well within this; the warm-up absorbs the rest.
        box["start"] = trio.current_time() + START_DELAY
        go.set()
        with trio.move_on_after(START_DELAY + warmup + duration + LOAD_GRACE):
            await all_finished.wait()
        result = {
            "connections": conns,
            "actors": actors,
            "rate_per_conn": rate,
            "duration_s": duration,
            "sent": sent[0],
            "skipped_late": late[0],
            "unfinished": conns - finished[0],
            **percentiles(latencies),
        }
        if abort:
            exit_with(result)
        if finished[0] < conns:
            nursery.cancel_scope.cancel()
        else:
            release.set()  # close handshakes (bounded by CLOSE_WAIT)
    return result


WORKLOADS = ("rtt", "pipe", "action", "connect", "hold", "finalize", "drain", "tail", "awake_mem")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.client")
    p.add_argument("workload", choices=[*WORKLOADS, "serve"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--path", default="/actors/echo/a/ws")
    p.add_argument("--action", default="increment", help="action: the action to call")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--warmup", type=float, default=1000)
    p.add_argument("--baseline", action="store_true")
    p.add_argument(
        "--pair-port",
        type=int,
        default=0,
        help="rtt, pipe, action, connect: also run the baseline server on this port, "
        "interleaved with --port in alternating chunks (see paired(), connect_paired())",
    )
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--per", type=int, default=10)
    p.add_argument("--rate", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--tag", default="", help="makes actor keys unique per run")
    p.add_argument(
        "--abort",
        action="store_true",
        help="hold, tail, finalize, drain: exit the process right after the result, closing "
        "nothing (the server is stopped next)",
    )
    return p


async def run_one(a: argparse.Namespace) -> dict[str, Any]:
    with trio.fail_after(HARD_TIMEOUT):
        w = a.workload
        ports = (a.port, a.pair_port) if a.pair_port else (a.port,)
        if w in ("rtt", "pipe", "action"):
            return await paired(w, ports, a.path, a.n, int(a.warmup), a.action, a.baseline)
        if w == "connect":
            if not a.pair_port:
                raise ValueError("connect compares two servers: give --pair-port")
            return await connect_paired((a.port, a.pair_port), a.n, a.tag)
        if a.pair_port:
            raise ValueError(f"--pair-port does not apply to {w}")
        if w == "hold":
            return await hold(a.port, a.n, a.path, int(a.warmup), a.abort)
        if w == "finalize":
            return await finalize(a.port, a.n, a.timeout, a.baseline, a.tag, a.abort)
        if w == "drain":
            return await drain(a.port, a.actors, a.per, a.timeout, a.abort)
        if w == "awake_mem":
            return await awake_mem(a.port, a.n)
        return await tail(a.port, a.n, a.actors, a.rate, a.duration, a.warmup, a.abort)


def serve() -> int:
    """Run one command line after another (see the module docstring)."""
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], HARD_TIMEOUT)
        if not readable:
            return 1
        line = sys.stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        try:
            args = parser().parse_args(json.loads(line))
            if args.workload == "serve":
                raise ValueError("serve inside serve")
            RUN_CPU[0] = time.process_time()
            out: dict[str, Any] = {"result": trio.run(run_one, args)}
            out["cpu_s"] = time.process_time() - RUN_CPU[0]
        except (Exception, SystemExit) as exc:  # report it; the next command gets a clean run
            out = {"error": repr(exc)[:2000]}
        print(json.dumps(out), flush=True)
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    raise_fd_limit()
    if a.workload == "serve":
        return serve()
    RUN_CPU[0] = time.process_time()
    result = trio.run(run_one, a)
    print(json.dumps({"result": result, "cpu_s": time.process_time() - RUN_CPU[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
