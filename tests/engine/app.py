"""The registry the engine process tests serve with ``actorcore serve --engine``."""

from __future__ import annotations

from typing import Any

import actorcore
from actorcore import ActorContext, ActorOptions


class Ledger(actorcore.Actor):
    """Each ``add`` is saved to the engine before it answers: an answered add is durable."""

    options = ActorOptions(sleep_timeout=3600, state_save_interval=3600)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, Any]:
        return {"total": 0, "adds": 0}

    @actorcore.action
    async def add(self, ctx: ActorContext, n: int) -> dict[str, Any]:
        ctx.state["total"] += n
        ctx.state["adds"] += 1
        await ctx.save_state()
        return {"total": ctx.state["total"], "generation": ctx.generation}

    @actorcore.action
    async def read(self, ctx: ActorContext) -> dict[str, Any]:
        return {**ctx.state, "generation": ctx.generation}


class Counter(actorcore.Actor):
    """Saves nothing itself (its interval is an hour): an answered ``add`` is durable only
    because the output gate holds each answer until the state it follows is in the engine."""

    options = ActorOptions(sleep_timeout=3600, state_save_interval=3600)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, Any]:
        return {"total": 0, "adds": 0}

    @actorcore.action
    async def add(self, ctx: ActorContext, n: int) -> dict[str, Any]:
        ctx.state["total"] += n
        ctx.state["adds"] += 1
        return {"total": ctx.state["total"], "generation": ctx.generation}

    @actorcore.action
    async def read(self, ctx: ActorContext) -> dict[str, Any]:
        return {**ctx.state, "generation": ctx.generation}


registry = actorcore.Registry([Ledger, Counter])
