"""The hardening attacks, re-run against a real server process (bounded, about a minute).

Not part of the test run (pytest collects only ``test_*.py``). Run it from the checkout::

    python -m tests.soak.attacks [--json]

The driver starts ``python -m tests.soak.attacks serve`` (a registry on a SQLite file whose
``authorize`` gate refuses every connection without ``?params={"token": "let-me-in"}``,
served on 127.0.0.1 port 0 with ``ping_interval=1``, ``ping_timeout=1`` and
``max_connections_per_client=200``) and, from loopback addresses of its own:

1. **refused connects**: 3,000 upgrades to new keys without a token. Verdict: no actor row in
   the store, the server still serves.
2. **unfinished fragments**: 1,000 connections each send 60 KB of a fragmented message that
   never finishes (under the actors' 64 KiB ``max_message_size``). Reported: server RSS per
   1,000 such connections. Then each sends 10 KB more (crossing the limit): every one must be
   closed with 1009 as the bytes arrive. RSS after they are gone is reported too.
3. **one address at its maximum**: 127.0.0.2 holds 200 connections (its limit) and asks for 50
   more; verdict: those 50 get 1013, and a client from 127.0.0.1 is still served.
4. **half-open handshakes**: 127.0.0.3 opens 1,000 sockets and sends nothing; verdict: a client
   from 127.0.0.1 is still served while they are open, and no accept error.
5. **dead peers**: 200 upgraded connections that never read or answer; verdict: every one is
   closed by the server within ``ping_interval + ping_timeout`` (+0.5 s of slack for the
   timer and the load) after its last byte.

Prints a report (JSON with ``--json``); exit status 1 if a verdict fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
import trio

import actorcore
from actorcore import ActorContext, ConnectRequest, Forbidden

from ..reliability._wire import OP_CONT, OP_TEXT, RawClient, encode_frame, upgrade_request

TOKEN = "let-me-in"
PING = 1.0
PER_CLIENT = 200


class Room(actorcore.Actor):
    """A raw echo actor with a little state."""

    name = "room"

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"messages": 0}

    async def on_ws_message(
        self, ctx: ActorContext, conn: actorcore.Conn, message: str | bytes
    ) -> None:
        ctx.state["messages"] += 1
        await conn.send(message)


async def authorize(request: ConnectRequest) -> None:
    """Refuse every connection without the token in its params."""
    params = request.params
    if not isinstance(params, dict) or params.get("token") != TOKEN:
        raise Forbidden("auth.forbidden")


async def _serve(db: str) -> None:
    registry = actorcore.Registry(
        [Room], store=actorcore.SQLiteStore(db), authorize=authorize, create_rate=None
    )
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: registry.serve(
                "127.0.0.1",
                0,
                ping_interval=PING,
                ping_timeout=PING,
                max_connections_per_client=PER_CLIENT,
                task_status=task_status,
            )
        )
        print(f"PORT {server.port}", flush=True)
        with trio.open_signal_receiver(15) as signals:
            async for _ in signals:
                registry.request_shutdown()
                break


# ---------------------------------------------------------------- the driver

TOKEN_PARAMS = "?params=%7B%22token%22%3A%22let-me-in%22%7D"


@contextlib.asynccontextmanager
async def client(port: int, local: str = "127.0.0.1") -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
    async with RawClient(stream) as raw:
        yield raw


async def legit_round_trip(port: int) -> float:
    """Upgrade with the token, echo once, close: seconds taken."""
    started = time.perf_counter()
    with trio.fail_after(10):
        async with client(port) as raw:
            assert await raw.handshake(f"/actors/room/legit/ws{TOKEN_PARAMS}".encode()) == 101
            await raw.send(encode_frame(OP_TEXT, b"hello"))
            frame = await raw.read_frame()
            assert frame is not None and frame.payload == b"hello", frame
    return time.perf_counter() - started


async def refused_connects(port: int, n: int) -> dict[str, Any]:
    codes: dict[str, int] = {}

    async def one(i: int, limiter: trio.CapacityLimiter) -> None:
        async with limiter, client(port) as raw:
            status = await raw.handshake(f"/actors/room/key-{i}/ws".encode())
            if status != 101:
                codes[f"http {status}"] = codes.get(f"http {status}", 0) + 1
                return
            _, close = await raw.read_until_close()
            codes[f"{close[0]} {close[1]}"] = codes.get(f"{close[0]} {close[1]}", 0) + 1

    limiter = trio.CapacityLimiter(100)
    started = time.perf_counter()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i, limiter)
    return {"connects": n, "closes": codes, "seconds": round(time.perf_counter() - started, 2)}


async def unfinished_fragments(port: int, n: int, proc: psutil.Process) -> dict[str, Any]:
    before = proc.memory_info().rss
    ready = trio.Semaphore(0)
    cross = trio.Event()
    closes: list[tuple[int, str]] = []

    async def one(i: int) -> None:
        local = f"127.0.1.{i % 200 + 1}"  # spread over addresses: per-client limit
        async with client(port, local) as raw:
            target = f"/actors/room/frag-{i % 50}/ws{TOKEN_PARAMS}".encode()
            assert await raw.handshake(target) == 101
            await raw.send(encode_frame(OP_TEXT, b"x" * 60_000, fin=False))
            ready.release()
            await cross.wait()
            await raw.send(encode_frame(OP_CONT, b"y" * 10_000, fin=False))
            closes.append((await raw.read_until_close())[1])

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
            for _ in range(n):
                await ready.acquire()
            await trio.sleep(0.5)  # the server reads the last fragments
            held = proc.memory_info().rss
            cross.set()
    await trio.sleep(0.5)
    after = proc.memory_info().rss
    return {
        "connections": n,
        "rss_mb_before": round(before / 2**20, 1),
        "rss_mb_held": round(held / 2**20, 1),
        "mb_per_1000_unfinished": round((held - before) / 2**20 * 1000 / n, 1),
        "rss_mb_after_close": round(after / 2**20, 1),
        "closed_1009": sum(1 for c in closes if c == (1009, "message.too_large")),
        "other_closes": [c for c in closes if c != (1009, "message.too_large")][:5],
    }


async def one_address_at_its_maximum(port: int) -> dict[str, Any]:
    refused = 0
    async with contextlib.AsyncExitStack() as stack:
        held = []
        for _ in range(PER_CLIENT):
            raw = await stack.enter_async_context(client(port, "127.0.0.2"))
            assert await raw.handshake(f"/actors/room/held/ws{TOKEN_PARAMS}".encode()) == 101
            held.append(raw)
        for _ in range(50):
            async with client(port, "127.0.0.2") as extra:
                if await extra.handshake(f"/actors/room/held/ws{TOKEN_PARAMS}".encode()) == 101:
                    _, close = await extra.read_until_close()
                    refused += close == (1013, "actor.overloaded")
        legit = await legit_round_trip(port)
    return {"held": len(held), "extra_refused_1013": refused, "legit_seconds": round(legit, 4)}


async def half_open_handshakes(port: int, n: int) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(n):
            stream = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.3")
            await stack.enter_async_context(stream)
        await trio.sleep(0.5)
        legit = await legit_round_trip(port)
    return {"half_open": n, "legit_seconds": round(legit, 4)}


async def dead_peers(port: int, n: int) -> dict[str, Any]:
    waits: list[float] = []

    async def one(i: int) -> None:
        local = f"127.0.2.{i % 200 + 1}"
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
        async with stream:
            await stream.send_all(upgrade_request(f"/actors/room/dead/ws{TOKEN_PARAMS}".encode()))
            last = time.perf_counter()
            # Never read frames: only wait for EOF (the kernel buffers what the server sends).
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
            waits.append(time.perf_counter() - last)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
    waits.sort()
    return {
        "peers": n,
        "reaped": len(waits),
        "max_seconds_to_reap": round(waits[-1], 3),
        "p50_seconds_to_reap": round(waits[len(waits) // 2], 3),
        "bound_seconds": PING + PING,
    }


def _rows(db: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables)


async def drive(port: int, proc: psutil.Process, db: str) -> dict[str, Any]:
    report: dict[str, Any] = {}
    rows_before = _rows(db)
    report["refused_connects"] = await refused_connects(port, 3000)
    report["refused_connects"]["store_rows_added"] = _rows(db) - rows_before
    report["refused_connects"]["legit_seconds_after"] = round(await legit_round_trip(port), 4)
    report["unfinished_fragments"] = await unfinished_fragments(port, 1000, proc)
    report["one_address_at_its_maximum"] = await one_address_at_its_maximum(port)
    report["half_open_handshakes"] = await half_open_handshakes(port, 1000)
    report["dead_peers"] = await dead_peers(port, 200)
    return report


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    refused = report["refused_connects"]
    frag = report["unfinished_fragments"]
    full = report["one_address_at_its_maximum"]
    dead = report["dead_peers"]
    return {
        # At most one row: the legit client's own actor.
        "no actor created by a refused connection": refused["store_rows_added"] <= 1
        and refused["closes"] == {"1008 auth.forbidden": refused["connects"]},
        "every crossing fragment closed 1009": frag["closed_1009"] == frag["connections"],
        "extra connections of a full address get 1013": full["extra_refused_1013"] == 50,
        "dead peers reaped within ping_interval + ping_timeout": dead["reaped"] == dead["peers"]
        and dead["max_seconds_to_reap"] <= dead["bound_seconds"] + 0.5,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.attacks")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "serve"])
    parser.add_argument("--db")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.command == "serve":
        trio.run(_serve, args.db)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "attacks.db")
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.soak.attacks", "serve", "--db", db],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            match = re.match(r"PORT (\d+)", line)
            if match is None:
                raise RuntimeError(f"server did not start: {line!r}")
            report = trio.run(drive, int(match.group(1)), psutil.Process(server.pid), db)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    report["verdicts"] = verdicts(report)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0 if all(report["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
