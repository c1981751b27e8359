"""Process death: ``python -m actorcore serve`` with SQLite, killed with SIGKILL mid-write and
restarted, and stopped with SIGTERM.

SIGKILL (repeated ``KILL_CYCLES`` times): the state after the restart is the last saved state
or newer (never older than a save that returned), ``PRAGMA integrity_check`` is ok, and an
``actorcore.client`` connection, which sees 1006, reconnects with backoff and continues from the
stored state.

SIGTERM: every connection gets 1012 ``runtime.shutdown``, the process exits 0, and every
acknowledged write is saved (the ``lazy`` actor never saves on its own, so what is stored
was saved by the drain); a client reconnects once a server is back.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

import actorcore
from tests._clients import tcp_websocket

from ._support import tally

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.reliability._app:registry"
#: SIGKILL/restart cycles: a few in CI, more with ``ACTORCORE_HYPOTHESIS_PROFILE=long``.
KILL_CYCLES = 10 if os.environ.get("ACTORCORE_HYPOTHESIS_PROFILE") == "long" else 2

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Server:
    """One ``actorcore serve`` subprocess."""

    def __init__(self, proc: trio.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.port = 0

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_listening(self) -> None:
        assert self.proc.stdout is not None
        buffer = b""
        with trio.fail_after(10):
            while b"\n" not in buffer:
                chunk = await self.proc.stdout.receive_some()
                assert chunk, f"the server exited before listening:\n{self.stderr()}"
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode()
        assert line.startswith("actorcore: serving "), line
        self.port = int(line.split(" on ws://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])

    async def exit_code(self, within: float = 10) -> int:
        with trio.fail_after(within):
            return await self.proc.wait()


@asynccontextmanager
async def serve(db: Path, log: Path, app: str = APP) -> AsyncIterator[Server]:
    stderr: IO[bytes]
    with log.open("ab") as stderr:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "actorcore", "serve", app, "--port", "0", "--store", str(db)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
        )
        try:
            server = Server(proc, log)
            await server.wait_listening()
            yield server
        finally:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
                if proc.stdout is not None:
                    await proc.stdout.aclose()


async def closed_with(ws: WebSocketConnection) -> tuple[int, str]:
    with trio.fail_after(10):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return int(exc.reason.code), exc.reason.reason or ""


async def inspect_db(db: Path) -> tuple[str, dict[tuple[str, str], int]]:
    """``PRAGMA integrity_check`` and the stored ``n`` of every actor."""

    def read() -> tuple[str, dict[tuple[str, str], int]]:
        conn = sqlite3.connect(db)
        try:
            (check,) = conn.execute("PRAGMA integrity_check").fetchone()
            rows = conn.execute("SELECT name, key, state FROM actors").fetchall()
        finally:
            conn.close()
        return str(check), {
            (name, key): int(json.loads(state)["n"])
            for name, key, state in rows
            if state and "n" in json.loads(state)
        }

    return await trio.to_thread.run_sync(read)


class Target:
    """Where the reconnecting client connects: the port of the server running now."""

    def __init__(self) -> None:
        self.port = 0

    async def open_stream(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)


def client(target: Target, name: str, key: str) -> actorcore.client.ActorConnection:
    return actorcore.client.connect(
        "ws://127.0.0.1:1",  # the host only goes into the Host header
        name,
        key,
        open_stream=target.open_stream,
        initial_backoff=0.05,
        max_backoff=0.3,
        connect_timeout=5,
        call_timeout=5,
    )


async def test_sigkill_mid_writes_then_restart(tmp_path: Path) -> None:
    """``KILL_CYCLES`` times: write through a reconnecting client, SIGKILL the server in the
    middle of the writes, check the file, restart; the client reconnects on its own."""
    db, log = tmp_path / "death.db", tmp_path / "server.log"
    target = Target()
    incs_sent = 0
    durable_floor = 0  # the count returned by the last save that completed
    n = 0  # the stored count after the last kill

    async def writer(actor: actorcore.client.ActorConnection, scope: trio.CancelScope) -> None:
        nonlocal incs_sent, durable_floor
        with scope:
            try:
                while True:
                    incs_sent += 1
                    if await actor.call("inc") % 25 == 0:
                        durable_floor = await actor.call("save")
            except actorcore.ActorError:
                pass  # the call in flight when the server died

    with trio.fail_after(10 + 5 * KILL_CYCLES):
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(serve(db, log))
            target.port = server.port
            actor = await stack.enter_async_context(client(target, "durable", "k"))
            for cycle in range(KILL_CYCLES):
                if cycle:
                    # Restart on the same file; the client reconnects by itself (1006: backoff).
                    server = await stack.enter_async_context(serve(db, log))
                    target.port = server.port
                    with trio.fail_after(5):
                        while actor.statistics().connects < cycle + 1:  # noqa: ASYNC110
                            await trio.sleep(0.01)
                    assert await actor.call("get") == n, "continues from the stored state"
                async with tcp_websocket(server.port, "/actors/durable/k/connect") as watcher:
                    assert json.loads(await watcher.get_message())["type"] == "init"
                    scope = trio.CancelScope()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(writer, actor, scope)
                        with trio.fail_after(5):
                            while durable_floor < n + 100:  # noqa: ASYNC110 - another task writes
                                await trio.sleep(0.001)
                        server.proc.kill()  # SIGKILL in the middle of the writes
                        assert await server.exit_code() == -signal.SIGKILL
                        scope.cancel()  # no more writes: count what was sent
                    tally("fault: SIGKILL of the server")
                    assert await closed_with(watcher) == (1006, ""), "no close frame"

                check, stored = await inspect_db(db)
                assert check == "ok"
                n = stored[("durable", "k")]
                assert durable_floor <= n <= incs_sent, (durable_floor, n, incs_sent)
                # (each failed attempt while the server was down counts a 1006 too)
                assert actor.statistics().closes_by_code.get(1006, 0) >= cycle + 1

            server = await stack.enter_async_context(serve(db, log))
            target.port = server.port
            with trio.fail_after(5):
                while actor.statistics().connects < KILL_CYCLES + 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert await actor.call("get") == n
            assert await actor.call("inc") == n + 1
            server.proc.send_signal(signal.SIGTERM)
            assert await server.exit_code() == 0, server.stderr()
    check, stored = await inspect_db(db)
    assert check == "ok"
    assert stored[("durable", "k")] == n + 1, log.read_text()


async def test_sigterm_closes_every_connection_1012_and_saves_everything(tmp_path: Path) -> None:
    db, log = tmp_path / "term.db", tmp_path / "server.log"
    target = Target()
    keys = [f"k{i}" for i in range(6)]
    expected: dict[tuple[str, str], int] = {}
    codes: list[tuple[int, str]] = []
    with trio.fail_after(20):
        async with serve(db, log) as server:
            target.port = server.port
            async with client(target, "lazy", "reconnecting") as actor:
                assert await actor.call("inc") == 1
                expected[("lazy", "reconnecting")] = 1

                async def one(key: str, count: int) -> None:
                    async with tcp_websocket(server.port, f"/actors/lazy/{key}/connect") as ws:
                        assert json.loads(await ws.get_message())["type"] == "init"
                        for i in range(1, count + 1):
                            frame = {"type": "action", "id": i, "name": "inc"}
                            await ws.send_message(json.dumps(frame))
                            reply = json.loads(await ws.get_message())
                            assert reply == {"type": "action_result", "id": i, "output": i}
                        expected[("lazy", key)] = count
                        acked.set()
                        codes.append(await closed_with(ws))

                async def raw() -> None:
                    async with tcp_websocket(server.port, "/actors/echo/e/ws") as ws:
                        await ws.send_message("hi")
                        assert await ws.get_message() == "hi"
                        acked.set()
                        codes.append(await closed_with(ws))

                async with trio.open_nursery() as nursery:
                    for i, key in enumerate(keys):
                        acked = trio.Event()
                        nursery.start_soon(one, key, 10 * (i + 1))
                        await acked.wait()
                    for _ in range(2):
                        acked = trio.Event()
                        nursery.start_soon(raw)
                        await acked.wait()
                    server.proc.send_signal(signal.SIGTERM)
                tally("fault: SIGTERM of the server")
                assert codes == [(1012, "runtime.shutdown")] * (len(keys) + 2)
                assert await server.exit_code() == 0, server.stderr()
                assert actor.statistics().closes_by_code.get(1012) == 1

                check, stored = await inspect_db(db)
                assert check == "ok"
                assert stored == expected, "every acknowledged write was saved by the drain"

                # The client backs off and reconnects to the next server (1012: backoff).
                async with serve(db, log) as restarted:
                    target.port = restarted.port
                    with trio.fail_after(5):
                        while actor.statistics().connects < 2:  # noqa: ASYNC110
                            await trio.sleep(0.01)
                    assert await actor.call("inc") == 2
                    restarted.proc.send_signal(signal.SIGTERM)
                    assert await restarted.exit_code() == 0, restarted.stderr()
    check, stored = await inspect_db(db)
    assert check == "ok" and stored[("lazy", "reconnecting")] == 2
