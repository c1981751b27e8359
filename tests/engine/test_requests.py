"""TunnelRequests on its own: the tunnel messages of HTTP requests (as the gateway sends them)
answered by a running registry's HttpApp, with the answers captured where the link would send
them. The bounds (requests in flight, body size, a stalled streamed body, the engine's response
limit) and aborts; ``test_http.py`` runs the same through a real engine."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

import actorcore
from actorcore import ActorContext, ActorOptions, Request, Response
from actorcore.engine.bare import Variant
from actorcore.engine.link import EngineUnavailable
from actorcore.engine.requests import BODY_TIMEOUT, TunnelRequests
from actorcore.http.app import HttpApp
from actorcore.ws.origin import OriginPolicy


class Box(actorcore.Actor):
    options = ActorOptions(max_message_size=64)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, Any]:
        return {"items": []}

    @actorcore.action
    async def put(self, ctx: ActorContext, item: str) -> int:
        ctx.state["items"].append(item)
        return len(ctx.state["items"])

    @actorcore.action
    async def wait(self, ctx: ActorContext) -> None:
        await trio.sleep_forever()

    @actorcore.action
    async def big(self, ctx: ActorContext, size: int) -> str:
        return "x" * size

    async def on_request(self, ctx: ActorContext, request: Request) -> Response:
        return Response(
            status=201,
            body=f"{request.method} {request.path}?{request.query}",
            headers={"x-seen": request.path},
        )


@attrs.define
class Sent:
    """Where the link would send: the messages, in order."""

    messages: list[tuple[dict[str, Any], Variant]] = attrs.field(factory=list)
    arrived: trio.Event = attrs.field(factory=trio.Event)
    down: bool = False
    max_response_payload_size: int | None = None
    """As the engine's ``ToEnvoyInit`` tells the link."""

    async def send_tunnel(self, message_id: dict[str, Any], kind: Variant) -> None:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise EngineUnavailable("down")
        self.messages.append((message_id, kind))
        self.arrived.set()
        self.arrived = trio.Event()

    async def answer(self, request_id: bytes) -> dict[str, Any]:
        while True:
            for message_id, kind in self.messages:
                if message_id["requestId"] == request_id:
                    assert kind.tag == "ToRivetResponseStart"
                    assert message_id["messageIndex"] == 0
                    return dict(kind.val)
            await self.arrived.wait()


@attrs.define
class Rig:
    requests: TunnelRequests
    sent: Sent
    actor_id: str
    registry: actorcore.Registry


@asynccontextmanager
async def rig(max_response: int | None = None, **kwargs: Any) -> AsyncIterator[Rig]:
    registry = actorcore.Registry([Box])
    sent = Sent(max_response_payload_size=max_response)
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        handle = await registry.get_or_create("box", "k")
        app = HttpApp(registry, OriginPolicy.make(("*",), loopback=False))
        requests = TunnelRequests(sent, app, nursery, **kwargs)
        try:
            yield Rig(requests, sent, handle.actor_id, registry)
        finally:
            registry.request_shutdown()


def start(
    actor_id: str,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "actorId": actor_id,
        "actorGeneration": None,
        "method": method,
        "path": path,
        "headers": headers or {},
        "body": body,
        "stream": stream,
        "responseStream": False,
    }


def key(n: int) -> tuple[bytes, bytes]:
    return (b"gate", n.to_bytes(4, "big"))


