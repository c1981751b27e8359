"""Every HTTP route, status and error code of issue 20, over real loopback sockets."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

import actorcore
from actorcore import ActorContext, Request, Response
from actorcore.registry import host_of

from ._http import Client, post_action, request

Serve = Callable[..., Any]


class Counter(actorcore.Actor):
    name = "counter"

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"count": 0}

    @actorcore.action
    async def add(self, ctx: ActorContext, n: int = 1) -> int:
        ctx.state["count"] += n
        return int(ctx.state["count"])

    @actorcore.action
    async def boom(self, ctx: ActorContext) -> None:
        raise RuntimeError("a bug")

    @actorcore.action
    async def refuse(self, ctx: ActorContext) -> None:
        raise actorcore.UserError("not today", code="counter.closed")

    @actorcore.action
    async def conflict(self, ctx: ActorContext) -> None:
        raise Conflict("taken")


class Conflict(actorcore.ActorError):
    code = "counter.conflict"
    http_status = 409


class Web(actorcore.Actor):
    name = "web"

    @actorcore.action
    async def ping(self, ctx: ActorContext) -> str:
        return "pong"

    async def on_request(self, ctx: ActorContext, request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/text":
            return Response(status=201, body="hello", headers={"X-Kind": "text"})
        return Response.json(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "header": request.headers.get("X-Test"),
                "body": request.body.decode(),
            }
        )


async def test_healthz_answers_ok(serve: Serve) -> None:
    server = await serve(actorcore.Registry([Counter]))
    reply = await request(server.port, "GET", "/healthz")
    assert (reply.status, reply.body) == (200, b"ok\n")


async def test_an_action_over_http_creates_the_actor_and_answers_its_output(serve: Serve) -> None:
    registry = actorcore.Registry([Counter])
    server = await serve(registry)
    reply = await post_action(server.port, "/actors/counter/a/actions/add", [5])
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"output": 5}
    # No body at all: no arguments.
    reply = await request(server.port, "POST", "/actors/counter/a/actions/add")
    assert reply.json() == {"output": 6}
    handle = await registry.get("counter", "a")
    reply = await post_action(server.port, f"/actors/by-id/{handle.actor_id}/actions/add", [10])
    assert reply.json() == {"output": 16}


async def test_unknown_actors_and_actions_are_404(serve: Serve) -> None:
    registry = actorcore.Registry([Counter])
    server = await serve(registry)
    for path, code in [
        ("/actors/nobody/a/actions/add", "actor.not_found"),
        ("/actors/by-id/0123456789/actions/add", "actor.not_found"),
        ("/actors/counter/a/actions/nothing", "action.not_found"),
    ]:
        reply = await post_action(server.port, path, [])
        assert reply.status == 404, path
        assert reply.json() == {
            "code": code,
            "message": reply.json()["message"],
            "retryable": False,
        }
    # An unknown action does not create the actor.
    assert registry.statistics().actors_by_state == {}
    reply = await request(server.port, "GET", "/nothing/here")
    assert reply.status == 404
    assert reply.json()["code"] == "actor.not_found"


async def test_a_destroyed_actor_is_404_actor_destroyed(serve: Serve) -> None:
    registry = actorcore.Registry([Counter])
    server = await serve(registry)
    handle = await registry.get_or_create("counter", "gone")
    await registry.destroy(handle.actor_id)
    reply = await post_action(server.port, f"/actors/by-id/{handle.actor_id}/actions/add", [])
    assert reply.status == 404
    assert reply.json()["code"] == "actor.destroyed"


async def test_bad_json_and_wrong_arguments_are_400(serve: Serve) -> None:
    server = await serve(actorcore.Registry([Counter]))
    path = "/actors/counter/a/actions/add"
    for body in [b"{not json", b"[1]", b'{"args": 3}']:
        reply = await request(server.port, "POST", path, body=body)
        assert reply.status == 400, body
        assert reply.json()["code"] == "protocol.invalid_message"
    reply = await post_action(server.port, path, [1, 2, 3])
    assert reply.status == 400
    assert "wrong arguments" in reply.json()["message"]


async def test_a_body_over_max_message_size_is_413(serve: Serve) -> None:
    server = await serve(actorcore.Registry([Counter]))
    limit = Counter.options.max_message_size
    body = json.dumps({"args": ["x" * limit]}).encode()
    reply = await request(server.port, "POST", "/actors/counter/a/actions/add", body=body)
    assert reply.status == 413


async def test_errors_raised_by_actions(serve: Serve) -> None:
    server = await serve(actorcore.Registry([Counter]))
    reply = await post_action(server.port, "/actors/counter/a/actions/boom", [])
    assert reply.status == 500
    assert reply.json()["code"] == "actor.internal_error"
    reply = await post_action(server.port, "/actors/counter/a/actions/refuse", [])
    assert reply.status == 400
    assert reply.json() == {"code": "counter.closed", "message": "not today", "retryable": False}
    reply = await post_action(server.port, "/actors/counter/a/actions/conflict", [])
    assert reply.status == 409
    assert reply.json()["code"] == "counter.conflict"
    # The server lives on.
    assert (await request(server.port, "GET", "/healthz")).status == 200


class Failing(actorcore.Actor):
    name = "failing"

    async def on_wake(self, ctx: ActorContext) -> None:
        raise RuntimeError("cannot start")

    @actorcore.action
    async def go(self, ctx: ActorContext) -> None:
        pass


class Slow(actorcore.Actor):
    name = "slow"
    options = actorcore.ActorOptions(ready_timeout=0.3)
    release = trio.Event()

    async def on_wake(self, ctx: ActorContext) -> None:
        await Slow.release.wait()

    @actorcore.action
    async def go(self, ctx: ActorContext) -> None:
        pass


async def test_start_failure_is_500_and_ready_timeout_is_503_with_retry_after(
    serve: Serve,
) -> None:
    Slow.release = trio.Event()
    server = await serve(actorcore.Registry([Failing, Slow]))
    reply = await post_action(server.port, "/actors/failing/a/actions/go", [])
    assert reply.status == 500
    assert reply.json()["code"] == "actor.start_failed"
    reply = await post_action(server.port, "/actors/slow/a/actions/go", [])
    assert reply.status == 503
    assert reply.json() == {
        "code": "actor.ready_timeout",
        "message": reply.json()["message"],
        "retryable": True,
    }
    assert reply.headers["retry-after"] == "1"
    Slow.release.set()


async def test_overload_is_503_with_retry_after(serve: Serve) -> None:
    # One creation per second per client address: the second new actor is refused.
    server = await serve(
        actorcore.Registry([Counter], create_rate=actorcore.CreateRate(1, burst=1))
    )
    assert (await post_action(server.port, "/actors/counter/one/actions/add", [])).status == 200
    reply = await post_action(server.port, "/actors/counter/two/actions/add", [])
    assert reply.status == 503
    assert reply.json()["code"] == "actor.overloaded"
    assert reply.headers["retry-after"] == "1"


class Guarded(actorcore.Actor):
    name = "guarded"
    seen: list[Any] = []

    async def on_before_connect(self, ctx: ActorContext, params: Any, request: Any) -> None:
        Guarded.seen.append(request)
        if dict(request.headers).get(b"x-pass") != b"yes":
            raise actorcore.Forbidden("no pass")

    @actorcore.action
    async def go(self, ctx: ActorContext) -> str:
        return "in"


async def test_on_before_connect_and_authorize_guard_http(serve: Serve) -> None:
    Guarded.seen = []
    gate_seen: list[actorcore.ConnectRequest] = []

    async def authorize(request: actorcore.ConnectRequest) -> None:
        gate_seen.append(request)
        if dict(request.headers).get(b"authorization") == b"Bearer bad":
            raise actorcore.Forbidden("bad token")

    server = await serve(actorcore.Registry([Guarded], authorize=authorize))
    path = "/actors/guarded/k/actions/go"
    reply = await post_action(server.port, path, [])
    assert reply.status == 403
    assert reply.json()["code"] == "auth.forbidden"
    reply = await post_action(server.port, path, [], headers=[("x-pass", "yes")])
    assert (reply.status, reply.json()) == (200, {"output": "in"})
    assert Guarded.seen[-1].path == path
    reply = await post_action(
        server.port, path, [], headers=[("x-pass", "yes"), ("authorization", "Bearer bad")]
    )
    assert reply.status == 403
    assert gate_seen[-1].name == "guarded" and gate_seen[-1].key == "k"
    assert gate_seen[-1].client is not None


async def test_on_request_gets_the_request_and_its_response_is_sent(serve: Serve) -> None:
    registry = actorcore.Registry([Web])
    server = await serve(registry)
    reply = await request(
        server.port,
        "PUT",
        "/actors/web/a/http/some/path?x=1&y=2",
        body=b"payload",
        headers=[("X-Test", "yes")],
    )
    assert reply.status == 200
    assert reply.json() == {
        "method": "PUT",
        "path": "/some/path",
        "query": "x=1&y=2",
        "header": "yes",
        "body": "payload",
    }
    reply = await request(server.port, "GET", "/actors/web/a/http")
    assert reply.json()["path"] == "/"
    reply = await request(server.port, "GET", "/actors/web/a/http/text")
    assert (reply.status, reply.body, reply.headers["x-kind"]) == (201, b"hello", "text")
    handle = await registry.get("web", "a")
    reply = await request(server.port, "DELETE", f"/actors/by-id/{handle.actor_id}/http/x")
    assert reply.json()["method"] == "DELETE"


async def test_on_request_that_raises_is_500_and_the_server_lives_on(serve: Serve) -> None:
    server = await serve(actorcore.Registry([Web]))
    reply = await request(server.port, "GET", "/actors/web/a/http/boom")
    assert reply.status == 500
    assert reply.json()["code"] == "actor.internal_error"
    assert (await request(server.port, "GET", "/actors/web/a/http/text")).status == 201


async def test_an_actor_without_on_request_is_404_and_not_woken(serve: Serve) -> None:
    registry = actorcore.Registry([Counter])
    server = await serve(registry)
    reply = await request(server.port, "GET", "/actors/counter/a/http/x")
    assert reply.status == 404
    assert registry.statistics().actors_by_state == {}


class Holding(actorcore.Actor):
    name = "holding"
    entered = trio.Event()
    release = trio.Event()

    async def on_request(self, ctx: ActorContext, request: Request) -> Response:
        Holding.entered.set()
        await Holding.release.wait()
        return Response(body="done")


async def test_a_request_is_tracked_work_that_keeps_the_actor_awake(serve: Serve) -> None:
    Holding.entered, Holding.release = trio.Event(), trio.Event()
    registry = actorcore.Registry([Holding])
    server = await serve(registry)
    replies: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            replies.append(await request(server.port, "GET", "/actors/holding/a/http/"))

        nursery.start_soon(call)
        await Holding.entered.wait()
        handle = await registry.get("holding", "a")
        nursery.start_soon(registry.sleep, handle.actor_id)
        with trio.move_on_after(0.3):
            while True:
                await trio.sleep(0.01)
                # Grace waits for the request: the actor does not finalize under it.
                assert registry.lifecycle(handle.actor_id) in (
                    actorcore.LifecycleState.STARTED,
                    actorcore.LifecycleState.SLEEP_GRACE,
                )
        Holding.release.set()
    assert replies[0].status == 200 and replies[0].body == b"done"
    assert registry.lifecycle(handle.actor_id) in (actorcore.LifecycleState.ASLEEP, None)


class Sleepy(actorcore.Actor):
    name = "sleepy"
    release = trio.Event()
    sleeping = trio.Event()

    async def on_sleep(self, ctx: ActorContext) -> None:
        Sleepy.sleeping.set()  # the drain began
        await Sleepy.release.wait()

    @actorcore.action
    async def go(self, ctx: ActorContext) -> None:
        pass


async def test_readyz_is_200_while_serving_and_503_once_a_drain_began(serve: Serve) -> None:
    Sleepy.release, Sleepy.sleeping = trio.Event(), trio.Event()
    registry = actorcore.Registry([Sleepy])
    server = await serve(registry)
    assert (await post_action(server.port, "/actors/sleepy/a/actions/go", [])).status == 200
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        client = Client(stream, "127.0.0.1")
        reply = await client.request("GET", "/readyz")
        assert reply.status == 200
        registry.request_shutdown()
        with trio.fail_after(5):
            await Sleepy.sleeping.wait()
        assert registry.draining
        # The actor's on_sleep holds the drain: the kept-alive connection is still answered.
        reply = await client.request("GET", "/readyz")
        assert reply.status == 503
        assert reply.headers["retry-after"] == "1"
        assert reply.headers["connection"] == "close"
        Sleepy.release.set()


class FlakyStore(actorcore.MemoryStore):
    failing = False

    async def save(self, actor_id: str, generation: int, state: bytes) -> None:
        if self.failing:
            raise actorcore.StoreError("disk on fire")
        await super().save(actor_id, generation, state)


class Saver(actorcore.Actor):
    name = "saver"

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"n": 0}

    @actorcore.action
    async def bump(self, ctx: ActorContext) -> None:
        ctx.state["n"] += 1
        await ctx.save_state()


async def test_readyz_is_503_while_the_store_is_failing(serve: Serve) -> None:
    store = FlakyStore()
    registry = actorcore.Registry([Saver], store)
    server = await serve(registry)
    assert (await post_action(server.port, "/actors/saver/a/actions/bump", [])).status == 200
    store.failing = True
    reply = await post_action(server.port, "/actors/saver/a/actions/bump", [])
    assert reply.status == 503
    assert reply.json()["code"] == "store.error"
    assert host_of(registry).store_failing
    assert (await request(server.port, "GET", "/readyz")).status == 503
    store.failing = False
    assert (await post_action(server.port, "/actors/saver/a/actions/bump", [])).status == 200
    assert (await request(server.port, "GET", "/readyz")).status == 200


async def test_a_request_during_the_drain_is_503(serve: Serve) -> None:
    Sleepy.release, Sleepy.sleeping = trio.Event(), trio.Event()
    registry = actorcore.Registry([Sleepy, Counter])
    server = await serve(registry)
    assert (await post_action(server.port, "/actors/sleepy/a/actions/go", [])).status == 200
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        client = Client(stream, "127.0.0.1")
        assert (await client.request("GET", "/healthz")).status == 200
        registry.request_shutdown()
        with trio.fail_after(5):
            await Sleepy.sleeping.wait()
        assert registry.draining
        reply = await client.request("POST", "/actors/counter/new/actions/add")
        assert reply.status == 503
        assert reply.json()["code"] == "runtime.shutdown"
        assert reply.headers["retry-after"] == "1"
        Sleepy.release.set()


async def test_origins_guard_http_and_cors_preflight_answers_allowed_origins(
    serve: Serve,
) -> None:
    server = await serve(actorcore.Registry([Counter]), allowed_origins=["https://app.example"])
    path = "/actors/counter/a/actions/add"
    reply = await post_action(server.port, path, [], headers=[("Origin", "https://evil.example")])
    assert reply.status == 403
    assert reply.json()["code"] == "auth.forbidden"
    reply = await post_action(server.port, path, [], headers=[("Origin", "https://app.example")])
    assert reply.status == 200
    assert reply.headers["access-control-allow-origin"] == "https://app.example"
    assert (await post_action(server.port, path, [])).status == 200  # no Origin: passes
    reply = await request(
        server.port,
        "OPTIONS",
        path,
        headers=[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
    )
    assert reply.status == 204
    assert reply.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert reply.headers["access-control-allow-headers"] == "content-type"
    reply = await request(
        server.port, "OPTIONS", path, headers=[("Origin", "https://evil.example")]
    )
    assert reply.status == 403


async def test_default_origin_policy_is_same_origin_for_http(serve: Serve) -> None:
    server = await serve(actorcore.Registry([Counter]))
    host = f"127.0.0.1:{server.port}"
    path = "/actors/counter/a/actions/add"
    ok = await post_action(server.port, path, [], headers=[("Origin", f"http://{host}")])
    assert ok.status == 200
    bad = await post_action(server.port, path, [], headers=[("Origin", "http://evil.example")])
    assert bad.status == 403


async def test_method_and_websocket_route_answers(serve: Serve) -> None:
    server = await serve(actorcore.Registry([Counter]))
    reply = await request(server.port, "GET", "/actors/counter/a/actions/add")
    assert reply.status == 405
    assert reply.headers["allow"] == "POST, OPTIONS"
    reply = await request(server.port, "GET", "/actors/counter/a/connect")
    assert reply.status == 426
