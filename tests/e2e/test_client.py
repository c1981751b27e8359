"""The client (issue 6) end to end: calls, typed errors, events, and the reconnect policy.

Three kinds of server:

- the real server (``registry.serve`` on 127.0.0.1, port 0) for the protocol and for the closes
  it produces itself: 1008 (not found, forbidden), 1000 ``actor.destroyed``, 1012 on shutdown;
- a scripted trio-websocket server of this file (:class:`ScriptedServer`) that closes with a
  chosen code, to check reconnect-or-not for every code deterministically;
- the same script over in-memory streams (``open_stream``) for backoff timing on the virtual
  clock (no sockets there, so ``autojump_clock`` is safe).

Every test is bounded by ``trio.fail_after``; backoffs are made small so the real clock stays
fast.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
    wrap_server_stream,
)

import actorcore
from actorcore import (
    ActionNotFound,
    ActorContext,
    ActorDestroyed,
    ActorError,
    ActorNotFound,
    ActorOptions,
    ActorOverloaded,
    ActorReadyTimeout,
    ActorStartFailed,
    ActorStopping,
    Forbidden,
    InternalError,
    InvalidMessage,
    MessageTooLarge,
    RuntimeShutdown,
    StoreError,
    UserError,
)
from actorcore.client import (
    ActorConnection,
    ActorEvent,
    CallTimeout,
    CloseInfo,
    ConnectionLost,
    ReconnectPolicy,
    RemoteError,
    backoff_delay,
    connect,
    error_for_close,
    error_from_frame,
    policy_for_close,
)

FAST: dict[str, Any] = {"initial_backoff": 0.01, "max_backoff": 0.05, "connect_timeout": 2.0}


# ---------------------------------------------------------------------------- the real server


class Counter(actorcore.Actor):
    name = "counter"
    options = ActorOptions(sleep_grace_period=0.1, close_timeout=0.2, hook_timeout=1.0)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"count": 0}

    async def on_before_connect(self, ctx: ActorContext, params: Any, request: Any) -> None:
        if (params or {}).get("token") == "expired":
            raise actorcore.Forbidden("auth.token_expired")

    @actorcore.action
    async def increment(self, ctx: ActorContext, by: int = 1) -> int:
        ctx.state["count"] += by
        ctx.broadcast("changed", ctx.state["count"])
        return int(ctx.state["count"])

    @actorcore.action
    async def add(self, ctx: ActorContext, a: int, b: int = 0) -> int:
        return a + b

    @actorcore.action
    async def params(self, ctx: ActorContext) -> Any:
        assert ctx.conn is not None
        return ctx.conn.params

    @actorcore.action
    async def fail(self, ctx: ActorContext, kind: str) -> None:
        if kind == "user":
            raise actorcore.UserError("nope", code="counter.nope")
        raise RuntimeError("secret detail")

    @actorcore.action
    async def shout(self, ctx: ActorContext, text: str) -> None:
        assert ctx.conn is not None
        await ctx.conn.send({"text": text})

    @actorcore.action
    async def slow(self, ctx: ActorContext, seconds: float) -> str:
        await trio.sleep(seconds)
        return "slow done"

    @actorcore.action
    async def stuck(self, ctx: ActorContext, seconds: float) -> str:
        # Ignores the grace deadline, so the call is still pending when the close comes.
        with trio.CancelScope(shield=True):
            await trio.sleep(seconds)
        return "stuck done"


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[actorcore.Registry, str]]:
    """The real server on loopback; drains on exit."""
    registry = actorcore.Registry([Counter])
    async with trio.open_nursery() as nursery:
        server = await nursery.start(registry.serve, "127.0.0.1", 0)
        yield registry, f"ws://127.0.0.1:{server.port}"
        registry.request_shutdown()


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - test polling
            await trio.sleep(0.002)


async def test_call_round_trip() -> None:
    with trio.fail_after(10):
        async with serving() as (registry, url):
            key = "room/1 ü?"  # percent-encoded as one path segment
            async with connect(url, "counter", key, params={"nick": "ann"}) as actor:
                assert actor.connected and not actor.finished
                assert await actor.call("increment", 2) == 2
                assert await actor.call("increment", by=3) == 5
                assert await actor.call("add", 1, b=41) == 42
                assert await actor.call("params") == {"nick": "ann"}
                assert await actor.call_with_timeout(5, "increment") == 6
                handle = await registry.get("counter", key)
                assert actor.actor_id == handle.actor_id
                assert actor.conn_id and actor.generation >= 1
                stats = actor.statistics()
                assert stats.attempts == stats.connects == 1
                assert stats.calls_sent == 5 and stats.pending_calls == 0
            assert actor.finished and not actor.connected
            assert actor.last_close is None  # the client's own close is not recorded
            with pytest.raises(ConnectionLost) as info:
                await actor.call("increment")
            assert info.value.close_code == 1000 and not info.value.retryable


async def test_typed_errors_from_error_frames() -> None:
    with trio.fail_after(10):
        async with serving() as (_, url), connect(url, "counter", "errors") as actor:
            with pytest.raises(ActionNotFound) as missing:
                await actor.call("nope")
            assert missing.value.code == "actor.action_not_found"
            assert not missing.value.retryable
            with pytest.raises(RemoteError) as user:
                await actor.call("fail", "user")
            assert (user.value.code, user.value.message) == ("counter.nope", "nope")
            assert not user.value.retryable
            with pytest.raises(InternalError) as internal:
                await actor.call("fail", "other")
            assert "secret" not in internal.value.message
            with pytest.raises(ValueError):
                await actor.call("")  # refused before sending: 1008 would end the connection
            with pytest.raises(TypeError):
                await actor.call("add", object())
            assert await actor.call("add", 1, 2) == 3  # the connection is still fine
            assert actor.statistics().connects == 1


async def test_call_timeout_discards_the_late_answer() -> None:
    with trio.fail_after(10):
        async with serving() as (_, url), connect(url, "counter", "timeout") as actor:
            actor.call_timeout = 0.05
            with pytest.raises(CallTimeout) as info:
                await actor.call("slow", 0.3)
            assert info.value.code == "client.call_timeout"
            assert actor.statistics().pending_calls == 0
            actor.call_timeout = 5
            assert await actor.call("slow", 0.3) == "slow done"  # the late one was dropped
            assert await actor.call("increment") == 1


async def test_subscribe_events_and_messages() -> None:
    with trio.fail_after(10):
        async with serving() as (_, url), connect(url, "counter", "events") as actor:
            events = actor.events()
            await actor.call("increment")  # not subscribed yet: no event
            await actor.subscribe("changed")
            assert actor.subscriptions == {"changed"}
            await actor.call("increment")
            await actor.call("increment", 5)
            assert await events.receive() == ActorEvent("changed", (2,))
            assert await events.receive() == ActorEvent("changed", (7,))
            await actor.unsubscribe("changed")
            await actor.call("increment")
            await actor.call("shout", "hi")
            messages = actor.messages()
            assert await messages.receive() == {"text": "hi"}
            stats = actor.statistics()
            assert stats.events_received == 2 and stats.events_dropped == 0
            assert stats.messages_received == 1
        # Iteration ends when the connection finishes.
        assert [e async for e in events] == []


async def test_unknown_actor_raises_from_async_with_and_does_not_reconnect() -> None:
    with trio.fail_after(10):
        async with serving() as (_, url):
            client = connect(url, "nope", "x", **FAST)
            with pytest.raises(ActorNotFound):
                async with client:
                    pytest.fail("entered")
            assert client.finished and client.statistics().attempts == 1
            assert client.last_close == CloseInfo(1008, "actor.not_found")


async def test_forbidden_keeps_its_message_and_does_not_reconnect() -> None:
    with trio.fail_after(10):
        async with serving() as (_, url):
            client = connect(url, "counter", "f", params={"token": "expired"}, **FAST)
            with pytest.raises(Forbidden) as info:
                async with client:
                    pytest.fail("entered")
            assert info.value.message == "auth.token_expired"
            assert client.statistics().attempts == 1


async def test_destroy_fails_pending_calls_and_ends_the_connection() -> None:
    with trio.fail_after(10):
        async with serving() as (registry, url), connect(url, "counter", "doomed") as actor:
            actor.subscribe("changed")  # as the issue writes it: awaiting is optional
            events = actor.events()
            outcome: list[BaseException] = []

            async def pending_call() -> None:
                try:
                    await actor.call("stuck", 0.6)
                except ActorError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending_call)
                await wait_until(lambda: actor.statistics().pending_calls == 1)
                await registry.destroy(actor.actor_id)
                await actor.wait_finished()
            assert len(outcome) == 1 and type(outcome[0]) is ActorDestroyed
            assert actor.last_close == CloseInfo(1000, "actor.destroyed")
            assert actor.statistics().attempts == 1  # never reconnected
            with pytest.raises(ActorDestroyed):
                await actor.call("increment")
            with pytest.raises(ActorDestroyed):
                await actor.subscribe("other")
            assert [e async for e in events] == []


async def test_shutdown_answers_the_call_in_flight_then_1012_and_backs_off() -> None:
    with trio.fail_after(10):
        registry = actorcore.Registry([Counter])
        async with trio.open_nursery() as nursery:
            server = await nursery.start(registry.serve, "127.0.0.1", 0)
            url = f"ws://127.0.0.1:{server.port}"
            async with connect(url, "counter", "drained", **FAST) as actor:
                outcome: list[object] = []

                async def pending_call() -> None:
                    try:
                        outcome.append(await actor.call("slow", 0.3))
                    except ActorError as exc:
                        outcome.append(exc)

                nursery.start_soon(pending_call)
                await wait_until(lambda: actor.statistics().pending_calls == 1)
                await registry.shutdown()
                await wait_until(lambda: bool(outcome))
                # The drain let the action in flight answer before it closed with 1012.
                assert outcome == ["slow done"]
                # The server is gone: attempts keep failing (1006) and keep backing off.
                await wait_until(lambda: actor.statistics().attempts >= 5)
                stats = actor.statistics()
                assert stats.closes_by_code[1012] == 1
                assert stats.closes_by_code[1006] >= 3
                assert stats.last_delay is not None and 0 < stats.last_delay <= 0.05
                assert not actor.connected and not actor.finished
                # A call made while reconnecting waits (bounded) instead of being sent.
                with pytest.raises(CallTimeout):
                    await actor.call_with_timeout(0.05, "increment")
            assert actor.finished  # leaving the block stopped the reconnect loop


async def test_body_exception_propagates_unwrapped() -> None:
    with trio.fail_after(10):
        async with serving() as (_, url):
            with pytest.raises(KeyError):
                async with connect(url, "counter", "body"):
                    raise KeyError("mine")


async def test_initial_connect_to_a_closed_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"ws://127.0.0.1:{port}"
    with trio.fail_after(10):
        client = connect(url, "counter", "x", reconnect=False)
        with pytest.raises(ConnectionLost) as info:
            async with client:
                pytest.fail("entered")
        assert info.value.close_code == 1006 and info.value.retryable
        assert client.statistics().attempts == 1
        # With reconnect, attempts are retried with backoff until connect_timeout.
        start = trio.current_time()
        client = connect(url, "counter", "x", **{**FAST, "connect_timeout": 0.3})
        with pytest.raises(ConnectionLost):
            async with client:
                pytest.fail("entered")
        assert trio.current_time() - start < 1.0
        assert client.statistics().attempts > 1


# ---------------------------------------------------------------------------- scripted server

Behaviour = Callable[["ScriptedServer", int, WebSocketConnection], Awaitable[None]]


@attrs.define
class ScriptedServer:
    """A protocol server whose ``n``-th connection runs ``script[n]`` (the last one repeats).

    Records the frames each connection received and the close code the client sent.
    """

    script: list[Behaviour]
    received: list[list[dict[str, Any]]] = attrs.field(factory=list)
    client_closes: list[int] = attrs.field(factory=list)
    port: int = 0

    async def handler(self, request: WebSocketRequest) -> None:
        index = len(self.received)
        self.received.append([])
        ws = await request.accept()
        await self.script[min(index, len(self.script) - 1)](self, index, ws)

    async def receive(self, index: int, ws: WebSocketConnection) -> dict[str, Any] | None:
        try:
            frame: dict[str, Any] = json.loads(await ws.get_message())
        except ConnectionClosed as exc:
            self.client_closes.append(exc.reason.code if exc.reason else 1006)
            return None
        self.received[index].append(frame)
        return frame

    def actions(self, index: int) -> list[str]:
        return [f["name"] for f in self.received[index] if f["type"] == "action"]


async def send_init(index: int, ws: WebSocketConnection) -> None:
    init = {"type": "init", "actor_id": "a1", "conn_id": f"c{index}", "generation": 1}
    await ws.send_message(json.dumps(init))


def close_now(code: int, reason: str) -> Behaviour:
    """Close before ``init`` (how the server refuses a connection)."""

    async def behaviour(server: ScriptedServer, index: int, ws: WebSocketConnection) -> None:
        await ws.aclose(code, reason)

    return behaviour


def close_after_action(code: int, reason: str) -> Behaviour:
    """Send ``init``, wait for one action frame, then close without answering it."""

    async def behaviour(server: ScriptedServer, index: int, ws: WebSocketConnection) -> None:
        await send_init(index, ws)
        while (frame := await server.receive(index, ws)) is not None:
            if frame["type"] == "action":
                await ws.aclose(code, reason)
                return

    return behaviour


async def answer(server: ScriptedServer, index: int, ws: WebSocketConnection) -> None:
    """Send ``init``, then answer every action with its name, until the client closes."""
    await send_init(index, ws)
    while (frame := await server.receive(index, ws)) is not None:
        if frame["type"] == "action":
            result = {"type": "action_result", "id": frame["id"], "output": frame["name"]}
            await ws.send_message(json.dumps(result))


@asynccontextmanager
async def scripted(*script: Behaviour) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(list(script))
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(serve_websocket, server.handler, "127.0.0.1", 0, None)
        server.port = listening.port
        yield server
        nursery.cancel_scope.cancel()


async def call_expecting_close(actor: ActorConnection) -> ActorError:
    with pytest.raises(ActorError) as info:
        await actor.call("work")
    return info.value


@pytest.mark.parametrize(
    ("code", "reason", "error", "reconnects"),
    [
        (1000, "actor.destroyed", ActorDestroyed, False),
        (1000, "", ConnectionLost, False),
        (1008, "actor.not_found", ActorNotFound, False),
        (1008, "protocol.invalid_message", InvalidMessage, False),
        (1001, "actor.sleeping", ActorStopping, True),
        (1012, "runtime.shutdown", RuntimeShutdown, True),
        (1013, "actor.overloaded", ActorOverloaded, True),
        (1013, "actor.ready_timeout", ActorReadyTimeout, True),
        (1011, "actor.start_failed", ActorStartFailed, True),
        (1011, "actor.internal_error", InternalError, True),
        (1009, "message.too_large", MessageTooLarge, True),
        (4000, "app.kicked", ConnectionLost, True),
    ],
)
async def test_reconnect_policy_by_close_code(
    code: int, reason: str, error: type[ActorError], reconnects: bool
) -> None:
    with trio.fail_after(5):
        async with (
            scripted(close_after_action(code, reason), answer) as server,
            connect(f"ws://127.0.0.1:{server.port}", "counter", "k", **FAST) as actor,
        ):
            assert actor.conn_id == "c0"
            failed = await call_expecting_close(actor)
            assert type(failed) is error  # the pending call failed with the typed error
            assert server.actions(0) == ["work"]
            if not reconnects:
                await actor.wait_finished()
                assert type(actor.final_error) is error
                assert actor.statistics().attempts == 1 and len(server.received) == 1
                with pytest.raises(error):
                    await actor.call("work")
                return
            await actor.wait_connected()
            assert actor.conn_id == "c1" and actor.last_close == CloseInfo(code, reason)
            delay = actor.statistics().last_delay
            if code == 1001:
                assert delay == 0.0  # at once
            else:
                assert delay is not None and 0 < delay <= 0.01  # the first backoff step
            # The failed call was not resent on the new connection (at most once).
            assert await actor.call("again") == "again"
            assert server.actions(1) == ["again"]


async def test_1001_without_init_backs_off() -> None:
    with trio.fail_after(5):
        async with (
            scripted(
                close_after_action(1001, "actor.sleeping"),
                close_now(1001, "actor.sleeping"),
                answer,
            ) as server,
            connect(f"ws://127.0.0.1:{server.port}", "counter", "k", **FAST) as actor,
        ):
            await call_expecting_close(actor)
            await wait_until(lambda: actor.conn_id == "c2")
            stats = actor.statistics()
            assert stats.attempts == 3 and stats.closes_by_code == {1001: 2}
            assert stats.last_delay is not None and stats.last_delay > 0


async def test_no_reconnect_when_disabled() -> None:
    with trio.fail_after(5):
        async with (
            scripted(close_after_action(1012, "runtime.shutdown"), answer) as server,
            connect(f"ws://127.0.0.1:{server.port}", "c", "k", reconnect=False) as actor,
        ):
            assert isinstance(await call_expecting_close(actor), RuntimeShutdown)
            await actor.wait_finished()
            assert len(server.received) == 1


async def test_reconnect_resubscribes_and_queued_calls_wait() -> None:
    with trio.fail_after(5):
        async with (
            scripted(close_after_action(1012, "runtime.shutdown"), answer) as server,
            connect(f"ws://127.0.0.1:{server.port}", "counter", "k", **FAST) as actor,
        ):
            await actor.subscribe("changed")
            await actor.subscribe("left")
            await call_expecting_close(actor)
            assert not actor.connected  # the next connection needs a backoff and a handshake
            # Made while reconnecting: waits for the next connection, then is sent there.
            await actor.unsubscribe("left")
            await actor.subscribe("joined")
            assert await actor.call("queued") == "queued"
            assert actor.conn_id == "c1"
            frames = server.received[1]
            subscribed = [f["event"] for f in frames if f["type"] == "subscribe"]
            assert sorted(subscribed) == ["changed", "joined"]
            assert frames[-1] == {
                "type": "action",
                "id": frames[-1]["id"],
                "name": "queued",
                "args": [],
            }
            assert not [f for f in frames if f["type"] == "unsubscribe"]


async def test_leaving_the_block_closes_with_1000() -> None:
    with trio.fail_after(5):
        async with scripted(answer) as server:
            async with connect(f"ws://127.0.0.1:{server.port}", "counter", "k") as actor:
                assert await actor.call("x") == "x"
            await wait_until(lambda: server.client_closes == [1000])
            assert actor.finished


async def test_full_buffers_drop_and_odd_frames_are_ignored() -> None:
    async def chatty(server: ScriptedServer, index: int, ws: WebSocketConnection) -> None:
        await send_init(index, ws)
        for n in range(3):
            await ws.send_message(json.dumps({"type": "event", "name": "tick", "args": [n]}))
        await ws.send_message(json.dumps({"type": "message", "data": [1, "two"]}))
        await ws.send_message(json.dumps({"type": "future", "x": 1}))
        await ws.send_message("not json")
        await ws.send_message(b"\x00binary")
        await ws.send_message(json.dumps({"type": "error", "id": None, "code": "x.y"}))
        await ws.send_message(json.dumps({"type": "action_result", "id": 999, "output": 1}))
        await answer(server, index, ws)

    with trio.fail_after(5):
        async with (
            scripted(chatty) as server,
            connect(f"ws://127.0.0.1:{server.port}", "counter", "k", buffer_size=1) as actor,
        ):
            assert await actor.call("still-fine") == "still-fine"
            events = actor.events()
            assert events.receive_nowait() == ActorEvent("tick", (0,))
            with pytest.raises(trio.WouldBlock):
                events.receive_nowait()
            assert actor.messages().receive_nowait() == [1, "two"]
            stats = actor.statistics()
            assert (stats.events_received, stats.events_dropped) == (3, 2)
            assert (stats.messages_received, stats.messages_dropped) == (1, 0)
            with pytest.raises(RuntimeError):
                await actor.__aenter__()


async def test_non_init_first_frame_ends_the_connection() -> None:
    async def bogus(server: ScriptedServer, index: int, ws: WebSocketConnection) -> None:
        await ws.send_message(json.dumps({"type": "hello"}))
        await server.receive(index, ws)

    with trio.fail_after(5):
        async with scripted(bogus) as server:
            client = connect(f"ws://127.0.0.1:{server.port}", "counter", "k", **FAST)
            with pytest.raises(ConnectionLost) as info:
                async with client:
                    pytest.fail("entered")
            assert not info.value.retryable and client.statistics().attempts == 1
            await wait_until(lambda: server.client_closes == [1002])


# ---------------------------------------------------------------------------- virtual clock


async def test_backoff_grows_and_is_capped_on_the_virtual_clock(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Over in-memory streams (no sockets): every attempt is refused with 1013 before init.
    The initial connect retries until ``connect_timeout`` and then raises the typed error; the
    gaps between attempts respect the full-jitter caps."""
    server = ScriptedServer([close_now(1013, "actor.overloaded")])
    attempts: list[float] = []

    async def open_stream() -> trio.abc.Stream:
        attempts.append(trio.current_time())
        client, server_side = trio.testing.memory_stream_pair()

        async def serve_one() -> None:
            request = await wrap_server_stream(nursery, server_side)
            await server.handler(request)

        nursery.start_soon(serve_one)
        return client

    with trio.fail_after(100):
        client = connect(
            "ws://actors.test",
            "counter",
            "k",
            open_stream=open_stream,
            initial_backoff=1.0,
            max_backoff=8.0,
            connect_timeout=60.0,
        )
        with pytest.raises(ActorOverloaded):
            async with client:
                pytest.fail("entered")
    assert 60.0 - 8.0 <= trio.current_time() <= 60.0 + 1.0
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(gaps) >= 8
    for failures, gap in enumerate(gaps):
        assert gap <= min(8.0, 2.0**failures) + 0.01
    assert client.statistics().closes_by_code == {1013: len(attempts)}