async def test_an_action_and_on_request_answer_as_on_our_own_listener(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with rig() as r:
        body = json.dumps({"args": ["a"]}).encode()
        r.requests.start(key(1), start(r.actor_id, "POST", "/actions/put", body))
        answer = await r.sent.answer(key(1)[1])
        assert answer["status"] == 200
        assert json.loads(answer["body"]) == {"output": 1}
        assert answer["headers"]["content-type"] == "application/json"
        assert answer["headers"]["content-length"] == str(len(answer["body"]))
        assert answer["stream"] is False

        r.requests.start(key(2), start(r.actor_id, "GET", "/http/a/b?x=1"))
        answer = await r.sent.answer(key(2)[1])
        assert (answer["status"], answer["body"]) == (201, b"GET /a/b?x=1")
        assert answer["headers"]["x-seen"] == "/a/b"

        r.requests.start(key(3), start(r.actor_id, "POST", "/actions/nope"))
        answer = await r.sent.answer(key(3)[1])
        assert answer["status"] == 404
        assert json.loads(answer["body"])["code"] == "action.not_found"

        r.requests.start(key(4), start(r.actor_id, "POST", "/actions/put", b"{not json"))
        answer = await r.sent.answer(key(4)[1])
        assert answer["status"] == 400
        assert json.loads(answer["body"])["code"] == "protocol.invalid_message"

        r.requests.start(key(5), start("no-such-actor", "POST", "/actions/put"))
        answer = await r.sent.answer(key(5)[1])
        assert answer["status"] == 404
        assert r.requests.statistics().answered == 5
        assert r.requests.statistics().in_flight == 0


async def test_a_streamed_body_is_gathered_and_bounded(autojump_clock: trio.abc.Clock) -> None:
    async with rig() as r:
        r.requests.start(key(1), start(r.actor_id, "POST", "/actions/put", b'{"args"', stream=True))
        r.requests.chunk(key(1), {"body": b': ["b', "finish": False})
        r.requests.chunk(key(1), {"body": b'"]}', "finish": True})
        answer = await r.sent.answer(key(1)[1])
        assert (answer["status"], json.loads(answer["body"])) == (200, {"output": 1})

        # Over the actor's max_message_size (64): 413, whether whole or in chunks.
        big = json.dumps({"args": ["x" * 100]}).encode()
        r.requests.start(key(2), start(r.actor_id, "POST", "/actions/put", big))
        r.requests.start(key(3), start(r.actor_id, "POST", "/actions/put", big[:40], stream=True))
        r.requests.chunk(key(3), {"body": big[40:], "finish": True})
        for n in (2, 3):
            answer = await r.sent.answer(key(n)[1])
            assert (answer["status"], answer["body"]) == (413, b"request body too large\n")

        # A streamed body that stops arriving: 408 after BODY_TIMEOUT.
        before = trio.current_time()
        r.requests.start(key(4), start(r.actor_id, "POST", "/actions/put", b"{", stream=True))
        answer = await r.sent.answer(key(4)[1])
        assert answer["status"] == 408
        assert trio.current_time() - before >= BODY_TIMEOUT
        assert await r.registry.call(r.actor_id, "put", "c") == 2  # only "b" was put before


async def test_requests_in_flight_are_bounded_and_aborts_cancel_them(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with rig(max_requests=2) as r:
        r.requests.start(key(1), start(r.actor_id, "POST", "/actions/wait"))
        r.requests.start(key(2), start(r.actor_id, "POST", "/actions/wait"))
        r.requests.start(key(3), start(r.actor_id, "POST", "/actions/put", b'{"args": ["z"]}'))
        answer = await r.sent.answer(key(3)[1])
        assert answer["status"] == 503
        assert answer["headers"]["retry-after"] == "1"
        assert json.loads(answer["body"])["code"] == "actor.overloaded"
        await trio.testing.wait_all_tasks_blocked()
        assert r.requests.statistics().in_flight == 2

        # The client went away: the action is cancelled and nothing is sent for it.
        r.requests.abort(key(1))
        r.requests.abort(key(2))
        await trio.testing.wait_all_tasks_blocked()
        stats = r.requests.statistics()
        assert (stats.in_flight, stats.aborted, stats.refused) == (0, 2, 1)
        assert [m["requestId"] for m, _ in r.sent.messages] == [key(3)[1]]

        # A replayed start of a request already being answered is answered once.
        r.requests.start(key(4), start(r.actor_id, "POST", "/actions/put", b'{"args": ["y"]}'))
        r.requests.start(key(4), start(r.actor_id, "POST", "/actions/put", b'{"args": ["y"]}'))
        await r.sent.answer(key(4)[1])
        await trio.testing.wait_all_tasks_blocked()
        assert [m["requestId"] for m, _ in r.sent.messages].count(key(4)[1]) == 1
        assert await r.registry.call(r.actor_id, "put", "w") == 2


async def test_an_answer_over_the_engines_limit_is_a_500_and_a_down_link_drops_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with rig(max_response=100) as r:
        r.requests.start(key(1), start(r.actor_id, "POST", "/actions/big", b'{"args": [50]}'))
        assert (await r.sent.answer(key(1)[1]))["status"] == 200
        r.requests.start(key(2), start(r.actor_id, "POST", "/actions/big", b'{"args": [500]}'))
        answer = await r.sent.answer(key(2)[1])
        assert answer["status"] == 500
        assert b"limit of 100 bytes" in answer["body"]

        r.sent.down = True
        r.requests.start(key(3), start(r.actor_id, "POST", "/actions/put", b'{"args": ["q"]}'))
        await trio.testing.wait_all_tasks_blocked()
        stats = r.requests.statistics()
        assert (stats.in_flight, stats.answered) == (0, 2)
