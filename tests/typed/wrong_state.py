"""A typed actor that misuses its state: ``mypy --strict`` must report both lines marked
``# error`` (``tests/test_typing.py``), which shows ``Actor[S]`` really types ``ctx.state``."""

from __future__ import annotations

from typing import Any, TypedDict

import actorcore
from actorcore import ActorContext


class AccountState(TypedDict):
    owner: str
    balance: int


class Account(actorcore.Actor[AccountState]):
    def create_state(self, ctx: ActorContext[AccountState], input: Any) -> AccountState:
        return {"owner": "ann", "balance": 0}

    @actorcore.action
    async def deposit(self, ctx: ActorContext[AccountState], amount: int) -> None:
        ctx.state["balance"] = "lots"  # error: a str is not an int
        ctx.state["overdraft"] = amount  # error: no such key
