"""Peers that misbehave: clients that never read, that drop mid-handshake, during an action or
during the close handshake, that trickle their handshake, and floods beyond the connection
limit.

Most tests run on the virtual clock over in-memory streams. A client that never reads needs
backpressure, so those use bounded in-memory streams (a 64 KiB window: the server's writes
block once it is full, as with TCP). One test repeats the essentials over real loopback
sockets on the real clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

import actorcore
from actorcore import ActorContext, ActorOptions, Conn, ConnKind, LifecycleState
from actorcore.conn import OUTBOX_SIZE
from actorcore.testing import serve_loopback

from ._support import (
    StreamServer,
    call,
    close_code,
    receive_frame,
    send_json,
    serve_streams,
    tally,
    wait_until,
)
from ._wire import OP_CLOSE, OP_TEXT, RawClient, encode_frame, upgrade_request

S = LifecycleState

CLOSE_TIMEOUT = 0.5
#: trio-websocket's handshake timeout, as actorcore.ws.server configures it.
CONNECT_TIMEOUT = 10.0

HOOKS: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    HOOKS.clear()
    yield


class Talker(actorcore.Actor):
    name = "talker"
    options = ActorOptions(
        close_timeout=CLOSE_TIMEOUT,
        sleep_grace_period=1.0,
        hook_timeout=1.0,
        action_timeout=30.0,
        sleep_timeout=1000.0,
        state_save_interval=0.5,
    )

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"n": 0}

    async def on_connect(self, ctx: ActorContext, conn: Conn) -> None:
        HOOKS.append(f"connect:{ctx.generation}")

    async def on_ws_open(self, ctx: ActorContext, conn: Conn) -> None:
        HOOKS.append(f"ws_open:{ctx.generation}")

    async def on_disconnect(self, ctx: ActorContext, conn: Conn) -> None:
        HOOKS.append(f"disconnect:{ctx.generation}")

    async def on_ws_close(self, ctx: ActorContext, conn: Conn, code: int, reason: str) -> None:
        HOOKS.append(f"ws_close:{code}:{ctx.generation}")

    async def on_wake(self, ctx: ActorContext) -> None:
        HOOKS.append(f"wake:{ctx.generation}")

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        await conn.send(message)

    @actorcore.action
    async def blast(self, ctx: ActorContext, frames: int, size: int) -> int:
        """Queue ``frames`` messages to every raw connection without waiting."""
        payload = "x" * size
        raw = [c for c in ctx.conns if c.kind is ConnKind.RAW]
        for conn in raw:
            for _ in range(frames):
                conn.send_nowait(payload)
        return len(raw)

    @actorcore.action
    async def fill_then_send(self, ctx: ActorContext, size: int, extra: int) -> str:
        """Fill every raw connection's outbox, then ``await conn.send`` ``extra`` more."""
        payload = "x" * size
        for conn in [c for c in ctx.conns if c.kind is ConnKind.RAW]:
            for _ in range(OUTBOX_SIZE):
                conn.send_nowait(payload)
            for _ in range(extra):
                await conn.send(payload)
        return "sent"

    @actorcore.action
    async def slow_inc(self, ctx: ActorContext, seconds: float) -> int:
        await trio.sleep(seconds)
        ctx.state["n"] += 1
        return int(ctx.state["n"])

    @actorcore.action
    async def get(self, ctx: ActorContext) -> int:
        return int(ctx.state["n"])


def registry() -> actorcore.Registry:
    return actorcore.Registry([Talker])


async def deaf_client(server: StreamServer, path: bytes = b"/actors/talker/k/ws") -> RawClient:
    """A client that completes the upgrade and then never reads again."""
    client = RawClient(await server.listener.connect())
    with trio.fail_after(5):
        assert await client.handshake(path) == 101
    return client


# --------------------------------------------------------------------------- never reads


