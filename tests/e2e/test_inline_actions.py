"""Actions whose body never awaits run inline in the connection's read loop.

``never_suspends`` reads an action's bytecode: an ``async def`` body without ``await``,
``async with`` or ``async for`` runs to completion in one step, so the dispatcher runs it
when its frame is read instead of in a task of its own. Nothing a client can see may change:
answers, errors, ``ctx.conn``, the start order of actions and the interleaving of those that
await.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio
from trio_websocket import WebSocketConnection

import actorcore
from actorcore import ActorContext, ActorOptions, Conn
from actorcore.actor import definition_of, never_suspends
from actorcore.testing import receive_json, serve_in_memory, serve_loopback

from ..reliability._wire import OP_TEXT, encode_frame, raw_ws

LOG: list[str] = []
SEEN_IN_DISCONNECT: list[object] = []


async def _gen() -> AsyncIterator[int]:
    yield 1


class Mixed(actorcore.Actor):
    name = "mixed"
    options = ActorOptions(action_timeout=60.0)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"n": 0}

    async def on_disconnect(self, ctx: ActorContext, conn: Conn) -> None:
        SEEN_IN_DISCONNECT.append(ctx.conn)

    @actorcore.action
    async def bump(self, ctx: ActorContext, by: int = 1) -> dict[str, Any]:
        LOG.append(f"bump {by}")
        ctx.state["n"] += by
        assert ctx.conn is not None
        return {"n": ctx.state["n"], "conn": ctx.conn.id}

    @actorcore.action
    async def slow(self, ctx: ActorContext, seconds: float) -> int:
        LOG.append("slow started")
        await trio.sleep(seconds)
        LOG.append("slow done")
        return int(ctx.state["n"])

    @actorcore.action
    async def refuse(self, ctx: ActorContext) -> None:
        raise actorcore.UserError("not now", code="mixed.refused")

    @actorcore.action
    async def crash(self, ctx: ActorContext) -> None:
        raise RuntimeError("secret detail")

    @actorcore.action
    async def unencodable(self, ctx: ActorContext) -> object:
        return object()

    @actorcore.action
    async def uses_async_with(self, ctx: ActorContext) -> None:
        async with trio.open_nursery():
            pass

    @actorcore.action
    async def uses_async_for(self, ctx: ActorContext) -> None:
        async for _ in _gen():
            pass

    @actorcore.action
    async def awaits_in_a_branch(self, ctx: ActorContext, wait: bool) -> None:
        if wait:
            await trio.lowlevel.checkpoint()

    @actorcore.action
    async def async_comprehension(self, ctx: ActorContext) -> list[int]:
        return [x async for x in _gen()]


def test_only_actions_whose_body_never_suspends_are_inline() -> None:
    definition = definition_of(Mixed)
    assert definition.inline_actions == {"bump", "refuse", "crash", "unencodable"}

    def plain(x: int) -> int:
        return x

    assert not never_suspends(plain)
    assert not never_suspends(_gen)


async def call(ws: WebSocketConnection, action_id: int, name: str, *args: Any) -> None:
    await ws.send_message(
        json.dumps({"type": "action", "id": action_id, "name": name, "args": list(args)})
    )


async def test_inline_actions_answer_and_fail_as_task_actions_do(
    autojump_clock: trio.abc.Clock,
) -> None:
    LOG.clear()
    registry = actorcore.Registry([Mixed])
    async with serve_in_memory(registry) as server, server.connect("/actors/mixed/k/connect") as ws:
        init = await receive_json(ws)
        calls_before = registry.statistics().calls
        await call(ws, 1, "bump", 2)
        reply = await receive_json(ws)
        assert reply == {
            "type": "action_result",
            "id": 1,
            "output": {"n": 2, "conn": init["conn_id"]},
        }
        await call(ws, 2, "refuse")
        reply = await receive_json(ws)
        assert (reply["type"], reply["id"], reply["code"]) == ("error", 2, "mixed.refused")
        await call(ws, 3, "crash")
        reply = await receive_json(ws)
        assert (reply["id"], reply["code"]) == (3, "actor.internal_error")
        assert "secret" not in json.dumps(reply)
        await call(ws, 4, "unencodable")
        reply = await receive_json(ws)
        assert (reply["id"], reply["code"]) == (4, "actor.internal_error")
        assert registry.statistics().calls == calls_before + 4
        # The state change of an inline action is the actor's state like any other.
        handle = await registry.get_or_create("mixed", "k")
        assert await handle.call("slow", 0) == 2


async def test_an_inline_action_waits_for_the_start_of_actions_read_before_it() -> None:
    """``slow`` (awaits, so it gets a task) and ``bump`` (inline) arrive in one TCP write, so
    the read loop has ``bump`` before ``slow``'s task can have started: ``bump`` may still not
    start first. Once ``slow`` awaits they interleave: ``bump`` answers first."""
    LOG.clear()
    registry = actorcore.Registry([Mixed])
    frames = [
        {"type": "action", "id": 1, "name": "slow", "args": [0.5]},
        {"type": "action", "id": 2, "name": "bump", "args": [1]},
    ]
    with trio.fail_after(20):
        async with (
            serve_loopback(registry) as server,
            raw_ws(server.port, b"/actors/mixed/k/connect") as client,
        ):
            init = await client.read_frame()
            assert init is not None and json.loads(init.payload)["type"] == "init"
            await client.send(
                b"".join(encode_frame(OP_TEXT, json.dumps(f).encode()) for f in frames)
            )
            answers = []
            for _ in frames:
                frame = await client.read_frame()
                assert frame is not None
                answers.append(json.loads(frame.payload))
    assert [a["id"] for a in answers] == [2, 1]
    assert answers[1]["output"] == 1  # slow read the state after bump changed it
    assert LOG == ["slow started", "bump 1", "slow done"]


async def test_ctx_conn_does_not_outlive_an_inline_action(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The inline action sets ``ctx.conn`` in the read loop's own context: the disconnect
    hook, which runs later in that same task, must not see it."""
    SEEN_IN_DISCONNECT.clear()
    registry = actorcore.Registry([Mixed])
    async with serve_in_memory(registry) as server, server.connect("/actors/mixed/k/connect") as ws:
        await receive_json(ws)
        await call(ws, 1, "bump", 1)
        assert (await receive_json(ws))["type"] == "action_result"
    # The server's exit drained the registry: the connection's teardown has run.
    assert SEEN_IN_DISCONNECT == [None]


