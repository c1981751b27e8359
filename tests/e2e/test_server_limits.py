"""The server front end's bounds (docs/security.md): connections per client address,
handshakes in progress, the accept loop's backoff, keepalive, fragments, origins and TLS."""

from __future__ import annotations

import contextlib
import errno
import gc
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
import trustme

import actorcore
from actorcore import ActorContext, ActorOptions, Conn
from actorcore.testing import serve_in_memory, serve_loopback
from actorcore.ws.origin import OriginPolicy
from actorcore.ws.server import ServerOptions, serve_listeners

from ..reliability._support import StreamListener, serve_streams
from ..reliability._wire import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, RawClient, encode_frame

EVENTS: list[str] = []


class Echo(actorcore.Actor):
    name = "echo"
    options = ActorOptions(max_message_size=1000, sleep_timeout=10_000.0)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, Any]:
        return {"seen": 0}

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        ctx.state["seen"] += 1
        await conn.send(message)

    async def on_ws_close(self, ctx: ActorContext, conn: Conn, code: int, reason: str) -> None:
        EVENTS.append(f"close:{code}")


@pytest.fixture(autouse=True)
def _clear() -> None:
    EVENTS.clear()


def upgrade(target: bytes, *, host: bytes, origin: bytes | None = None) -> bytes:
    head = (
        b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    if origin is not None:
        head += b"Origin: " + origin + b"\r\n"
    return head + b"\r\n"


@contextlib.asynccontextmanager
async def tcp_client(port: int, *, local: str = "127.0.0.1") -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
    async with RawClient(stream) as client:
        yield client


# ---------------------------------------------------------------- per client, handshakes


async def test_one_address_at_its_limit_is_refused_1013_and_others_are_still_served() -> None:
    registry = actorcore.Registry([Echo])
    with trio.fail_after(20):
        async with (
            serve_loopback(registry, max_connections_per_client=3) as server,
            contextlib.AsyncExitStack() as stack,
        ):
            held = [
                await stack.enter_async_context(tcp_client(server.port, local="127.0.0.2"))
                for _ in range(3)
            ]
            for client in held:
                assert await client.handshake(b"/actors/echo/k/ws") == 101
            async with tcp_client(server.port, local="127.0.0.2") as extra:
                assert await extra.handshake(b"/actors/echo/k/ws") == 101
                _, close = await extra.read_until_close()
                assert close == (1013, "actor.overloaded")
            # Another address is served while 127.0.0.2 holds its maximum.
            async with server.connect("/actors/echo/k/ws") as ws:
                await ws.send_message("hi")
                assert await ws.get_message() == "hi"
            assert server.server is not None
            assert server.server.statistics().refused_per_client == 1
            # The held connections still work.
            await held[0].send(encode_frame(OP_TEXT, b"still"))
            frame = await held[0].read_frame()
            assert frame is not None and frame.payload == b"still"


async def test_half_open_handshakes_are_bounded_apart_from_connections(
    autojump_clock: trio.abc.Clock,
) -> None:
    """At ``max_handshakes`` the server stops accepting until one ends (by its timeout);
    upgraded connections do not count."""
    registry = actorcore.Registry([Echo])
    async with serve_streams(registry, max_handshakes=2, handshake_timeout=5.0) as server:
        stats = server.server.statistics
        async with server.connect("/actors/echo/k/ws") as upgraded:
            async with server.raw() as stall1, server.raw() as stall2:
                await stall1.send(b"GET / HTTP/1.1\r\n")  # never finishes its head
                await stall2.send(b"GET")
                await trio.sleep(1)
                assert stats().handshakes == 2
                started = trio.current_time()
                async with server.raw() as late:
                    # Not accepted until a stalled handshake times out.
                    assert await late.handshake(b"/actors/echo/k/ws") == 101
                    assert trio.current_time() - started >= 3.9
                assert await stall1.read_response() == 0  # cut after handshake_timeout
                assert stats().handshake_timeouts == 2
            await upgraded.send_message("x")
            assert await upgraded.get_message() == "x"


class FailingListener(trio.abc.Listener[trio.abc.Stream]):
    """Fails ``failures`` accepts with EMFILE, then serves in-memory streams."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []
        self.inner = StreamListener(trio.testing.memory_stream_pair)

    async def accept(self) -> trio.abc.Stream:
        self.attempts.append(trio.current_time())
        if self.failures:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.inner.accept()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_accept_backs_off_on_emfile_without_spinning_or_logging_each_attempt(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    listener = FailingListener(failures=12)
    registry = actorcore.Registry([Echo])
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_listeners(registry, [listener], task_status=task_status)
        )
        stream = await listener.inner.connect()
        async with RawClient(stream) as client:
            assert await client.handshake(b"/actors/echo/k/ws") == 101
        assert server.statistics().accept_errors == 12
        gaps = [b - a for a, b in zip(listener.attempts, listener.attempts[1:], strict=False)]
        # Doubling from 10 ms, capped at 1 s: no busy loop.
        assert gaps[:3] == pytest.approx([0.01, 0.02, 0.04], abs=1e-6)
        assert max(gaps[:12]) == pytest.approx(1.0, abs=1e-6)
        registry.request_shutdown()
    errors = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert len(errors) == 1
    assert any("accepting again after 12" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- keepalive


async def test_a_silent_peer_is_dropped_within_interval_plus_timeout_and_hooks_run(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = actorcore.Registry([Echo])
    async with serve_streams(registry, ping_interval=5.0, ping_timeout=3.0) as server:
        async with server.raw() as client:
            assert await client.handshake(b"/actors/echo/k/ws") == 101
            await client.send(encode_frame(OP_TEXT, b"one"))
            assert (await client.read_frame()) is not None
            start = trio.current_time()
            ping = await client.read_frame()
            assert ping is not None and ping.opcode == OP_PING
            assert trio.current_time() - start == pytest.approx(5.0, abs=0.01)
            assert await client.read_frame() is None  # never answered: dropped
            assert trio.current_time() - start <= 5.0 + 3.0 + 0.01
        await trio.sleep(0.1)
        assert EVENTS == ["close:1006"]  # torn down as a lost peer, hooks ran
        assert server.server.statistics().peers_lost == 1
        # The actor lives on with its state (only the connection was lost).
        assert registry.statistics().actors_by_state == {"started": 1}


async def test_a_peer_that_answers_stays_for_hours_and_pings_keep_no_actor_awake(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = actorcore.Registry([Echo])
    async with serve_streams(registry, ping_interval=5.0, ping_timeout=3.0) as server:
        async with server.connect("/actors/echo/k/ws") as ws:  # answers pings itself
            await trio.sleep(3600)
            await ws.send_message("still")
            assert await ws.get_message() == "still"
        stats = server.server.statistics()
        assert stats.pings_sent >= 3600 / 5 - 1
        assert stats.peers_lost == 0


async def test_keepalive_off_sends_no_pings(autojump_clock: trio.abc.Clock) -> None:
    registry = actorcore.Registry([Echo])
    async with serve_streams(registry, ping_interval=0.0) as server:
        async with server.raw() as client:
            assert await client.handshake(b"/actors/echo/k/ws") == 101
            with trio.move_on_after(600):
                await client.read_frame()
                raise AssertionError("a ping arrived with ping_interval=0")
        assert server.server.statistics().pings_sent == 0


class Sleepy(actorcore.Actor):
    name = "sleepy"
    options = ActorOptions(sleep_timeout=10.0)


async def test_client_pings_keep_no_actor_awake(autojump_clock: trio.abc.Clock) -> None:
    registry = actorcore.Registry([Sleepy])
    async with serve_streams(registry, ping_interval=0.0) as server, server.raw() as client:
        assert await client.handshake(b"/actors/sleepy/k/connect") == 101
        init = await client.read_frame()
        assert init is not None
        for _ in range(30):
            await client.send(encode_frame(OP_PING, b"hb"))
            pong = await client.read_frame()
            assert pong is not None and pong.payload == b"hb"
            await trio.sleep(1)
        states = registry.statistics().actors_by_state
        assert states == {"asleep": 1}, states


# ---------------------------------------------------------------- fragments


async def test_fragments_count_against_max_message_size_as_they_arrive(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = actorcore.Registry([Echo])
    async with serve_streams(registry) as server, server.raw() as client:
        assert await client.handshake(b"/actors/echo/k/ws") == 101
        await client.send(encode_frame(OP_TEXT, b"a" * 400, fin=False))
        await client.send(encode_frame(OP_CONT, b"b" * 400, fin=False))
        await client.send(encode_frame(OP_CONT, b"c" * 400, fin=False))  # 1200 > 1000
        frames, close = await client.read_until_close()
    assert close == (1009, "message.too_large")
    assert frames == []


async def test_a_fragment_that_never_finishes_is_closed_after_fragment_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = actorcore.Registry([Echo])
    async with (
        serve_streams(registry, fragment_timeout=7.0, ping_interval=0.0) as server,
        server.raw() as client,
    ):
        assert await client.handshake(b"/actors/echo/k/ws") == 101
        await client.send(encode_frame(OP_TEXT, b"start", fin=False))
        started = trio.current_time()
        frames, close = await client.read_until_close()
        assert close == (1008, "message.incomplete")
        assert trio.current_time() - started == pytest.approx(7.0, abs=0.01)
        assert frames == []


class Big(actorcore.Actor):
    name = "big"
    options = ActorOptions(max_message_size=64 << 20)


async def test_a_closed_connection_drops_its_fragment_buffers_without_a_gc() -> None:
    registry = actorcore.Registry([Big])
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        async with serve_streams(registry) as server:
            async with server.raw() as client:
                assert await client.handshake(b"/actors/big/k/ws") == 101
                chunk = b"x" * (1 << 20)
                opcode = OP_BINARY
                for _ in range(8):
                    await client.send(encode_frame(opcode, chunk, fin=False))
                    opcode = OP_CONT
                with trio.fail_after(10):
                    while server.server.statistics().connections != 1:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                await trio.sleep(0.2)
                held, _ = tracemalloc.get_traced_memory()
            with trio.fail_after(10):
                while server.server.statistics().connections:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            await trio.sleep(0.1)
            after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held - after > 6 << 20, (held, after)


# ---------------------------------------------------------------- origins


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, None, True),
        ("http://127.0.0.1:{port}", "127.0.0.1:{port}", True),
        ("http://localhost:{port}", "localhost:{port}", True),
        ("https://evil.example", "127.0.0.1:{port}", False),
        ("http://127.0.0.1:1", "127.0.0.1:{port}", False),
        # DNS rebinding: the page's own host, resolved to loopback.
        ("http://evil.example:{port}", "evil.example:{port}", False),
        ("null", "127.0.0.1:{port}", False),
    ],
)
async def test_default_origin_policy_on_loopback(
    origin: str | None, host: str | None, allowed: bool
) -> None:
    registry = actorcore.Registry([Echo])
    with trio.fail_after(20):
        async with serve_loopback(registry) as server, tcp_client(server.port) as client:
            port = str(server.port)
            await client.send(
                upgrade(
                    b"/actors/echo/k/ws",
                    host=(host or "127.0.0.1").replace("{port}", port).encode(),
                    origin=None if origin is None else origin.replace("{port}", port).encode(),
                )
            )
            assert await client.read_response() == 101
            if allowed:
                await client.send(encode_frame(OP_TEXT, b"hi"))
                frame = await client.read_frame()
                assert frame is not None and frame.payload == b"hi"
            else:
                frames, close = await client.read_until_close()
                assert close == (1008, "auth.forbidden")
                assert frames == []
                assert server.server is not None
                assert server.server.statistics().refused_origin == 1


async def test_allowed_origins_lists_exactly_who_may_connect() -> None:
    registry = actorcore.Registry([Echo])
    with trio.fail_after(20):
        async with serve_loopback(
            registry, allowed_origins=["https://app.example", "http://localhost:3000"]
        ) as server:
            for origin, ok in [
                (b"https://app.example", True),
                (b"https://APP.example:443/", True),
                (b"http://localhost:3000", True),
                (b"https://other.example", False),
                (b"http://app.example", False),
            ]:
                async with tcp_client(server.port) as client:
                    await client.send(upgrade(b"/actors/echo/k/ws", host=b"x", origin=origin))
                    assert await client.read_response() == 101
                    if ok:
                        await client.send(encode_frame(OP_TEXT, b"hi"))
                        frame = await client.read_frame()
                        assert frame is not None and frame.opcode == OP_TEXT, origin
                    else:
                        _, close = await client.read_until_close()
                        assert close == (1008, "auth.forbidden"), origin


def test_origin_policy_star_allows_any_and_non_browsers_always_pass() -> None:
    star = OriginPolicy.make(["*"], loopback=True)
    assert star.allows("https://anything.example", "127.0.0.1:1")
    same_only = OriginPolicy.make(None, loopback=False)
    assert same_only.allows(None, None)
    assert same_only.allows("https://actors.example.com", "actors.example.com")
    assert same_only.allows("https://actors.example.com", "actors.example.com:443")
    assert not same_only.allows("https://actors.example.com", "actors.example.com:8443")
    assert not same_only.allows("not a url", "actors.example.com")


def test_server_options_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_connections_per_client"):
        ServerOptions(max_connections_per_client=0)
    with pytest.raises(ValueError, match="ping_interval"):
        ServerOptions(ping_interval=-1)


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /actors/echo/k/ws HTTP/1.1\r\nHost: x\r\n\r\n", 426),
        (b"POST /actors/echo/k/ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"not http at all\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            426,
        ),
    ],
)
async def test_requests_that_are_not_upgrades_get_an_http_error(
    autojump_clock: trio.abc.Clock, request_bytes: bytes, status: int
) -> None:
    registry = actorcore.Registry([Echo])
    async with serve_streams(registry) as server, server.raw() as client:
        await client.send(request_bytes)
        assert await client.read_response() == status
        assert b"connection: close" in client.response_head.lower()


# ---------------------------------------------------------------- TLS


class Counter(actorcore.Actor):
    name = "counter"

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"count": 0}

    @actorcore.action
    async def increment(self, ctx: ActorContext) -> int:
        ctx.state["count"] += 1
        return int(ctx.state["count"])


async def test_wss_served_directly_with_a_certificate_the_client_trusts() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    registry = actorcore.Registry([Counter])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: registry.serve(
                    "127.0.0.1", 0, ssl_context=server_context, task_status=task_status
                )
            )
            url = f"wss://127.0.0.1:{server.port}"
            async with actorcore.connect(url, "counter", "k", ssl_context=client_context) as actor:
                assert await actor.call("increment") == 1
                assert await actor.call("increment") == 2
            # A plain-text client gets no WebSocket from a TLS port.
            async with tcp_client(server.port) as plain:
                await plain.send(upgrade(b"/actors/counter/k/connect", host=b"x"))
                assert await plain.read_response() in (0, 400)
            registry.request_shutdown()


async def test_only_silent_peers_are_pinged_and_each_is_judged_from_its_last_byte(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A peer that keeps sending is alive and gets no ping (a ping crossing a client's own
    close frame is what trio-websocket's client cannot take, python-trio/trio-websocket#184);
    a silent one gets its ping ``ping_interval`` after its last byte."""
    registry = actorcore.Registry([Echo])
    async with (
        serve_streams(registry, ping_interval=5.0, ping_timeout=3.0) as server,
        server.raw() as busy,
        server.raw() as quiet,
    ):
        assert await busy.handshake(b"/actors/echo/k/ws") == 101
        assert await quiet.handshake(b"/actors/echo/k/ws") == 101
        await trio.sleep(2)
        await quiet.send(encode_frame(OP_TEXT, b"last"))
        last = trio.current_time()

        async def traffic() -> None:
            for _ in range(40):  # 20 s of traffic on the busy one
                await busy.send(encode_frame(OP_TEXT, b"x"))
                frame = await busy.read_frame()
                assert frame is not None and frame.opcode == OP_TEXT  # never a ping
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic)
            echo = await quiet.read_frame()
            assert echo is not None and echo.payload == b"last"
            ping = await quiet.read_frame()
            assert ping is not None and ping.opcode == OP_PING
            assert trio.current_time() - last == pytest.approx(5.0, abs=0.01)
            assert await quiet.read_frame() is None  # never answered: dropped
            assert trio.current_time() - last == pytest.approx(5.0 + 3.0, abs=0.01)
        assert server.server.statistics().pings_sent == 1


async def test_the_in_memory_test_server_keeps_the_keepalive_defaults(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``serve_in_memory`` with no options: a peer silent for 20 s is pinged, and dropped 20 s
    after that if it never answers."""
    registry = actorcore.Registry([Echo])
    async with serve_in_memory(registry) as server:
        stream = await server.listener.connect()
        async with RawClient(stream) as client:
            assert await client.handshake(b"/actors/echo/k/ws") == 101
            start = trio.current_time()
            ping = await client.read_frame()
            assert ping is not None and ping.opcode == OP_PING
            assert await client.read_frame() is None
            assert trio.current_time() - start == pytest.approx(40.0, abs=0.01)