@pytest.mark.parametrize("stop", ["sleep", "destroy"])
async def test_clients_that_never_read_bound_finalize_and_slow_no_one(
    autojump_clock: trio.abc.Clock, stop: str
) -> None:
    deaf: list[RawClient] = []
    async with serve_streams(registry(), bounded=True) as server:
        try:
            deaf.extend([await deaf_client(server) for _ in range(20)])
            async with server.connect("/actors/talker/k/connect") as ws:
                init = await receive_frame(ws)
                actor_id = init["actor_id"]
                # 100 frames of 16 KiB for each deaf client: their writers block at once.
                assert (await call(ws, 1, "blast", 100, 16384))["output"] == 20
                tally("input: client that never reads", 20)
                before = trio.current_time()
                for i in range(2, 12):
                    assert (await call(ws, i, "get"))["output"] == 0
                assert trio.current_time() - before < 0.01, "the others are not slowed"

                before = trio.current_time()
                if stop == "sleep":
                    await server.registry.sleep(actor_id)
                else:
                    await server.registry.destroy(actor_id)
                elapsed = trio.current_time() - before
                assert elapsed <= 2 * CLOSE_TIMEOUT + 0.1, elapsed
                expected = 1001 if stop == "sleep" else 1000
                assert server.registry.statistics().closes_by_code.get(expected, 0) >= 20
                # Each deaf connection's disconnect hooks ran once, in the finalizing generation.
                assert HOOKS.count(f"ws_close:{expected}:1") == 20
                # (a destroy closes the hibernatable protocol connection too)
                assert HOOKS.count("disconnect:1") == (20 if stop == "sleep" else 21)
                if stop == "sleep":
                    # The hibernatable protocol connection survived and wakes the actor.
                    assert (await call(ws, 20, "get"))["output"] == 0
                    assert server.registry.statistics().connections == 1
                else:
                    assert await close_code(ws) == (1000, "actor.destroyed")
        finally:
            for client in deaf:
                await client.aclose()


