"""Zero-loss restarts (issue 21): ``python -m actorcore serve`` with SQLite, restarted several
times with SIGTERM and with SIGKILL while clients stream increments over protocol connections.

At the end every call returned exactly once (each client's calls return 1, 2, 3, ... in order:
no call ran twice, none was lost), each counter equals the number of calls its client made, and
every client received the events of its counter exactly once each, in order (at least once on
the wire, deduplicated by their sequence number).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest
import trio

import actorcore

from ._support import tally
from .test_process_death import inspect_db, serve

APP = "tests.reliability._zero_loss_app:registry"
CLIENTS = 4
#: Restarts: SIGTERM and SIGKILL alternately; more with ``ACTORCORE_HYPOTHESIS_PROFILE=long``.
RESTARTS = 12 if os.environ.get("ACTORCORE_HYPOTHESIS_PROFILE") == "long" else 4
#: Calls each client makes between two restarts (at least).
CALLS_PER_ROUND = 25

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Target:
    """Where the clients connect: the port of the server running now."""

    def __init__(self) -> None:
        self.port = 0

    async def open_stream(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)


class Streamer:
    """One client: increments its own counter in a loop and collects its events."""

    def __init__(self, actor: actorcore.client.ActorConnection) -> None:
        self.actor = actor
        self.returned: list[int] = []
        self.events: list[int] = []
        self.event_seqs: list[int] = []

    async def calls(self) -> None:
        while True:
            self.returned.append(await self.actor.call("increment"))

    async def collect(self) -> None:
        async for event in self.actor.events():
            assert event.name == "changed"
            self.events.append(event.args[0])
            assert event.seq is not None
            self.event_seqs.append(event.seq)


async def test_restarts_lose_nothing_and_run_nothing_twice(tmp_path: Path) -> None:
    db, log = tmp_path / "zero.db", tmp_path / "server.log"
    target = Target()
    with trio.fail_after(60 + 10 * RESTARTS):
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(serve(db, log, APP))
            target.port = server.port
            streamers = []
            for i in range(CLIENTS):
                actor = await stack.enter_async_context(
                    actorcore.client.connect(
                        "ws://127.0.0.1:1",  # the host only goes into the Host header
                        "counter",
                        f"c{i}",
                        open_stream=target.open_stream,
                        initial_backoff=0.02,
                        max_backoff=0.2,
                        connect_timeout=10,
                        call_timeout=30,
                    )
                )
                await actor.subscribe("changed")
                streamers.append(Streamer(actor))
            async with trio.open_nursery() as nursery:
                for streamer in streamers:
                    nursery.start_soon(streamer.calls)
                    nursery.start_soon(streamer.collect)
                for restart in range(RESTARTS):
                    floor = [len(s.returned) + CALLS_PER_ROUND for s in streamers]
                    with trio.fail_after(20):
                        while any(  # noqa: ASYNC110 - other tasks make the calls
                            len(s.returned) < f for s, f in zip(streamers, floor, strict=True)
                        ):
                            await trio.sleep(0.005)
                    if restart % 2:
                        server.proc.kill()
                        assert await server.exit_code() == -signal.SIGKILL
                        tally("fault: SIGKILL of the server mid-stream")
                    else:
                        server.proc.send_signal(signal.SIGTERM)
                        assert await server.exit_code(within=20) == 0, server.stderr()
                        tally("fault: SIGTERM of the server mid-stream")
                    server = await stack.enter_async_context(serve(db, log, APP))
                    target.port = server.port
                # A last stretch on the last server, then stop calling.
                floor = [len(s.returned) + CALLS_PER_ROUND for s in streamers]
                with trio.fail_after(20):
                    while any(  # noqa: ASYNC110
                        len(s.returned) < f for s, f in zip(streamers, floor, strict=True)
                    ):
                        await trio.sleep(0.005)
                nursery.cancel_scope.cancel()
            # Calls cut by the cancel above may have run on the server: count them from there.
            for i, streamer in enumerate(streamers):
                made = len(streamer.returned)
                assert streamer.returned == list(range(1, made + 1)), (
                    f"client {i}: every call returned exactly once, in order"
                )
                stored = await streamer.actor.call("get")
                assert stored in (made, made + 1), (i, stored, made)
                assert streamer.events[:made] == list(range(1, made + 1)), (
                    f"client {i}: every event once, in order"
                )
                assert streamer.event_seqs == sorted(set(streamer.event_seqs))
                assert streamer.actor.statistics().resumes >= RESTARTS
        check, _ = await inspect_db(db)
        assert check == "ok"
