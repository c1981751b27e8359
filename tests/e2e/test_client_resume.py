"""The trio client's side of zero-loss restarts (issue 21), against the real dispatcher over
in-memory streams on the virtual clock: a cut stream is resumed with the same connection, a
call in flight completes once, events arrive once and in order; a refused resume fails the
unanswered calls as of unknown outcome and connects anew; ``resume=False`` keeps calls at most
once. (Restarts of a real server process: ``tests/reliability/test_zero_loss.py``.)"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import actorcore
from actorcore import ActorContext, ActorOptions
from actorcore.client import ActorEvent, ConnectionLost
from tests.reliability._support import serve_streams


class Tally(actorcore.Actor):
    options = ActorOptions(resume_timeout=5.0, sleep_timeout=1000.0)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"count": 0}

    @actorcore.action
    async def increment(self, ctx: ActorContext) -> int:
        ctx.state["count"] += 1
        ctx.broadcast("changed", ctx.state["count"])
        return int(ctx.state["count"])

    @actorcore.action
    async def slow(self, ctx: ActorContext) -> int:
        await trio.sleep(2)
        ctx.state["count"] += 1
        ctx.broadcast("changed", ctx.state["count"])
        return int(ctx.state["count"])

    @actorcore.action
    async def count(self, ctx: ActorContext) -> int:
        return int(ctx.state["count"])


class Streams:
    """The client's streams, which a test can cut (no close frame) or refuse."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.opened: list[trio.abc.Stream] = []
        self.refuse = False

    async def open(self) -> trio.abc.Stream:
        if self.refuse:
            await trio.lowlevel.checkpoint()
            raise OSError("refused by the test")
        stream = await self.server.listener.connect()
        self.opened.append(stream)
        return stream

    async def cut(self) -> None:
        await trio.aclose_forcefully(self.opened[-1])


def client(streams: Streams, **kwargs: Any) -> actorcore.client.ActorConnection:
    options: dict[str, Any] = {"initial_backoff": 0.05, "max_backoff": 0.2, "call_timeout": 30}
    options.update(kwargs)
    return actorcore.connect("ws://localhost", "tally", "k", open_stream=streams.open, **options)


async def test_a_cut_stream_is_resumed_and_the_call_in_flight_completes_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(actorcore.Registry([Tally])) as server:
        streams = Streams(server)
        async with client(streams) as actor:
            conn_id = actor.conn_id
            await actor.subscribe("changed")
            events = actor.events()
            assert await actor.call("increment") == 1
            async with trio.open_nursery() as nursery:
                got: list[int] = []

                async def slow() -> None:
                    got.append(await actor.call("slow"))

                nursery.start_soon(slow)
                await trio.sleep(1)  # the call runs on the server
                await streams.cut()
            assert got == [2]
            assert await actor.call("count") == 2, "the call ran once"
            assert actor.conn_id == conn_id
            stats = actor.statistics()
            assert stats.resumes == 1 and stats.connects == 2
            assert [await events.receive() for _ in range(2)] == [
                ActorEvent("changed", (1,)),
                ActorEvent("changed", (2,)),
            ]
            assert actor.statistics().last_seq >= 4


async def test_events_sent_while_cut_arrive_once_in_order(autojump_clock: trio.abc.Clock) -> None:
    async with serve_streams(actorcore.Registry([Tally])) as server:
        streams = Streams(server)
        async with client(streams) as watcher, client(Streams(server)) as writer:
            await watcher.subscribe("changed")
            await watcher.call("count")  # subscribed on the server
            events = watcher.events()
            streams.refuse = True
            await streams.cut()
            for _ in range(5):
                await writer.call("increment")
            streams.refuse = False
            seen = [await events.receive() for _ in range(5)]
            assert [e.args for e in seen] == [(i,) for i in range(1, 6)]
            seqs = [e.seq for e in seen]
            assert seqs == sorted(seqs) and len(set(seqs)) == 5
            assert watcher.statistics().resumes == 1


async def test_a_refused_resume_fails_the_unanswered_call_and_connects_anew(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(actorcore.Registry([Tally])) as server:
        streams = Streams(server)
        async with client(streams) as actor:
            first = actor.conn_id
            async with trio.open_nursery() as nursery:
                outcome: list[BaseException] = []

                async def slow() -> None:
                    try:
                        await actor.call("slow")
                    except ConnectionLost as exc:
                        outcome.append(exc)

                nursery.start_soon(slow)
                await trio.sleep(1)
                streams.refuse = True
                await streams.cut()
                await trio.sleep(10)  # longer than resume_timeout: the connection ended
                streams.refuse = False
            assert len(outcome) == 1 and not outcome[0].retryable
            assert "unknown" in str(outcome[0])
            assert actor.statistics().resume_refusals == 1
            assert await actor.call("count") == 1, "the cut call did run, once"
            assert actor.conn_id != first, "a new connection"


async def test_without_resume_calls_stay_at_most_once(autojump_clock: trio.abc.Clock) -> None:
    async with serve_streams(actorcore.Registry([Tally])) as server:
        streams = Streams(server)
        async with client(streams, resume=False) as actor:
            async with trio.open_nursery() as nursery:

                async def slow() -> None:
                    with pytest.raises(ConnectionLost):
                        await actor.call("slow")

                nursery.start_soon(slow)
                await trio.sleep(1)
                await streams.cut()
            assert actor.statistics().resumes == 0
            await trio.sleep(3)  # the cut call still ran on the server, to its end
            assert await actor.call("count") == 1
