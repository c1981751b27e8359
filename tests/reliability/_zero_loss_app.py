"""The app ``test_zero_loss.py`` serves with ``python -m actorcore serve
tests.reliability._zero_loss_app:registry --store PATH``.

``counter`` never saves on an interval of its own (an hour): what survives a SIGKILL is what
the output gate made durable before an answer or event left the process.
"""

from __future__ import annotations

from typing import Any

import actorcore
from actorcore import ActorContext, ActorOptions


class Counter(actorcore.Actor):
    name = "counter"
    options = ActorOptions(state_save_interval=3600.0, sleep_timeout=600.0)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"n": 0}

    @actorcore.action
    async def increment(self, ctx: ActorContext) -> int:
        ctx.state["n"] += 1
        ctx.broadcast("changed", ctx.state["n"])
        return int(ctx.state["n"])

    @actorcore.action
    async def get(self, ctx: ActorContext) -> int:
        return int(ctx.state["n"])


registry = actorcore.Registry([Counter])