# ---------------------------------------------------------------------------- pure functions


def test_policy_for_close() -> None:
    assert policy_for_close(1000) is ReconnectPolicy.NEVER
    assert policy_for_close(1008) is ReconnectPolicy.NEVER
    assert policy_for_close(1001) is ReconnectPolicy.AT_ONCE
    for code in (1006, 1009, 1011, 1012, 1013, 4000):
        assert policy_for_close(code) is ReconnectPolicy.BACKOFF


def test_error_for_close() -> None:
    assert type(error_for_close(1000, "actor.destroyed")) is ActorDestroyed
    normal = error_for_close(1000, "")
    assert isinstance(normal, ConnectionLost) and not normal.retryable
    assert type(error_for_close(1001, "")) is ActorStopping
    forbidden = error_for_close(1008, "auth.token_expired")
    assert type(forbidden) is Forbidden and forbidden.message == "auth.token_expired"
    assert type(error_for_close(1008, "auth.forbidden")) is Forbidden
    assert type(error_for_close(1012, "")) is RuntimeShutdown
    assert type(error_for_close(1013, "")) is ActorOverloaded
    assert type(error_for_close(1011, "whatever")) is InternalError
    lost = error_for_close(1006, "")
    assert isinstance(lost, ConnectionLost) and lost.retryable and lost.close_code == 1006
    assert error_for_close(1006, "\u00e9" * 200).code == "client.connection_lost"


