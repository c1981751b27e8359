"""The examples of the user guide (docs/guide/), run as written: the testing page
(docs/guide/testing.md) and the scheduled-work page (docs/guide/schedule.md) show code of this
file verbatim (test_the_pages_show_this_file checks it), and the actors page's options table
and its plain-or-async rule are checked here too."""

from __future__ import annotations

import ast
import json
import pathlib
import re
from typing import Any

import attrs
import pytest
import trio

import actorcore
from actorcore import ActorContext, LifecycleState
from actorcore.testing import (
    expect_close,
    receive_json,
    record_transitions,
    run_due_alarms,
    run_in_actor,
    serve_in_memory,
    serve_loopback,
    wait_for_state,
)


class Counter(actorcore.Actor):
    options = actorcore.ActorOptions(sleep_timeout=30.0)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"count": 0}

    @actorcore.action
    async def increment(self, ctx: ActorContext, by: int = 1) -> int:
        ctx.state["count"] += by
        ctx.broadcast("changed", ctx.state["count"])
        return int(ctx.state["count"])

    @actorcore.action
    async def remind(self, ctx: ActorContext, seconds: float) -> str:
        return await ctx.schedule.after(seconds, "increment", 100)


async def test_sleep_and_wake_in_virtual_time(autojump_clock: trio.abc.Clock) -> None:
    async with actorcore.Registry([Counter]) as registry:
        counter = await registry.get_or_create("counter", "k")
        assert await counter.call("increment") == 1
        with record_transitions(registry) as rec:
            await wait_for_state(registry, counter.actor_id, LifecycleState.ASLEEP)
            assert await counter.call("increment") == 2  # woken, state kept
        assert (LifecycleState.SLEEP_FINALIZE, LifecycleState.ASLEEP) in rec.of(counter.actor_id)


async def test_look_inside_the_actor(autojump_clock: trio.abc.Clock) -> None:
    async with actorcore.Registry([Counter]) as registry:
        counter = await registry.get_or_create("counter", "k")
        await run_in_actor(counter, lambda ctx: ctx.state.update(count=41))
        assert await counter.call("increment") == 42


async def test_alarms(autojump_clock: trio.abc.Clock) -> None:
    async with actorcore.Registry([Counter]) as registry:
        counter = await registry.get_or_create("counter", "k")
        await counter.call("remind", 60)
        await trio.sleep(60)
        await run_due_alarms(registry)
        assert await run_in_actor(counter, lambda ctx: ctx.state["count"]) == 100


async def test_over_the_protocol(autojump_clock: trio.abc.Clock) -> None:
    registry = actorcore.Registry([Counter])
    async with serve_in_memory(registry) as server, server.client("counter", "k") as counter:
        await counter.subscribe("changed")
        events = counter.events()
        assert await counter.call("increment", 5) == 5
        event = await events.receive()
        assert event.args == (5,)


async def test_frames_and_close_codes(autojump_clock: trio.abc.Clock) -> None:
    registry = actorcore.Registry([Counter])
    async with serve_in_memory(registry) as server:
        async with server.connect("/actors/counter/k/connect") as ws:
            init = await receive_json(ws)
            assert init["type"] == "init" and init["generation"] == 1
            await ws.send_message(json.dumps({"type": "action", "id": 1, "name": "increment"}))
            assert await receive_json(ws) == {"type": "action_result", "id": 1, "output": 1}
        async with server.connect("/actors/nobody/k/connect") as ws:
            assert await expect_close(ws) == (1008, "actor.not_found")


async def test_over_a_real_socket() -> None:
    registry = actorcore.Registry([Counter])
    async with serve_loopback(registry) as server, server.client("counter", "k") as counter:
        assert server.port > 0
        assert await counter.call("increment", 2) == 2


@pytest.fixture
def actorcore_actors() -> list[type[actorcore.Actor]]:
    return [Counter]


async def test_with_the_registry_fixture(registry: actorcore.Registry) -> None:
    counter = await registry.get_or_create("counter", "k")
    assert await counter.call("increment") == 1


# docs/guide/schedule.md


class Trial(actorcore.Actor):
    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"active": True}

    @actorcore.action
    async def start(self, ctx: ActorContext, days: float) -> str:
        # Persisted before it returns: the alarm survives sleep and a crash.
        return await ctx.schedule.after(days * 86400, "expire")

    @actorcore.action
    async def expire(self, ctx: ActorContext) -> None:
        ctx.state["active"] = False
        ctx.broadcast("expired")


async def test_trial_expires_while_asleep(autojump_clock: trio.abc.Clock) -> None:
    async with actorcore.Registry([Trial]) as registry:
        trial = await registry.get_or_create("trial", "acme")
        alarm_id = await trial.call("start", 14)
        assert isinstance(alarm_id, str)
        await wait_for_state(registry, trial.actor_id, LifecycleState.ASLEEP)  # idle sleep
        await trio.sleep(14 * 86400)
        await run_due_alarms(registry)
        assert await run_in_actor(trial, lambda ctx: ctx.state["active"]) is False


# docs/guide/actors.md


def test_the_options_table_lists_every_option_with_its_default() -> None:
    page = pathlib.Path(__file__).parent.parent / "docs" / "guide" / "actors.md"
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", page.read_text(), re.MULTILINE)
    table = {name: default.strip() for name, default in rows}
    fields = attrs.fields(actorcore.ActorOptions)
    listed = {name: table[name] for name in table if hasattr(fields, name)}
    assert list(listed) == [field.name for field in fields]
    for field in fields:
        assert listed[field.name] == str(field.default), field.name


class PlainConnState(actorcore.Actor):
    def create_conn_state(self, ctx: ActorContext, params: Any) -> Any:
        return {"plain": params}

    @actorcore.action
    async def mine(self, ctx: ActorContext) -> Any:
        assert ctx.conn is not None
        return ctx.conn.state


class AsyncConnState(PlainConnState):
    async def create_conn_state(self, ctx: ActorContext, params: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return {"async": params}


async def test_create_conn_state_may_be_plain_or_async(autojump_clock: trio.abc.Clock) -> None:
    registry = actorcore.Registry([PlainConnState, AsyncConnState])
    async with serve_in_memory(registry) as server:
        async with server.client("plainconnstate", "k", params=1) as plain:
            assert await plain.call("mine") == {"plain": 1}
        async with server.client("asyncconnstate", "k", params=2) as awaited:
            assert await awaited.call("mine") == {"async": 2}


# The pages show this file


def _imported(code: str) -> set[tuple[str | None, str]]:
    """The (module, name) pairs the import statements at the top level of ``code`` bind."""
    names: set[tuple[str | None, str]] = set()
    for node in ast.parse(code).body:
        if isinstance(node, ast.Import):
            names |= {(None, alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {(node.module, alias.name) for alias in node.names}
    return names


@pytest.mark.parametrize("page", ["testing.md", "schedule.md"])
def test_the_pages_show_this_file(page: str) -> None:
    """Every Python block of the page is a verbatim part of this file once its leading
    imports are taken off, and those imports are imports of this file."""
    text = (pathlib.Path(__file__).parent.parent / "docs" / "guide" / page).read_text()
    source = pathlib.Path(__file__).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks
    for block in blocks:
        code = block
        for node in ast.parse(block).body:
            if not isinstance(node, ast.Import | ast.ImportFrom):
                decorators = getattr(node, "decorator_list", [])
                start = min([node.lineno] + [d.lineno for d in decorators])
                code = "\n".join(block.splitlines()[start - 1 :]) + "\n"
                break
        assert _imported(block) <= _imported(source), block
        assert code in source, code
