"""The app ``test_process_death.py`` serves with ``python -m actorcore serve
tests.reliability._app:registry --store PATH``.

``durable`` saves its state every 50 ms (what a SIGKILL may lose is bounded by that);
``lazy`` effectively never saves on its own (what survives a SIGTERM was saved by the drain);
``echo`` is a raw, non-hibernatable WebSocket.
"""

from __future__ import annotations

from typing import Any

import actorcore
from actorcore import ActorContext, ActorOptions, Conn


class Durable(actorcore.Actor):
    name = "durable"
    options = ActorOptions(state_save_interval=0.05, sleep_timeout=600.0)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"n": 0}

    @actorcore.action
    async def inc(self, ctx: ActorContext) -> int:
        ctx.state["n"] += 1
        return int(ctx.state["n"])

    @actorcore.action
    async def save(self, ctx: ActorContext) -> int:
        """Save now; the returned count is durable once this returns."""
        await ctx.save_state()
        return int(ctx.state["n"])

    @actorcore.action
    async def get(self, ctx: ActorContext) -> int:
        return int(ctx.state["n"])


class Lazy(Durable):
    name = "lazy"
    options = ActorOptions(state_save_interval=3600.0, sleep_timeout=600.0)


class Echo(actorcore.Actor):
    name = "echo"

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        await conn.send(message)


registry = actorcore.Registry([Durable, Lazy, Echo])
