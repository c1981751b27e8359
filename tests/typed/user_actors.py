"""A user's actors, as a framework author writes them: checked by ``mypy --strict`` against the
installed package (``tests/test_typing.py``). Not imported by the test run."""

from __future__ import annotations

from typing import Any, TypedDict

import actorcore
from actorcore import ActorContext, ConnectRequest, Forbidden


class Counter(actorcore.Actor):
    name = "counter"
    options = actorcore.ActorOptions(sleep_timeout=60.0, max_subscriptions=16)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"count": 0}

    @actorcore.action
    async def increment(self, ctx: ActorContext, by: int = 1) -> int:
        ctx.state["count"] += by
        ctx.broadcast("changed", ctx.state["count"])
        return int(ctx.state["count"])


async def authorize(request: ConnectRequest) -> None:
    if request.client is None or not isinstance(request.params, dict):
        raise Forbidden("auth.forbidden")


registry = actorcore.Registry(
    [Counter], authorize=authorize, create_rate=actorcore.CreateRate(per_second=5.0)
)


async def main() -> int:
    async with registry:
        handle = await registry.get_or_create("counter", "k")
        result: int = await handle.call("increment", 2)
        return result


class AccountState(TypedDict):
    owner: str
    balance: int


class Account(actorcore.Actor[AccountState]):
    """Typed state: ``ctx.state`` is an ``AccountState`` for the checker."""

    def create_state(self, ctx: ActorContext[AccountState], input: Any) -> AccountState:
        return {"owner": str(input), "balance": 0}

    @actorcore.action
    async def deposit(self, ctx: ActorContext[AccountState], amount: int) -> int:
        ctx.state["balance"] += amount
        return ctx.state["balance"]

    async def on_wake(self, ctx: ActorContext[AccountState]) -> None:
        owner: str = ctx.state["owner"]
        assert owner


class Lazy(actorcore.Actor[list[str]]):
    async def create_state(self, ctx: ActorContext[list[str]], input: Any) -> list[str]:
        return []
