"""``ctx.actors``: actors reach other actors through their own registry (issue 18)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import actorcore
from actorcore import ActorContext


class Account(actorcore.Actor):
    name = "account"

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"balance": int(input or 0)}

    @actorcore.action
    async def deposit(self, ctx: ActorContext, amount: int) -> int:
        ctx.state["balance"] += amount
        return int(ctx.state["balance"])

    @actorcore.action
    async def balance(self, ctx: ActorContext) -> int:
        return int(ctx.state["balance"])

    @actorcore.action
    async def transfer(self, ctx: ActorContext, to_key: str, amount: int) -> int:
        other = await ctx.actors.get_or_create("account", to_key)
        ctx.state["balance"] -= amount
        await other.call("deposit", amount)
        return int(ctx.state["balance"])

    @actorcore.action
    async def ping_back(self, ctx: ActorContext, via_key: str) -> int:
        """A -> B -> A: B calls back into A while A's call waits for B."""
        relay = await ctx.actors.get_or_create("relay", via_key)
        return int(await relay.call("call_balance", ctx.actor_id))


class Relay(actorcore.Actor):
    name = "relay"

    @actorcore.action
    async def call_balance(self, ctx: ActorContext, actor_id: str) -> int:
        caller = await ctx.actors.get_by_id(actor_id)
        return int(await caller.call("balance"))


async def test_an_action_calls_another_actor_through_ctx_actors(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with actorcore.Registry([Account, Relay]) as registry:
        alice = await registry.get_or_create("account", "alice", 100)
        assert await alice.call("transfer", "bob", 30) == 70
        bob = await registry.get("account", "bob")
        assert await bob.call("balance") == 30
        assert registry.actors is registry.actors  # one lookup per registry
        assert await alice.call("ping_back", "r1") == 70  # A -> B -> A does not deadlock


async def test_lookups_of_missing_actors_raise_actor_not_found(
    autojump_clock: trio.abc.Clock,
) -> None:
    class Prober(actorcore.Actor):
        name = "prober"

        @actorcore.action
        async def probe(self, ctx: ActorContext) -> list[str]:
            seen = []
            for lookup in (ctx.actors.get("account", "nobody"), ctx.actors.get_by_id("nope")):
                with pytest.raises(actorcore.ActorNotFound):
                    await lookup
                seen.append("not found")
            return seen

    async with actorcore.Registry([Account, Prober]) as registry:
        prober = await registry.get_or_create("prober", "p")
        assert await prober.call("probe") == ["not found", "not found"]
