"""HTTP through a real Rivet engine's gateway: actions (get-or-create by key, and by actor id)
and ``on_request``, answered by the envoy with the same statuses and JSON errors as actorcore's
own listener, on the same actor a WebSocket client reaches; and an actor that sleeps is woken
by a request."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
import trio
from trio_websocket import ConnectionClosed

import actorcore
from actorcore import ActorContext, ActorOptions, Gateway, Request, Response
from actorcore.engine.link import EnvoyOptions
from actorcore.engine.runtime import EngineRuntime
from actorcore.registry import host_of

from .._clients import tcp_websocket
from ..http._http import request
from .conftest import Engine
from .test_runtime import call, envoy, gateway

TEST_TIMEOUT = 60


class Tally(actorcore.Actor):
    """Shares its name with test_runtime's ``tally``, so that module's ``gateway`` reaches it."""

    options = ActorOptions(sleep_timeout=3600, max_message_size=1024)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, Any]:
        return {"count": 0}

    @actorcore.action
    async def add(self, ctx: ActorContext, n: int) -> int:
        ctx.state["count"] += n
        return int(ctx.state["count"])

    @actorcore.action
    async def info(self, ctx: ActorContext) -> dict[str, Any]:
        return {"generation": ctx.generation, "id": ctx.actor_id}

    async def on_request(self, ctx: ActorContext, req: Request) -> Response:
        return Response.json(
            {
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "body": req.body.decode(),
                "header": req.headers.get("x-test"),
                "count": ctx.state["count"],
            }
        )


def port_of(engine: Engine) -> int:
    return int(engine.url.rsplit(":", 1)[1])


async def test_actions_and_on_request_through_the_gateway(engine: Engine) -> None:
    pool = "p-http"
    way = Gateway(pool=pool)
    port = port_of(engine)
    with trio.fail_after(TEST_TIMEOUT):
        async with envoy(engine, pool, Tally) as runtime:
            add = way.path("tally", "h", "/actions/add")
            reply = await request(port, "POST", add, body=b'{"args": [2]}')
            assert (reply.status, reply.json()) == (200, {"output": 2}), reply
            assert reply.headers["content-type"] == "application/json"
            reply = await request(port, "POST", add, body=b'{"args": [3]}')
            assert reply.json() == {"output": 5}

            # The same actor over a WebSocket through the gateway.
            async with gateway(engine, pool, "h") as ws:
                init = json.loads(await ws.get_message())
                assert await call(ws, 1, "add", 1) == 6
            actor_id = init["actor_id"]

            # By actor id, without get-or-create.
            by_id = f"/gateway/{quote(actor_id, safe='')}/actions/add"
            reply = await request(port, "POST", by_id, body=b'{"args": [4]}')
            assert reply.json() == {"output": 10}

            # The actor's own handler: its path after /http, its query without rvt-*.
            target = way.path("tally", "h", "/http/a/b", "x=1")
            reply = await request(port, "PUT", target, body=b"hello", headers=[("x-test", "yes")])
            assert reply.status == 200, reply
            assert reply.json() == {
                "method": "PUT",
                "path": "/a/b",
                "query": "x=1",
                "body": "hello",
                "header": "yes",
                "count": 10,
            }

            # Errors as on our own listener.
            reply = await request(port, "POST", way.path("tally", "h", "/actions/nope"))
            assert reply.status == 404
            assert reply.json()["code"] == "action.not_found"
            reply = await request(port, "POST", add, body=b"{not json")
            assert (reply.status, reply.json()["code"]) == (400, "protocol.invalid_message")
            reply = await request(port, "POST", add, body=b'{"args": [1, 2, 3]}')
            assert (reply.status, reply.json()["code"]) == (400, "protocol.invalid_message")
            reply = await request(port, "GET", add)
            assert (reply.status, reply.headers.get("allow")) == (405, "POST, OPTIONS")
            big = json.dumps({"args": ["x" * 2000]}).encode()
            reply = await request(port, "POST", add, body=big)
            assert reply.status == 413

            stats = runtime.requests.statistics()
            assert stats.answered >= 9 and stats.in_flight == 0


async def test_a_request_wakes_a_sleeping_actor_as_its_next_generation(engine: Engine) -> None:
    pool = "p-http-wake"
    way = Gateway(pool=pool)
    port = port_of(engine)
    with trio.fail_after(TEST_TIMEOUT):
        async with envoy(engine, pool, Tally) as runtime:
            registry = runtime.registry
            add = way.path("tally", "w", "/actions/add")
            assert (await request(port, "POST", add, body=b'{"args": [7]}')).json() == {"output": 7}
            (entry,) = [e for e in host_of(registry).entries() if e.key == "w"]
            await registry.sleep(entry.actor_id)
            assert registry.lifecycle(entry.actor_id) is actorcore.LifecycleState.ASLEEP
            info = await request(port, "POST", way.path("tally", "w", "/actions/info"))
            assert info.json()["output"]["generation"] == 2, info
            reply = await request(port, "POST", add, body=b'{"args": [1]}')
            assert reply.json() == {"output": 8}


async def test_browser_origins_are_checked_through_the_gateway(engine: Engine) -> None:
    """As on actorcore's own listener: a page of an origin not allowed gets 1008
    ``auth.forbidden`` on a WebSocket and 403 on HTTP; an allowed one, or a client that is
    not a browser (no ``Origin``), is served."""
    pool = "p-origins"
    way = Gateway(pool=pool)
    port = port_of(engine)
    registry = actorcore.Registry([Tally])
    runtime = EngineRuntime(
        registry,
        EnvoyOptions(url=engine.url, pool=pool),
        allowed_origins=("https://app.example",),
    )
    add = way.path("tally", "o", "/actions/add")
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            assert (await request(port, "POST", add, body=b'{"args": [1]}')).status == 200
            evil = [("origin", "https://evil.example")]
            reply = await request(port, "POST", add, body=b'{"args": [1]}', headers=evil)
            assert (reply.status, reply.json()["code"]) == (403, "auth.forbidden")
            good = [("origin", "https://app.example")]
            reply = await request(port, "POST", add, body=b'{"args": [1]}', headers=good)
            assert (reply.status, reply.json()) == (200, {"output": 2})

            resource = way.resource("tally", "o", None)
            async with tcp_websocket(
                port,
                resource,
                subprotocols=way.subprotocols,
                extra_headers=[(b"origin", b"https://evil.example")],
            ) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert (closed.value.reason.code, closed.value.reason.reason) == (
                    1008,
                    "auth.forbidden",
                )
            async with tcp_websocket(
                port,
                resource,
                subprotocols=way.subprotocols,
                extra_headers=[(b"origin", b"https://app.example")],
            ) as ws:
                init = json.loads(await ws.get_message())
                assert init["type"] == "init"
                assert await call(ws, 1, "add", 1) == 3
            registry.request_shutdown()