class Reloaded(actorcore.Actor):
    name = "reloaded"

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"n": 0}

    @actorcore.action
    async def step(self, ctx: ActorContext) -> int:
        ctx.state["n"] += 1
        return int(ctx.state["n"])

    @actorcore.action
    async def wait(self, ctx: ActorContext, seconds: float) -> str:
        await trio.sleep(seconds)
        return "waited"


async def _awaiting_step(self: Any, ctx: ActorContext) -> int:
    await trio.sleep(0.01)  # the new body awaits: it must not run in the read loop
    ctx.state["n"] += 10
    return int(ctx.state["n"])


async def test_an_action_whose_code_was_replaced_after_registration_takes_the_task_path(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Hardening item 11: autoreload tools replace ``__code__``. The inline decision is made
    once, at registration; an awaiting body run inline left the read loop's task registered
    in a waiter list and woke it out of an unrelated wait ("Should never have been
    rescheduled"). The code object is now checked before every inline run."""
    registry = actorcore.Registry([Reloaded])
    definition = registry.definitions["reloaded"]
    assert definition.runs_inline("step")
    original = Reloaded.step.__code__
    try:
        Reloaded.step.__code__ = _awaiting_step.__code__
        assert not definition.runs_inline("step")
        async with (
            serve_in_memory(registry) as server,
            server.connect("/actors/reloaded/k/connect") as ws,
        ):
            await receive_json(ws)
            for i in range(1, 6):
                await ws.send_message(
                    json.dumps({"type": "action", "id": i, "name": "step", "args": []})
                )
                await ws.send_message(
                    json.dumps({"type": "action", "id": 100 + i, "name": "wait", "args": [0.05]})
                )
            replies = [await receive_json(ws) for _ in range(10)]
            outputs = {r["id"]: r["output"] for r in replies}
            # Task-path actions that await interleave: each ran once, in some order.
            assert sorted(outputs[i] for i in range(1, 6)) == [10, 20, 30, 40, 50]
            assert all(outputs[100 + i] == "waited" for i in range(1, 6))
            await trio.sleep(1)  # the read loop waits on; nothing wakes it wrongly
            await ws.send_message(json.dumps({"type": "action", "id": 99, "name": "step"}))
            assert (await receive_json(ws))["output"] == 60
    finally:
        Reloaded.step.__code__ = original
    assert definition.runs_inline("step")


def test_an_unknown_bytecode_fails_closed() -> None:
    async def plain(self: Any, ctx: Any) -> int:
        return 1

    assert never_suspends(plain)
    without_yield = {k: v for k, v in __import__("dis").opmap.items() if k != "YIELD_VALUE"}
    assert not never_suspends(plain, opmap=without_yield)
