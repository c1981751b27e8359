"""The README's counter: one action, persisted state.

In process:        python -m examples.counter
Over WebSockets:   actorcore serve examples.counter:registry
                   (then connect to ws://127.0.0.1:8080/actors/counter/<key>/connect)
"""

from __future__ import annotations

from typing import Any

import trio

import actorcore


class Counter(actorcore.Actor):
    def create_state(self, ctx: actorcore.ActorContext, input: Any) -> Any:
        return {"count": 0}

    @actorcore.action
    async def increment(self, ctx: actorcore.ActorContext, by: int = 1) -> int:
        ctx.state["count"] += by
        ctx.broadcast("changed", ctx.state["count"])
        return int(ctx.state["count"])

    @actorcore.action
    async def get(self, ctx: actorcore.ActorContext) -> int:
        return int(ctx.state["count"])


registry = actorcore.Registry([Counter])


async def main() -> None:
    async with registry:
        counter = await registry.get_or_create("counter", "my-counter")
        print(await counter.call("increment"))  # 1
        print(await counter.call("increment", 5))  # 6
        print(await counter.call("get"))  # 6


if __name__ == "__main__":
    trio.run(main)
