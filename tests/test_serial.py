"""Serial actors (issue 18): with ``ActorOptions(serial=True)`` an actor runs one action or
message handler at a time, in arrival order, across connections, in-process calls and alarms;
a call chain that re-enters it (A -> B -> A) runs in the turn that waits on it."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import actorcore
from actorcore import ActorContext, ActorOptions
from actorcore.testing import serve_in_memory

LOG: list[str] = []


class _Bank(actorcore.Actor):
    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"balance": 0}

    @actorcore.action
    async def deposit(self, ctx: ActorContext, amount: int) -> int:
        balance = ctx.state["balance"]  # read, await, write: a lost update if interleaved
        await trio.sleep(0.1)
        ctx.state["balance"] = balance + amount
        return int(ctx.state["balance"])

    @actorcore.action
    async def balance(self, ctx: ActorContext) -> int:
        return int(ctx.state["balance"])

    @actorcore.action
    async def step(self, ctx: ActorContext, tag: str, seconds: float) -> None:
        LOG.append(f"start {tag}")
        await trio.sleep(seconds)
        LOG.append(f"end {tag}")

    @actorcore.action
    async def ping_via(self, ctx: ActorContext, other: str) -> str:
        peer = await ctx.actors.get_or_create(ctx.name if other == "self" else other, "b")
        return str(await peer.call("bounce", ctx.name, ctx.key))

    @actorcore.action
    async def bounce(self, ctx: ActorContext, name: str, key: str) -> str:
        back = await ctx.actors.get_or_create(name, key)
        return f"bounced:{await back.call('pong')}"

    @actorcore.action
    async def pong(self, ctx: ActorContext) -> str:
        return f"pong from {ctx.key}"

    @actorcore.action
    async def background_deposit(self, ctx: ActorContext) -> None:
        handle = await ctx.actors.get_by_id(ctx.actor_id)

        async def later() -> None:
            LOG.append("background asks")
            await handle.call("step", "background", 0)

        ctx.wait_until(later)
        await trio.sleep(1)
        LOG.append("turn ends")

    @actorcore.action
    async def remind(self, ctx: ActorContext) -> None:
        await ctx.schedule.after(0.5, "step", "alarm", 0)
        await trio.sleep(2)
        LOG.append("turn ends")

    @actorcore.action
    async def wait_for(self, ctx: ActorContext, name: str) -> str:
        peer = await ctx.actors.get_or_create(name, "x")
        await trio.sleep(0.1)
        return str(await peer.call("wait_for", ctx.name))

    async def on_ws_message(self, ctx: ActorContext, conn: actorcore.Conn, message: Any) -> None:
        LOG.append(f"start ws {message}")
        await trio.sleep(1)
        LOG.append(f"end ws {message}")


class Bank(_Bank):
    name = "bank"
    options = ActorOptions(serial=True, action_timeout=5.0)


class LooseBank(_Bank):
    name = "loose"


class Other(_Bank):
    name = "other"
    options = ActorOptions(serial=True, action_timeout=5.0)


@pytest.fixture(autouse=True)
def _reset() -> None:
    LOG.clear()


async def _deposits(registry: actorcore.Registry, name: str) -> int:
    handle = await registry.get_or_create(name, "k")
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(handle.call, "deposit", 1)
    return int(await handle.call("balance"))


async def test_serial_actions_do_not_interleave(autojump_clock: trio.testing.MockClock) -> None:
    async with actorcore.Registry([Bank, LooseBank]) as registry:
        assert await _deposits(registry, "loose") == 1, "the lost update serial prevents"
        t0 = trio.current_time()
        assert await _deposits(registry, "bank") == 10
        assert trio.current_time() - t0 == pytest.approx(1.0), "one at a time"


async def test_turns_are_taken_in_arrival_order(autojump_clock: trio.testing.MockClock) -> None:
    async with actorcore.Registry([Bank]) as registry:
        handle = await registry.get_or_create("bank", "k")
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(handle.call, "step", str(i), 0.1)
                await trio.lowlevel.checkpoint()
        assert [f"{edge} {i}" for i in range(6) for edge in ("start", "end")] == LOG


async def test_a_call_chain_that_re_enters_runs_in_its_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorcore.Registry([Bank, Other]) as registry:
        a = await registry.get_or_create("bank", "a")
        with trio.fail_after(1):  # a deadlock would wait for action_timeout (5 s)
            assert await a.call("ping_via", "other") == "bounced:pong from a"
            assert await a.call("ping_via", "self") == "bounced:pong from a"


async def test_turns_span_connections_and_in_process_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = actorcore.Registry([Bank])
    async with serve_in_memory(registry) as server, server.client("bank", "k") as conn:
        handle = await registry.get("bank", "k")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.call, "step", "client", 1.0)
            await trio.sleep(0.1)
            nursery.start_soon(handle.call, "step", "local", 0.5)
            await trio.sleep(0.1)
            async with server.connect("/actors/bank/k/ws") as ws:
                await ws.send_message("raw")
                await trio.sleep(3)
        assert LOG == [
            "start client",
            "end client",
            "start local",
            "end local",
            "start ws raw",
            "end ws raw",
        ]


async def test_background_work_and_alarms_take_turns_of_their_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorcore.Registry([Bank]) as registry:
        handle = await registry.get_or_create("bank", "k")
        await handle.call("background_deposit")
        await trio.sleep(1)
        assert LOG == ["background asks", "turn ends", "start background", "end background"]
        LOG.clear()
        await handle.call("remind")  # the alarm falls due in the middle of this turn
        await trio.sleep(1)
        assert LOG == ["turn ends", "start alarm", "end alarm"]


async def test_a_cross_call_deadlock_ends_with_action_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A waits for B while B (another call chain) waits for A: as with Orleans' non-reentrant
    # grains, the cycle is broken by the action timeout, not by a hang.
    async with actorcore.Registry([Bank, Other]) as registry:
        a = await registry.get_or_create("bank", "x")
        b = await registry.get_or_create("other", "x")
        errors: list[BaseException] = []

        async def call(handle: actorcore.ActorHandle, peer: str) -> None:
            try:
                await handle.call("wait_for", peer)
            except actorcore.ActionTimeout as exc:
                errors.append(exc)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, a, "other")
                nursery.start_soon(call, b, "bank")
        assert errors, "the cycle ended with actor.action_timeout"
