"""The testing kit for users (part of issue 18): wait for a lifecycle state without polling,
and record transitions in order."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import actorcore
from actorcore import ActorContext, LifecycleState
from actorcore.testing import (
    record_transitions,
    run_in_actor,
    serve_in_memory,
    serve_loopback,
    wait_for_state,
)

S = LifecycleState


class Napper(actorcore.Actor):
    name = "napper"
    options = actorcore.ActorOptions(sleep_timeout=5.0)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"n": 0}

    @actorcore.action
    async def touch(self, ctx: ActorContext) -> int:
        ctx.state["n"] += 1
        return int(ctx.state["n"])


async def test_wait_for_state_wakes_on_the_transition(autojump_clock: trio.abc.Clock) -> None:
    async with actorcore.Registry([Napper]) as registry:
        handle = await registry.get_or_create("napper", "k")
        await wait_for_state(registry, handle.actor_id, S.STARTED)  # already: returns at once
        started = trio.current_time()
        await wait_for_state(registry, handle.actor_id, S.ASLEEP)
        assert trio.current_time() - started == pytest.approx(5.0, abs=0.01)  # sleep_timeout
        with pytest.raises(trio.TooSlowError):
            await wait_for_state(registry, handle.actor_id, S.DESTROYED, timeout=60)


async def test_record_transitions_in_order(autojump_clock: trio.abc.Clock) -> None:
    async with actorcore.Registry([Napper]) as registry:
        with record_transitions(registry) as rec:
            handle = await registry.get_or_create("napper", "k")
            await handle.call("touch")
            await wait_for_state(registry, handle.actor_id, S.ASLEEP)
            await handle.call("touch")
            await registry.destroy(handle.actor_id)
        after = len(rec.transitions)
        other = await registry.get_or_create("napper", "other")
        await other.call("touch")
        assert len(rec.transitions) == after, "nothing recorded after the block"
    aid = handle.actor_id
    assert rec.of(aid) == [
        (S.ASLEEP, S.LOADING),
        (S.LOADING, S.STARTED),
        (S.STARTED, S.SLEEP_GRACE),
        (S.SLEEP_GRACE, S.SLEEP_FINALIZE),
        (S.SLEEP_FINALIZE, S.ASLEEP),
        (S.ASLEEP, S.LOADING),
        (S.LOADING, S.STARTED),
        (S.STARTED, S.DESTROY_GRACE),
        (S.DESTROY_GRACE, S.DESTROYING),
        (S.DESTROYING, S.DESTROYED),
    ]
    assert all(actor_id == aid for actor_id, _, _ in rec.transitions)


async def test_a_protocol_client_on_the_in_memory_server(autojump_clock: trio.abc.Clock) -> None:
    registry = actorcore.Registry([Napper])
    async with (
        serve_in_memory(registry) as server,
        server.client("napper", "k") as napper,
    ):
        assert await napper.call("touch") == 1
        await trio.sleep(3600)  # an hour of virtual time: pings answered, still connected
        assert await napper.call("touch") == 2
        assert napper.connected


async def test_a_protocol_client_on_the_loopback_server() -> None:
    registry = actorcore.Registry([Napper])
    with trio.fail_after(20):
        async with serve_loopback(registry) as server, server.client("napper", "k") as napper:
            assert await napper.call("touch") == 1


async def test_run_in_actor_runs_sync_and_async_functions_inside_the_actor(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with actorcore.Registry([Napper]) as registry:
        handle = await registry.get_or_create("napper", "k")
        await handle.call("touch")
        assert await run_in_actor(handle, lambda ctx: ctx.state["n"]) == 1

        async def bump(ctx: ActorContext) -> int:
            await trio.sleep(1)
            ctx.state["n"] += 10
            return ctx.generation

        assert await run_in_actor(handle, bump) == 1
        await wait_for_state(registry, handle.actor_id, S.ASLEEP)
        # Asleep: it is woken for the function, and the state it set was persisted.
        assert await run_in_actor(handle, lambda ctx: (ctx.generation, ctx.state["n"])) == (2, 11)

        def unsaveable(ctx: ActorContext) -> None:
            ctx.state["n"] = {1, 2}

        with pytest.raises(actorcore.StateError):
            await run_in_actor(handle, unsaveable)
        assert await handle.call("touch") == 12, "rolled back to the last saveable state"
