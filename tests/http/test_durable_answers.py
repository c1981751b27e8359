"""HTTP answers and the output gate: with ``durable_outputs`` on a durable store, an action's
(or ``on_request``'s) answer is sent only once the state it follows is saved, as on a protocol
connection; if that save does not commit in time the answer is 503 ``store.save_timeout``
(the outcome is unknown, not retryable as is). The app is driven directly, on the virtual
clock, over a memory store that says it is durable."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import trio

import actorcore
from actorcore import ActorContext, ActorOptions, Request, Response, StoreError
from actorcore.http.app import DURABLE_ANSWER_TIMEOUT, HttpApp, HttpExchange
from actorcore.store.base import ConnWrites
from actorcore.ws.origin import OriginPolicy


class DurableMemory(actorcore.MemoryStore):
    """A memory store that counts as durable (the gate applies), and can fail its saves."""

    durable: ClassVar[bool] = True
    failing = False

    async def save(self, actor_id: str, generation: int, state: bytes) -> None:
        if self.failing:
            await trio.lowlevel.checkpoint()
            raise StoreError("the disk is full")
        await super().save(actor_id, generation, state)

    async def save_with_conns(
        self, actor_id: str, generation: int, state: bytes | None, conns: ConnWrites
    ) -> None:
        if self.failing:
            await trio.lowlevel.checkpoint()
            raise StoreError("the disk is full")
        await super().save_with_conns(actor_id, generation, state, conns)


def counter(durable: bool) -> type[actorcore.Actor]:
    class Counter(actorcore.Actor):
        name = "counter"
        options = ActorOptions(state_save_interval=3600, durable_outputs=durable)

        def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
            return {"n": 0}

        @actorcore.action
        async def add(self, ctx: ActorContext, n: int) -> int:
            ctx.state["n"] += n
            return int(ctx.state["n"])

        async def on_request(self, ctx: ActorContext, request: Request) -> Response:
            ctx.state["n"] += 100
            return Response.json({"n": ctx.state["n"]})

    return Counter


@asynccontextmanager
async def app(store: DurableMemory, durable: bool = True) -> AsyncIterator[HttpApp]:
    registry = actorcore.Registry([counter(durable)], store=store)
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        try:
            yield HttpApp(registry, OriginPolicy.make(("*",), loopback=False))
        finally:
            registry.request_shutdown()


def post(target: str, body: Any = None) -> HttpExchange:
    data = json.dumps(body).encode() if body is not None else b""
    return HttpExchange(method="POST", target=target, headers=(), body=data)


async def test_an_answer_is_sent_once_its_state_is_saved(autojump_clock: trio.abc.Clock) -> None:
    store = DurableMemory()
    async with app(store) as http:
        await http.handle(post("/actors/counter/b/actions/add", {"args": [0]}))
        writes = store.statistics().writes
        answer = await http.handle(post("/actors/counter/a/actions/add", {"args": [2]}))
        assert (answer.status, json.loads(answer.body)) == (200, {"output": 2})
        assert store.statistics().writes > writes  # saved before the answer (interval: 1 h)
        record = await store.get_by_key("counter", "a")
        assert record is not None and json.loads(record.state or b"") == {"n": 2}

        answer = await http.handle(post("/actors/counter/a/http/x"))
        assert (answer.status, json.loads(answer.body)) == (200, {"n": 102})
        record = await store.get_by_key("counter", "a")
        assert record is not None and json.loads(record.state or b"") == {"n": 102}


async def test_an_answer_whose_save_fails_is_a_503_with_an_unknown_outcome(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = DurableMemory()
    async with app(store) as http:
        assert (
            await http.handle(post("/actors/counter/a/actions/add", {"args": [1]}))
        ).status == 200
        store.failing = True
        began = trio.current_time()
        answer = await http.handle(post("/actors/counter/a/actions/add", {"args": [5]}))
        assert answer.status == 503
        error = json.loads(answer.body)
        assert (error["code"], error["retryable"]) == ("store.save_timeout", False)
        assert trio.current_time() - began >= DURABLE_ANSWER_TIMEOUT
        store.failing = False  # the registry's save retries then land it: it ran once
        answer = await http.handle(post("/actors/counter/a/actions/add", {"args": [0]}))
        assert json.loads(answer.body) == {"output": 6}


async def test_without_durable_outputs_the_answer_does_not_wait(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = DurableMemory()
    async with app(store, durable=False) as http:
        await http.handle(post("/actors/counter/a/actions/add", {"args": [3]}))  # creates it
        writes = store.statistics().writes
        answer = await http.handle(post("/actors/counter/a/actions/add", {"args": [3]}))
        assert (answer.status, json.loads(answer.body)) == (200, {"output": 6})
        assert store.statistics().writes == writes  # saved on its interval, not before
