"""The interleavings test's "no actor work outlives the registry" check (``_tasks.py``) can
fail: its list of actor work is derived from the code, and it finds each kind of actor work
while that work runs."""

from __future__ import annotations

import contextlib
from typing import Any

import trio
import trio.testing

import actorcore
from actorcore import ActorContext
from actorcore.testing import serve_in_memory

from ._tasks import ACTOR_WORK, actor_work


def test_the_actor_work_list_is_derived_from_the_code() -> None:
    assert {
        "RegistryHost._run_generation",
        "RegistryHost._stop_generation",
        "Generation._run_tracked",
        "Generation._interval_save",
        "_ConnHandler._action",
        "_ConnHandler._deliver_buffered",
        "AlarmTimer._fire",
    } <= ACTOR_WORK
    assert not {"RegistryHost.run", "_ConnHandler._write", "_ConnHandler._guarded"} & ACTOR_WORK


class Slow(actorcore.Actor):
    name = "slow"
    options = actorcore.ActorOptions(hook_timeout=60, sleep_grace_period=60)

    async def on_wake(self, ctx: ActorContext) -> None:
        if ctx.key == "loading":
            await trio.sleep(10)

    async def on_sleep(self, ctx: ActorContext) -> None:
        await trio.sleep(10)

    @actorcore.action
    async def background(self, ctx: ActorContext) -> None:
        ctx.wait_until(trio.sleep, 10)

    @actorcore.action
    async def busy(self, ctx: ActorContext) -> None:
        await trio.sleep(10)

    @actorcore.action
    async def remind(self, ctx: ActorContext) -> None:
        await ctx.schedule.after(0, "busy")


async def _call(conn: Any, action: str) -> None:
    # The client closes while the action runs: the test is over by then.
    with contextlib.suppress(actorcore.ActorError):
        await conn.call(action)


async def test_the_check_finds_each_kind_of_actor_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = actorcore.Registry([Slow])
    async with serve_in_memory(registry) as server, trio.open_nursery() as nursery:
        nursery.start_soon(registry.get_or_create, "slow", "loading")
        async with server.client("slow", "k") as conn:
            await conn.call("background")
            nursery.start_soon(_call, conn, "busy")
            await conn.call("remind")
            handle = await registry.get("slow", "k")
            nursery.start_soon(registry.sleep, handle.actor_id)
            await trio.sleep(1)
            running: Any = {name.split(" ")[0] for name in actor_work()}
            assert {
                "RegistryHost._run_generation",  # "loading" is in on_wake
                "Generation._run_tracked",  # wait_until
                "_ConnHandler._action",  # a protocol action in flight
                "AlarmTimer._fire",  # an alarm's action in flight
                "RegistryHost._stop_generation",  # "k" is in on_sleep
            } <= running, running
            nursery.cancel_scope.cancel()  # the test is done: no need to wait for the work