def test_error_from_frame() -> None:
    missing = error_from_frame(
        {"code": "actor.action_not_found", "message": "no", "retryable": False}
    )
    assert type(missing) is ActionNotFound and missing.message == "no"
    store = error_from_frame({"code": "store.error", "message": "m", "retryable": False})
    assert type(store) is StoreError and not store.retryable  # the frame's flag wins
    assert StoreError.retryable  # ... on the instance only
    user = error_from_frame({"code": "user.error", "message": "m", "retryable": False})
    assert type(user) is UserError
    custom = error_from_frame({"code": "room.full", "message": "full", "retryable": True})
    assert type(custom) is RemoteError and custom.code == "room.full" and custom.retryable
    assert RemoteError.code == "remote.error"
    assert type(error_from_frame({})) is InternalError


def test_errors_survive_copy() -> None:
    lost = ConnectionLost("gone", close_code=1000, close_reason="x", retryable=False)
    clone = copy.copy(lost)
    assert (clone.message, clone.close_code, clone.close_reason, clone.retryable) == (
        "gone",
        1000,
        "x",
        False,
    )
    remote = copy.copy(RemoteError("m", code="a.b", retryable=True))
    assert (remote.code, remote.retryable) == ("a.b", True)


def test_backoff_delay() -> None:
    rng = random.Random(7)
    for failures in range(12):
        cap = min(5.0, 0.1 * 2**failures)
        delays = [backoff_delay(failures, initial=0.1, maximum=5.0, rng=rng) for _ in range(50)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap / 2  # jitter spreads over the whole range
    assert backoff_delay(10_000, initial=0.1, maximum=5.0) <= 5.0


def test_connect_validates_arguments() -> None:
    with pytest.raises(ValueError):
        connect("http://127.0.0.1:1", "counter", "k")
    with pytest.raises(ValueError):
        connect("ws://127.0.0.1:1", "", "k")
    with pytest.raises(ValueError):
        connect("ws://127.0.0.1:1", "counter", "")
    with pytest.raises(ValueError, match="connect_timeout must be > 0"):
        connect("ws://127.0.0.1:1", "counter", "k", connect_timeout=0)
    with pytest.raises(ValueError, match="call_timeout must be > 0 or None"):
        connect("ws://127.0.0.1:1", "counter", "k", call_timeout=-1)
    with pytest.raises(ValueError):
        actorcore.ClientOptions(buffer_size=-1)
    options = actorcore.ClientOptions(reconnect=False, call_timeout=None)
    direct = actorcore.ActorConnection("ws://127.0.0.1:1", "counter", "k", options=options)
    assert direct.options is options and direct.call_timeout is None
    assert connect(
        "ws://127.0.0.1:1", "counter", "k", reconnect=False
    ).options == options.__class__(reconnect=False)
    client = connect("ws://[::1]:8080/base/", "counter", "a/b", params={"n": 1})
    assert (
        client.url == "ws://[::1]:8080/base/actors/counter/a%2Fb/connect?params=%7B%22n%22%3A1%7D"
    )
    assert connect("wss://example.com", "c", "k").url == "wss://example.com/actors/c/k/connect"


async def test_cancelling_the_block_while_reconnecting_leaves_trio_intact() -> None:
    """Hardening item 10: the client's nursery was entered and left by hand, and a close
    interrupted by the cancel left trio's nursery stack corrupted ("Nursery stack
    corrupted"). Cancel the ``async with`` block while the client reconnects to a server that
    is gone; everything after must run normally."""
    with trio.fail_after(10):
        registry = actorcore.Registry([Counter])
        async with trio.open_nursery() as nursery:
            server = await nursery.start(registry.serve, "127.0.0.1", 0)
            url = f"ws://127.0.0.1:{server.port}"
            with trio.CancelScope() as block:
                async with connect(url, "counter", "cancelled", **FAST) as actor:
                    assert await actor.call("increment") == 1
                    await registry.shutdown()
                    await wait_until(lambda: actor.statistics().attempts >= 2)
                    block.cancel()
                    await trio.sleep_forever()
            assert block.cancelled_caught
            assert actor.finished
        # trio's own structures are intact: nurseries and scopes still work.
        async with trio.open_nursery() as after:
            after.start_soon(trio.sleep, 0.01)
        with trio.move_on_after(0.01):
            await trio.sleep_forever()
