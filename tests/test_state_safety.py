"""Hardening item 8: non-finite numbers from clients are refused, and a state that stops
being JSON is rolled back where it happened instead of poisoning every later save."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio

import actorcore
from actorcore import ActorContext, Conn, MemoryStore, jsoncodec
from actorcore.testing import expect_close, receive_json, serve_in_memory


@pytest.mark.parametrize("text", ["1e999", "-1e999", "[1E400]", '{"a": 1e309}', "NaN", "-Infinity"])
def test_non_finite_numbers_are_not_json(text: str) -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(text)


def test_integers_past_pythons_digit_limit_are_a_value_error() -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads("1" * 5000)
    assert jsoncodec.loads("1e308") == 1e308


class Ledger(actorcore.Actor):
    name = "ledger"

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, Any]:
        return {"total": 0.0, "entries": 0}

    @actorcore.action
    async def add(self, ctx: ActorContext, amount: Any) -> float:
        ctx.state["total"] += amount
        ctx.state["entries"] += 1
        return float(ctx.state["total"])

    @actorcore.action
    async def poison(self, ctx: ActorContext, kind: str) -> None:
        ctx.state["entries"] += 1
        if kind == "inf":
            ctx.state["total"] = float("inf")
        elif kind == "set":
            ctx.state["tags"] = {"a", "b"}
        else:
            loop: list[Any] = []
            loop.append(loop)
            ctx.state["loop"] = loop

    @actorcore.action
    async def total(self, ctx: ActorContext) -> Any:
        return ctx.state

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        ctx.state["bad"] = float("nan")  # a hook, not an action: caught at the next save


async def test_params_with_a_non_finite_number_close_1008(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    registry = actorcore.Registry([Ledger], store=store)
    async with serve_in_memory(registry) as server:
        async with server.connect('/actors/ledger/k/connect?params={"n":1e999}') as ws:
            assert await expect_close(ws) == (1008, "protocol.invalid_message")
        assert store.statistics().actors == 0


async def test_a_frame_with_a_non_finite_number_is_refused_and_state_stays_saveable(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    registry = actorcore.Registry([Ledger], store=store)
    async with serve_in_memory(registry) as server:
        async with server.connect("/actors/ledger/k/connect") as ws:
            init = await receive_json(ws)
            await ws.send_message('{"type": "action", "id": 1, "name": "add", "args": [2.5]}')
            assert (await receive_json(ws))["output"] == 2.5
            await ws.send_message('{"type": "action", "id": 2, "name": "add", "args": [1e999]}')
            assert await expect_close(ws) == (1008, "protocol.invalid_message")
        await registry.sleep(init["actor_id"])
        record = await store.get_by_id(init["actor_id"])
        assert record is not None and record.state is not None
        assert json.loads(record.state) == {"total": 2.5, "entries": 1}


@pytest.mark.parametrize("kind", ["inf", "set", "cycle"])
async def test_an_action_that_leaves_the_state_unsaveable_fails_there_and_rolls_back(
    autojump_clock: trio.abc.Clock, kind: str
) -> None:
    store = MemoryStore()
    async with actorcore.Registry([Ledger], store=store) as registry:
        handle = await registry.get_or_create("ledger", "k")
        assert await handle.call("add", 1) == 1.0
        with pytest.raises(actorcore.StateError, match="'poison' left the state unsaveable"):
            await handle.call("poison", kind)
        # Rolled back to the last saveable value, including the good change before it.
        assert await handle.call("total") == {"total": 1.0, "entries": 1}
        assert await handle.call("add", 2) == 3.0
        await trio.sleep(5)  # interval saves run and succeed
        assert registry.statistics().save_errors == 0
        await registry.sleep(handle.actor_id)
        record = await store.get_by_id(handle.actor_id)
        assert record is not None and record.state is not None
        assert json.loads(record.state) == {"total": 3.0, "entries": 2}


async def test_the_protocol_client_gets_the_state_error_as_an_error_frame(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = actorcore.Registry([Ledger])
    async with (
        serve_in_memory(registry) as server,
        server.connect("/actors/ledger/k/connect") as ws,
    ):
        await receive_json(ws)
        await ws.send_message('{"type": "action", "id": 1, "name": "poison", "args": ["inf"]}')
        reply = await receive_json(ws)
        assert reply["type"] == "error" and reply["code"] == "actor.state_error", reply
        await ws.send_message('{"type": "action", "id": 2, "name": "add", "args": [4]}')
        assert (await receive_json(ws))["output"] == 4.0


async def test_a_hook_that_poisons_the_state_is_rolled_back_at_the_next_save(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="actorcore")
    store = MemoryStore()
    registry = actorcore.Registry([Ledger], store=store)
    async with serve_in_memory(registry) as server:
        async with server.connect("/actors/ledger/k/connect") as ws:
            init = await receive_json(ws)
            await ws.send_message('{"type": "action", "id": 1, "name": "add", "args": [7]}')
            assert (await receive_json(ws))["output"] == 7.0
        async with server.connect("/actors/ledger/k/ws") as raw:
            await raw.send_message("poison me")
            await trio.sleep(3)  # the interval save finds the NaN, rolls back
        async with server.connect("/actors/ledger/k/connect") as ws:
            await receive_json(ws)
            await ws.send_message('{"type": "action", "id": 2, "name": "add", "args": [1]}')
            assert (await receive_json(ws))["output"] == 8.0
        await registry.sleep(init["actor_id"])
        record = await store.get_by_id(init["actor_id"])
        assert record is not None and record.state is not None
        assert json.loads(record.state) == {"total": 8.0, "entries": 2}
    assert any("rolled back" in r.getMessage() for r in caplog.records)