async def test_drain_with_clients_that_never_read_is_bounded(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = actorcore.MemoryStore()
    deaf: list[RawClient] = []
    async with serve_streams(actorcore.Registry([Talker], store), bounded=True) as server:
        try:
            deaf.extend([await deaf_client(server) for _ in range(10)])
            async with server.connect("/actors/talker/k/connect") as ws:
                assert (await call(ws, 1, "blast", 100, 16384))["output"] == 10
                assert (await call(ws, 2, "slow_inc", 0.0))["output"] == 1
                tally("input: client that never reads", 10)
                before = trio.current_time()
                await server.registry.shutdown()
                # Dispatcher.close_all: close_timeout (2 s, the server-wide bound) + 1, then
                # the actor's sleep (its own close bounds); nothing waits on the deaf peers.
                assert trio.current_time() - before <= 2.0 + 1 + 2 * CLOSE_TIMEOUT + 0.1
                assert await close_code(ws) == (1012, "runtime.shutdown")
                assert server.registry.statistics().closes_by_code == {1012: 11}
        finally:
            for client in deaf:
                await client.aclose()
    async with actorcore.store.open_store(store):
        record = await store.get_by_key("talker", "k")
    assert record is not None and json.loads(record.state or b"") == {"n": 1}


async def test_full_outbox_of_a_client_that_never_reads_closes_it_1013(
    autojump_clock: trio.abc.Clock,
) -> None:
    deaf: list[RawClient] = []
    async with serve_streams(registry(), bounded=True) as server:
        try:
            deaf.extend([await deaf_client(server) for _ in range(5)])
            async with server.connect("/actors/talker/k/connect") as ws:
                await receive_frame(ws)
                before = trio.current_time()
                assert (await call(ws, 1, "blast", OUTBOX_SIZE + 10, 100))["output"] == 5
                await wait_until(lambda: server.registry.statistics().connections == 1)
                assert trio.current_time() - before <= 2 * CLOSE_TIMEOUT + 0.1
                tally("input: client that never reads", 5)
                assert server.registry.statistics().closes_by_code == {1013: 5}
                assert (await call(ws, 2, "get"))["output"] == 0
        finally:
            for client in deaf:
                await client.aclose()


async def test_send_waiting_on_a_full_outbox_ends_quietly_when_the_client_leaves(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Regression: ``await conn.send()`` waiting for room in a full outbox raised
    ``trio.ClosedResourceError`` into the action when the connection ended."""
    async with serve_streams(registry(), bounded=True) as server:
        client = await deaf_client(server)
        try:
            async with server.connect("/actors/talker/k/connect") as ws:
                await receive_frame(ws)
                await send_json(
                    ws, {"type": "action", "id": 1, "name": "fill_then_send", "args": [1024, 200]}
                )
                await trio.sleep(1)  # the action now waits for room
                await client.aclose()  # the client leaves: the connection ends
                tally("input: client that never reads")
                reply = await receive_frame(ws)
                assert reply == {"type": "action_result", "id": 1, "output": "sent"}
        finally:
            await client.aclose()


# --------------------------------------------------------------------------- handshakes


async def test_clients_dropping_mid_handshake_leave_the_server_unaffected(
    autojump_clock: trio.abc.Clock,
) -> None:
    request = upgrade_request(b"/actors/talker/k/connect")
    async with (
        serve_streams(registry()) as server,
        server.connect("/actors/talker/k/connect") as bystander,
    ):
        await receive_frame(bystander)
        for cut in range(len(request)):
            async with server.raw() as client:
                await client.send(request[:cut])
        tally("input: partial upgrade then disconnect", len(request))
        assert (await call(bystander, 1, "get"))["output"] == 0
        async with server.connect("/actors/talker/k/connect") as ws:
            assert (await receive_frame(ws))["type"] == "init"
        assert server.registry.statistics().connections == 1


async def test_client_leaving_right_after_its_upgrade_request_leaves_the_server_unaffected(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Found by the soak: the upgrade request arrived whole, the client hung up before the
    server answered it, and the ConnectionClosed raised by trio-websocket's accept() escaped
    the handler and ended the whole server."""
    request = upgrade_request(b"/actors/talker/k/connect")
    async with (
        serve_streams(registry()) as server,
        server.connect("/actors/talker/k/connect") as bystander,
    ):
        await receive_frame(bystander)
        for _ in range(20):
            async with server.raw() as client:
                await client.send(request)
        tally("input: whole upgrade request then disconnect", 20)
        await trio.testing.wait_all_tasks_blocked()
        assert (await call(bystander, 1, "get"))["output"] == 0
        async with server.connect("/actors/talker/k/connect") as ws:
            assert (await receive_frame(ws))["type"] == "init"
        assert server.registry.statistics().connections == 1


async def test_stalled_and_trickled_handshakes_are_dropped_after_connect_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    request = upgrade_request(b"/actors/talker/k/connect")
    async with (
        serve_streams(registry()) as server,
        server.raw() as stalled,
        server.raw() as trickle,
    ):
        await stalled.send(request[: len(request) // 2])
        start = trio.current_time()

        async def drip() -> None:
            for byte in request:
                await trickle.send(bytes([byte]))
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            # Meanwhile everyone else is served.
            async with server.connect("/actors/talker/k/connect") as ws:
                assert (await receive_frame(ws))["type"] == "init"
                assert (await call(ws, 1, "get"))["output"] == 0
            with trio.fail_after(CONNECT_TIMEOUT + 1):
                assert await stalled.read_response() == 0, "closed without an answer"
                assert await trickle.read_response() == 0
            assert trio.current_time() - start <= CONNECT_TIMEOUT + 0.1
            nursery.cancel_scope.cancel()
        tally("input: stalled or trickled upgrade", 2)


# --------------------------------------------------------------------------- abrupt disconnects


async def test_client_vanishing_during_an_action(autojump_clock: trio.abc.Clock) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            assert await client.handshake(b"/actors/talker/k/connect") == 101
            init = await client.read_frame()
            assert init is not None and json.loads(init.payload)["type"] == "init"
            frame = {"type": "action", "id": 1, "name": "slow_inc", "args": [2.0]}
            await client.send_text(json.dumps(frame))
            await trio.sleep(0.5)
        # No close frame: the TCP connection just went away mid-action.
        tally("input: disconnect during an action")
        handle = await server.registry.get("talker", "k")
        await trio.sleep(2)
        assert await handle.call("get") == 1, "the action ran to the end; only its reply is lost"
        # Without a close the connection is detached, resumable for resume_timeout; then it
        # ends and its disconnect hook runs (docs/zero-loss.md).
        await trio.sleep(ActorOptions().resume_timeout - 10)
        assert "disconnect:1" not in HOOKS
        await trio.sleep(20)
        await wait_until(lambda: "disconnect:1" in HOOKS)
        assert HOOKS.count("disconnect:1") == 1
        assert server.registry.statistics().connections == 0


@pytest.mark.parametrize("peer", ["replies", "drops", "ignores"])
async def test_close_handshake_with_any_peer_is_bounded_and_runs_hooks_once(
    autojump_clock: trio.abc.Clock, peer: str
) -> None:
    """The finalize of a sleep closes a non-hibernatable socket with 1001. Whether the client
    answers the close, drops the connection on receiving it, or ignores it, the sleep ends
    within the close bounds, the disconnect hooks run once, and the actor stays asleep.

    Regression: the connection's handler also ran the disconnect hooks, which woke the actor
    into a new generation right after its sleep (and ran ``on_ws_close`` twice)."""
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            assert await client.handshake(b"/actors/talker/k/ws") == 101
            await client.send(encode_frame(OP_TEXT, b"hi"))
            echo = await client.read_frame()
            assert echo is not None and echo.payload == b"hi"
            handle = await server.registry.get("talker", "k")
            async with trio.open_nursery() as nursery:
                start = trio.current_time()
                nursery.start_soon(server.registry.sleep, handle.actor_id)
                frame = await client.read_frame()
                assert frame is not None and frame.opcode == OP_CLOSE
                assert frame.close_code() == (1001, "actor.sleeping")
                if peer == "replies":
                    await client.send(encode_frame(OP_CLOSE, frame.payload[:2]))
                elif peer == "drops":
                    await client.aclose()
                # "ignores": neither answers nor closes.
            elapsed = trio.current_time() - start
            assert elapsed <= CLOSE_TIMEOUT + 0.5 + 0.1, elapsed
        tally(f"input: peer that {peer} the close frame")
        await trio.sleep(5)
        assert server.registry.lifecycle(handle.actor_id) is S.ASLEEP, "not woken again"
        assert HOOKS.count("ws_close:1001:1") == 1
        assert HOOKS.count("disconnect:1") == 1
        assert not any(
            h.startswith(("ws_close:", "disconnect:")) and h.endswith(":2") for h in HOOKS
        )
        assert "wake:2" not in HOOKS


# --------------------------------------------------------------------------- floods


async def test_connection_flood_beyond_the_limit_is_refused_1013(
    autojump_clock: trio.abc.Clock,
) -> None:
    limit, flood = 8, 40
    async with serve_streams(registry(), max_connections=limit) as server:
        async with trio.open_nursery() as keep:
            holders: list[Any] = []
            ready = trio.Event()
            release = trio.Event()

            async def hold(i: int) -> None:
                async with server.connect(f"/actors/talker/k{i}/ws") as ws:
                    holders.append(ws)
                    await ws.send_message(f"m{i}")
                    assert await ws.get_message() == f"m{i}"
                    if len(holders) == limit:
                        ready.set()
                    await release.wait()

            for i in range(limit):
                keep.start_soon(hold, i)
            with trio.fail_after(10):
                await ready.wait()

            refused: list[tuple[int, str]] = []

            async def intruder(i: int) -> None:
                async with server.connect(f"/actors/talker/x{i}/ws") as ws:
                    refused.append(await close_code(ws))

            async with trio.open_nursery() as nursery:
                for i in range(flood):
                    nursery.start_soon(intruder, i)
            tally("input: connection beyond the limit", flood)
            assert refused == [(1013, "actor.overloaded")] * flood
            for i, ws in enumerate(holders):
                await ws.send_message(f"again{i}")
                assert await ws.get_message() == f"again{i}"
            release.set()
        await wait_until(lambda: server.registry.statistics().connections == 0)
        async with server.connect("/actors/talker/k0/ws") as ws:
            await ws.send_message("back")
            assert await ws.get_message() == "back"
        assert server.registry.statistics().closes_by_code == {1013: flood}


async def test_action_frame_flood_is_refused_before_it_piles_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A client that sends thousands of slow calls in one burst without reading should be
    refused (1013 ``actor.overloaded``) once a bounded number is in flight, not hold one task
    per frame until ``action_timeout``."""
    burst = 3000
    async with serve_streams(registry()) as server, server.raw() as client:
        assert await client.handshake(b"/actors/talker/k/connect") == 101
        assert await client.read_frame() is not None  # init
        frame = {"type": "action", "id": 1, "name": "slow_inc", "args": [20.0]}
        await client.send(encode_frame(OP_TEXT, json.dumps(frame).encode()) * burst)
        tally("input: burst of action frames", burst)
        with trio.move_on_after(1):
            _, close = await client.read_until_close()
            assert close == (1013, "actor.overloaded")
            return
        pytest.fail(f"{burst} calls from one connection are all in flight")


# --------------------------------------------------------------------------- real sockets


async def test_misbehaving_peers_over_real_sockets() -> None:
    """The essentials on 127.0.0.1 with the real clock: clients that never read, dropped and
    stalled handshakes, and a flood, while a well-behaved client is served."""
    reg = registry()
    with trio.fail_after(20):
        async with serve_loopback(reg, max_connections=30) as server:
            port = server.port

            async def raw() -> RawClient:
                return RawClient(await trio.open_tcp_stream("127.0.0.1", port))

            clients: list[RawClient] = []
            try:
                for _ in range(10):
                    client = await raw()
                    clients.append(client)
                    assert await client.handshake(b"/actors/talker/k/ws") == 101
                request = upgrade_request(b"/actors/talker/k/connect")
                for cut in (0, 1, 20, len(request) - 1):
                    client = await raw()
                    await client.send(request[:cut])
                    await client.aclose()
                stalled = await raw()
                clients.append(stalled)
                await stalled.send(request[:30])
                async with server.connect("/actors/talker/k/connect") as ws:
                    init = await receive_frame(ws)
                    # 4 MiB for each deaf client: more than the socket buffers take.
                    assert (await call(ws, 1, "blast", 64, 65536))["output"] == 10
                    for i in range(2, 7):
                        assert (await call(ws, i, "get", within=2))["output"] == 0
                    start = trio.current_time()
                    await reg.sleep(init["actor_id"])
                    # close bounds (2 x close_timeout), plus slack for a loaded machine
                    assert trio.current_time() - start <= 2 * CLOSE_TIMEOUT + 1.5
                    assert reg.statistics().closes_by_code.get(1001) == 10
                    # A flood beyond the limit (30, one protocol connection is live).
                    flood = [await raw() for _ in range(40)]
                    clients.extend(flood)
                    statuses = [await c.handshake(b"/actors/talker/f/ws") for c in flood]
                    assert statuses == [101] * 40
                    codes: list[tuple[int, str]] = []

                    async def closed(client: RawClient) -> None:
                        codes.append((await client.read_until_close())[1])

                    async with trio.open_nursery() as nursery:
                        for client in flood:
                            nursery.start_soon(closed, client)
                        await trio.sleep(1)  # refusals come at once; the accepted stay open
                        nursery.cancel_scope.cancel()
                    assert codes == [(1013, "actor.overloaded")] * (40 - 29)
                    assert (await call(ws, 10, "get", within=2))["output"] == 0
                tally("input: misbehaving peer over TCP", 10 + 4 + 1 + 40)
            finally:
                for client in clients:
                    await client.aclose()
