"""The cost of the output gate (issue 21): ``python -m benchmarks.gate [--quick] [--reps N]``.

Two servers of the same counter actor on SQLite, one with ``durable_outputs=True`` (every
answer waits until the state it follows is committed) and one with ``durable_outputs=False``
(answers leave at once; the state is saved on its interval). Each runs in a process of its own
pinned to CPU 0 (``python -m benchmarks.gate serve``); the load runs in one pinned to CPU 1
(``python -m benchmarks.gate load``). Gated and ungated alternate within each repetition.

Workloads, action round trips over ``/connect?seq=1`` (each connection sends its next call
when the previous one is answered, acknowledging the answers it got, as actorcore's client
does):

* ``1 connection``: latency-bound; every gated answer waits for its own commit;
* ``64 connections`` on 64 actors: the saves of many actors are grouped into one
  transaction (SQLite WAL, ``synchronous=NORMAL``; ``actorcore/durability.py``);
* ``256 connections`` on 64 actors: bigger batches, a CPU-bound server;
* ``64 connections`` on one actor: one actor's saves cover every answer made before they began.

``--http``: the same workloads as HTTP actions (``POST .../actions/increment`` on keep-alive
connections), whose answers the gate holds too.

Prints a Markdown table (median [min - max] of the runs, and the gated/ungated ratio) and
writes ``benchmarks/results/gate.json`` (``gate-http.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import h11
import trio
from trio_websocket import open_websocket

from .common import CLIENT_CPU, SERVER_CPU, pin

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------------------- server


async def serve(port: int, db: str, gated: bool, seconds: float) -> None:
    import actorcore
    from actorcore import ActorContext, ActorOptions

    class Counter(actorcore.Actor):
        name = "counter"
        options = ActorOptions(durable_outputs=gated, sleep_timeout=600.0)

        def create_state(self, ctx: ActorContext, input: Any) -> Any:
            return {"count": 0}

        @actorcore.action
        async def increment(self, ctx: ActorContext) -> int:
            ctx.state["count"] += 1
            return int(ctx.state["count"])

    store = actorcore.SQLiteStore(db)
    registry = actorcore.Registry([Counter], store=store)

    async def announce(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await registry.serve("127.0.0.1", port, task_status=task_status)

    # ``--for S``: stop after S seconds (for profiling: ``python -m cProfile -m benchmarks.gate
    # serve --for 10 ...`` then writes its profile).
    with trio.move_on_after(seconds or float("inf")):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(announce)
            print(json.dumps({"port": server.port}), flush=True)
            await trio.sleep_forever()
    from actorcore.registry import host_of

    saves = host_of(registry).durable_saves
    stats = attrs.asdict(store.statistics())
    stats.update(batches=saves.batches, batched=saves.saves, batch_seconds=saves.seconds)
    print(json.dumps(stats), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- load


async def load(port: int, conns: int, actors: int, seconds: float) -> dict[str, Any]:
    done = 0
    latencies: list[float] = []
    stop_at = 0.0

    async def one(i: int) -> None:
        nonlocal done
        # As actorcore's client connects: numbered outputs, each call acknowledging the
        # answers before it (so the server's journal of each connection stays small).
        path = f"/actors/counter/k{i % actors}/connect?seq=1"
        async with open_websocket("127.0.0.1", port, path, use_ssl=False) as ws:
            await ws.get_message()  # init
            n = seq = 0
            while trio.current_time() < stop_at:
                n += 1
                started = time.perf_counter()
                frame = {"type": "action", "id": n, "name": "increment", "args": [], "ack": seq}
                await ws.send_message(json.dumps(frame))
                answer = json.loads(await ws.get_message())
                assert answer["type"] == "action_result", answer
                seq = answer.get("seq", 0)
                latencies.append(time.perf_counter() - started)
                done += 1

    # Warm up (actors awake, connections open) is part of each connection's first call; the
    # measured window starts once every connection answered once.
    stop_at = trio.current_time() + seconds
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(conns):
            nursery.start_soon(one, i)
    return _summary(done, time.perf_counter() - started, latencies)


def _summary(done: int, elapsed: float, latencies: list[float]) -> dict[str, Any]:
    """Calls per second and latency percentiles of one load run."""
    latencies.sort()
    return {
        "calls_per_s": done / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


async def load_http(port: int, conns: int, actors: int, seconds: float) -> dict[str, Any]:
    """The same calls as HTTP actions (``POST /actors/counter/{key}/actions/increment``), one
    at a time on each keep-alive connection (opened again when the server ends it, after
    ``http_max_requests``)."""
    done = 0
    latencies: list[float] = []
    refused: dict[int, int] = {}
    """Answers other than 200, by status (a 503 at the server's connection limit while
    connections are replaced)."""
    stop_at = trio.current_time() + seconds

    async def one(i: int) -> None:
        nonlocal done
        target = f"/actors/counter/k{i % actors}/actions/increment"
        headers = [("host", f"127.0.0.1:{port}"), ("content-length", "0")]
        while trio.current_time() < stop_at:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                while trio.current_time() < stop_at:
                    started = time.perf_counter()
                    data = conn.send(h11.Request(method="POST", target=target, headers=headers))
                    await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
                    status = 0
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            conn.receive_data(await stream.receive_some(65536))
                        elif isinstance(event, h11.Response):
                            status = event.status_code
                        elif isinstance(event, h11.EndOfMessage):
                            break
                    if status == 200:
                        latencies.append(time.perf_counter() - started)
                        done += 1
                    else:
                        refused[status] = refused.get(status, 0) + 1
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        break  # the server closes this connection: open another
                    conn.start_next_cycle()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(conns):
            nursery.start_soon(one, i)
    return {**_summary(done, time.perf_counter() - started, latencies), "refused": refused}


# ---------------------------------------------------------------------------- driver


def _pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if (os.cpu_count() or 1) > 1 else argv


def run_cell(
    gated: bool, conns: int, actors: int, seconds: float, http: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "gate.db")
        server = subprocess.Popen(
            _pinned(
                SERVER_CPU,
                [sys.executable, "-m", "benchmarks.gate", "serve", "--db", db]
                + (["--gated"] if gated else []),
            ),
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert server.stdout is not None
            port = json.loads(server.stdout.readline())["port"]
            out = subprocess.run(
                _pinned(
                    CLIENT_CPU,
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.gate",
                        "load",
                        "--port",
                        str(port),
                        "--conns",
                        str(conns),
                        "--actors",
                        str(actors),
                        "--seconds",
                        str(seconds),
                        *(["--http"] if http else []),
                    ],
                ),
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
                timeout=seconds + 60,
            )
            return dict(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            server.terminate()
            server.wait(timeout=30)


def _cell(values: list[float], fmt: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{fmt.format(mid)} [{fmt.format(low)} - {fmt.format(high)}]"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate")
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "serve", "load"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=0)
    parser.add_argument("--db", default="")
    parser.add_argument("--gated", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--for", dest="serve_for", type=float, default=0.0)
    parser.add_argument(
        "--http", action="store_true", help="HTTP actions instead of WebSocket calls"
    )
    a = parser.parse_args()
    if a.mode == "serve":
        pin(SERVER_CPU)
        trio.run(serve, a.port, a.db, a.gated, a.serve_for)
        return 0
    if a.mode == "load":
        generate = load_http if a.http else load
        print(json.dumps(trio.run(generate, a.port, a.conns, a.actors, a.seconds)))
        return 0
    reps = a.reps or (1 if a.quick else 3)
    seconds = 2.0 if a.quick else 5.0
    workloads = [
        ("1 connection", 1, 1),
        ("64 connections, 64 actors", 64, 64),
        ("256 connections, 64 actors", 256, 64),
        ("64 connections, 1 actor", 64, 1),
    ]
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for label, conns, actors in workloads:
        runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for _ in range(reps):
            for gated in (True, False):
                runs[gated].append(run_cell(gated, conns, actors, seconds, a.http))
        gated_rate = [r["calls_per_s"] for r in runs[True]]
        plain_rate = [r["calls_per_s"] for r in runs[False]]
        ratio = statistics.median(gated_rate) / statistics.median(plain_rate)
        rows.append(
            {
                "workload": label,
                "gated": runs[True],
                "ungated": runs[False],
                "ratio": ratio,
            }
        )
        print(
            f"| {label} | {_cell(gated_rate, '{:,.0f}')} | {_cell(plain_rate, '{:,.0f}')} "
            f"| {ratio:.2f} x | {_cell([r['p50_ms'] for r in runs[True]], '{:.2f}')} ms "
            f"| {_cell([r['p50_ms'] for r in runs[False]], '{:.2f}')} ms |",
            flush=True,
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("gate-http.json" if a.http else "gate.json")).write_text(
        json.dumps({"started": started, "reps": reps, "seconds": seconds, "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
