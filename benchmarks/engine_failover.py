"""Failover after SIGKILL through a real Rivet engine: ``python -m benchmarks.engine_failover``.

One engine with its default lost threshold (15 s), two actorcore envoy processes
(``actorcore serve benchmarks.engine_failover:registry --engine URL``) in one pool. ``N``
actors are created while only the first envoy runs, each gets three ``add`` calls (each saved
to the engine before it answers), the second envoy starts, the first is killed with SIGKILL,
and a client reconnects to every actor through the gateway until it answers again. Prints one
JSON line: the time from the kill until every actor answered, the engine's lost threshold, and
how many answered (saved) changes were missing afterwards (the issue's targets: failover
within the lost threshold + 5 s, none lost).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket

import actorcore
from actorcore import ActorContext, ActorOptions

from .engine import ROOT, start_engine, stop_process

POOL = "failover"
HOST = "127.0.0.1"


class Ledger(actorcore.Actor):
    """An ``add`` answers only once it is saved in the engine."""

    name = "ledger"
    options = ActorOptions(sleep_timeout=3600, state_save_interval=3600)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"total": 0, "adds": 0}

    @actorcore.action
    async def add(self, ctx: ActorContext, n: int) -> int:
        ctx.state["total"] += n
        ctx.state["adds"] += 1
        await ctx.save_state()
        return int(ctx.state["total"])

    @actorcore.action
    async def read(self, ctx: ActorContext) -> dict[str, int]:
        return dict(ctx.state)


registry = actorcore.Registry([Ledger])


def _envoy(url: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "actorcore", "serve", "benchmarks.engine_failover:registry",
             "--engine", url, "--pool", POOL],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def _ready(log: Path, process: subprocess.Popen[bytes]) -> None:
    path = trio.Path(log)
    with trio.fail_after(30):
        while b"as envoy" not in await path.read_bytes():
            if process.poll() is not None:
                raise RuntimeError(await path.read_text())
            await trio.sleep(0.05)


@asynccontextmanager
async def _actor(port: int, key: str) -> AsyncIterator[WebSocketConnection]:
    resource = (
        f"/gateway/ledger/connect?rvt-namespace=default&rvt-method=getOrCreate"
        f"&rvt-runner={POOL}&rvt-key={key}&rvt-crash-policy=sleep"
    )
    async with open_websocket(HOST, port, resource, use_ssl=False, subprotocols=["rivet"]) as ws:
        frame = json.loads(await ws.get_message())
        if frame.get("type") != "init":
            raise RuntimeError(f"expected init, got {frame}")
        yield ws


async def _call(ws: WebSocketConnection, frame_id: int, name: str, *args: Any) -> Any:
    await ws.send_message(
        json.dumps({"type": "action", "id": frame_id, "name": name, "args": args})
    )
    while True:
        frame = json.loads(await ws.get_message())
        if frame.get("id") == frame_id:
            if frame["type"] != "action_result":
                raise RuntimeError(f"{name}: {frame}")
            return frame["output"]


async def _back(port: int, key: str) -> dict[str, int]:
    """Reconnect until the actor answers again."""
    while True:
        try:
            with trio.fail_after(10):
                async with _actor(port, key) as ws:
                    state: dict[str, int] = await _call(ws, 1, "read")
                    return state
        except (ConnectionClosed, HandshakeError, OSError, trio.TooSlowError):
            await trio.sleep(0.2)


async def measure(actors: int, folder: Path) -> dict[str, Any]:
    engine = start_engine(folder, folder / "engine.log")
    first = second = None
    try:
        first = _envoy(engine.url, folder / "a.log")
        await _ready(folder / "a.log", first)
        expected: dict[str, int] = {}
        for i in range(actors):
            key = f"k{i}"
            while True:
                try:
                    async with _actor(engine.port, key) as ws:
                        for n in (1, 2, 3):
                            expected[key] = await _call(ws, n, "add", n)
                        break
                except ConnectionClosed:
                    # The engine's own placement can time out on a loaded host; retried (an
                    # add is only sent after the init, so none is applied twice here).
                    if key in expected:
                        raise
        second = _envoy(engine.url, folder / "b.log")
        await _ready(folder / "b.log", second)
        first.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        states: dict[str, dict[str, int]] = {}

        async def back(key: str) -> None:
            states[key] = await _back(engine.port, key)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for key in expected:
                    nursery.start_soon(back, key)
        elapsed = time.monotonic() - killed
        lost = sum(
            1 for key, total in expected.items() if states[key] != {"total": total, "adds": 3}
        )
        return {"actors": actors, "failover_s": round(elapsed, 2), "lost": lost,
                "lost_threshold_s": 15.0}  # fmt: skip
    finally:
        for process in (first, second):
            if process is not None:
                stop_process(process)
        stop_process(engine.process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="actorcore-failover-") as tmp:
        print(json.dumps(trio.run(measure, args.actors, Path(tmp))))


if __name__ == "__main__":
    main()
