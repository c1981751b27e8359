"""Hardening items 1 and 6: the registry's ``authorize`` gate refuses before any actor
exists, a creation budget per client address, and refusals logged without a flood."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

import actorcore
from actorcore import ActorContext, ConnectRequest, CreateRate, Forbidden, MemoryStore, SQLiteStore
from actorcore.logfmt import RefusalLog, quoted
from actorcore.testing import expect_close, receive_json, serve_in_memory, serve_loopback

from ..reliability._wire import RawClient

SEEN: list[ConnectRequest] = []


class Room(actorcore.Actor):
    name = "room"

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"joins": 0}

    async def on_before_connect(self, ctx: ActorContext, params: Any, request: Any) -> None:
        raise AssertionError("authorize refuses first")  # only reached if authorize passed

    @actorcore.action
    async def ping(self, ctx: ActorContext) -> str:
        return "pong"


class OpenRoom(Room):
    name = "open"

    async def on_before_connect(self, ctx: ActorContext, params: Any, request: Any) -> None:
        return None


async def only_members(request: ConnectRequest) -> None:
    SEEN.append(request)
    if not isinstance(request.params, dict) or request.params.get("token") != "member":
        raise Forbidden("auth.forbidden")


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_a_refused_connection_leaves_no_actor_in_memory_or_in_the_store(
    tmp_path: Path, store_kind: str
) -> None:
    store = MemoryStore() if store_kind == "memory" else SQLiteStore(tmp_path / "a.db")
    registry = actorcore.Registry([Room, OpenRoom], store=store, authorize=only_members)
    with trio.fail_after(20):
        async with serve_loopback(registry) as server:
            for i in range(20):
                async with server.connect(f"/actors/room/k{i}/connect") as ws:
                    assert await expect_close(ws) == (1008, "auth.forbidden")
            assert registry.statistics().actors_by_state == {}
            assert store.statistics().actors == 0
            # The request the gate saw: routed, with the client's address.
            request = SEEN[0]
            assert (request.name, request.key, request.actor_id) == ("room", "k0", None)
            assert request.client is not None and request.client.host == "127.0.0.1"
            assert request.path == "/actors/room/k0/connect"
            # A member gets through (to the actor's own hooks).
            async with server.connect('/actors/open/k/connect?params={"token":"member"}') as ws:
                assert (await receive_json(ws))["type"] == "init"
            assert SEEN[-1].params == {"token": "member"}
            assert store.statistics().actors == 1


async def test_by_id_routes_pass_the_gate_with_their_id(autojump_clock: trio.abc.Clock) -> None:
    registry = actorcore.Registry([OpenRoom], authorize=only_members)
    async with (
        serve_in_memory(registry) as server,
        server.connect("/actors/by-id/abc123/connect") as ws,
    ):
        assert await expect_close(ws) == (1008, "auth.forbidden")
    assert (SEEN[0].name, SEEN[0].key, SEEN[0].actor_id) == (None, None, "abc123")


async def test_forbidden_with_a_message_keeps_it_as_the_reason(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def gate(request: ConnectRequest) -> None:
        raise Forbidden("token expired")

    registry = actorcore.Registry([OpenRoom], authorize=gate)
    async with serve_in_memory(registry) as server, server.connect("/actors/open/k/ws") as ws:
        assert await expect_close(ws) == (1008, "token expired")


async def test_a_broken_or_hung_gate_is_1011_and_the_server_lives_on(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async def gate(request: ConnectRequest) -> None:
        if request.key == "crash":
            raise KeyError("bug")
        if request.key == "hang":
            await trio.sleep_forever()

    registry = actorcore.Registry([OpenRoom], authorize=gate)
    async with serve_in_memory(registry) as server:
        for key in ("crash", "hang"):
            async with server.connect(f"/actors/open/{key}/connect") as ws:
                assert await expect_close(ws) == (1011, "actor.internal_error")
        async with server.connect("/actors/open/fine/connect") as ws:
            assert (await receive_json(ws))["type"] == "init"
        assert registry.statistics().actors_by_state == {"started": 1}
    messages = [r.getMessage() for r in caplog.records]
    assert "authorize raised" in messages
    assert any("authorize did not answer" in m for m in messages)


async def test_creation_budget_per_client_address(tmp_path: Path) -> None:
    registry = actorcore.Registry(
        [OpenRoom], store=SQLiteStore(tmp_path / "b.db"), create_rate=CreateRate(1.0, burst=3)
    )
    with trio.fail_after(20):
        async with serve_loopback(registry) as server:
            for i in range(3):
                async with server.connect(f"/actors/open/new{i}/connect") as ws:
                    assert (await receive_json(ws))["type"] == "init"
            async with server.connect("/actors/open/new3/connect") as ws:
                assert await expect_close(ws) == (1013, "actor.overloaded")
            # Reaching an existing actor costs nothing.
            for _ in range(5):
                async with server.connect("/actors/open/new0/connect") as ws:
                    assert (await receive_json(ws))["type"] == "init"
            # Another address has a budget of its own.
            stream = await trio.open_tcp_stream("127.0.0.1", server.port, local_address="127.0.0.9")
            async with RawClient(stream) as other:
                assert await other.handshake(b"/actors/open/other/connect") == 101
                init = await other.read_frame()
                assert init is not None and b'"init"' in init.payload
            assert registry.statistics().actors_by_state == {"started": 4}


def test_token_buckets_refill_and_stay_bounded() -> None:
    from actorcore.ratelimit import TokenBuckets

    buckets = TokenBuckets(CreateRate(per_second=2.0, burst=2, max_clients=3))
    assert [buckets.take("a", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.take("a", 0.5)  # one token back after 0.5 s
    assert not buckets.take("a", 0.5)
    for i in range(10):
        buckets.take(f"c{i}", 1.0)
    assert len(buckets) == 3
    with pytest.raises(ValueError):
        CreateRate(per_second=0)


def test_keys_are_quoted_and_truncated_in_logs() -> None:
    assert quoted("room-1") == "room-1"
    assert quoted("a/b") == "'a/b'"
    assert quoted("x\n") == "'x\\n'"
    long = quoted("k" * 1000)
    assert len(long) < 100 and "(1000 chars)" in long


async def test_refusals_are_rate_limited_with_a_count(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actorcore")
    registry = actorcore.Registry([Room], authorize=only_members)
    async with serve_in_memory(registry) as server:
        for i in range(50):
            async with server.connect(f"/actors/room/{'k' * 500}{i}/connect") as ws:
                assert await expect_close(ws) == (1008, "auth.forbidden")
        await trio.sleep(1.5)
        async with server.connect("/actors/room/last/connect") as ws:
            assert await expect_close(ws) == (1008, "auth.forbidden")
    lines = [r.getMessage() for r in caplog.records if r.name == "actorcore.ws"]
    refused = [m for m in lines if m.startswith("refused")]
    assert len(refused) == 2, refused
    assert "more like it not logged" in refused[1]
    assert all(len(m) < 300 for m in lines), max(lines, key=len)
    assert not any(m.startswith("closing connection: 1008") for m in lines)


def test_refusal_log_outside_trio_uses_the_monotonic_clock() -> None:
    seen: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("actorcore.test.refusals")
    logger.addHandler(Handler())
    logger.setLevel(logging.INFO)
    refusal_log = RefusalLog(logger, interval=3600)
    for _ in range(5):
        refusal_log.note("auth.forbidden", "10.0.0.1", "/actors/x/y/connect")
    assert len(seen) == 1 and refusal_log.suppressed == 4


async def test_create_rate_as_a_number_is_per_second_and_burst(tmp_path: Path) -> None:
    registry = actorcore.Registry([OpenRoom], store=SQLiteStore(tmp_path / "n.db"), create_rate=2)
    with trio.fail_after(20):
        async with serve_loopback(registry) as server:
            for i in range(2):
                async with server.connect(f"/actors/open/n{i}/connect") as ws:
                    assert (await receive_json(ws))["type"] == "init"
            async with server.connect("/actors/open/n2/connect") as ws:
                assert await expect_close(ws) == (1013, "actor.overloaded")
