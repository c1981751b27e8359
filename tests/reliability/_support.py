"""Shared helpers of the reliability tests: servers on in-memory streams (unbounded or
bounded), protocol helpers, hypothesis profiles, and the tally of what was injected.

Hypothesis profiles: ``actorcore-reliability-default`` (the CI run) and
``actorcore-reliability-long``, picked with ``ACTORCORE_HYPOTHESIS_PROFILE=long`` (the same
variable the registry's stateful test reads); an unknown name falls back to the default.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, Phase, settings
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

import actorcore
from actorcore.testing import client_nursery
from actorcore.ws.server import WebSocketServer, serve_listeners

from ._wire import RawClient

# ---------------------------------------------------------------- hypothesis profiles

settings.register_profile(
    "actorcore-reliability-default",
    max_examples=60,
    deadline=None,  # wall time varies on shared CI machines; the virtual clock does not
    database=None,  # do not write .hypothesis/ into the checkout
    print_blob=True,
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "actorcore-reliability-long",
    parent=settings.get_profile("actorcore-reliability-default"),
    max_examples=1500,
)


def fuzz_settings(scale: float = 1.0) -> settings:
    """The profile named by ``ACTORCORE_HYPOTHESIS_PROFILE`` (default: the CI one), with its
    ``max_examples`` scaled for tests whose examples cost more."""
    name = os.environ.get("ACTORCORE_HYPOTHESIS_PROFILE", "default")
    try:
        profile = settings.get_profile(f"actorcore-reliability-{name}")
    except Exception:  # hypothesis raises InvalidArgument for an unknown profile
        profile = settings.get_profile("actorcore-reliability-default")
    return settings(profile, max_examples=max(1, int(profile.max_examples * scale)))


# ---------------------------------------------------------------- the tally

#: What the reliability tests injected or tried, by kind; printed at the end of the session
#: (see ``conftest.py``) and quoted in ``docs/reliability.md``.
TALLY: collections.Counter[str] = collections.Counter()


def tally(kind: str, n: int = 1) -> None:
    """Count ``n`` injected faults or tried inputs of ``kind``."""
    TALLY[kind] += n


# ---------------------------------------------------------------- servers


class _Pipe:
    """One direction of a :class:`BoundedStream` pair: a byte buffer of limited capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = bytearray()
        self.writer_closed = False
        self.reader_closed = False
        self._changed = trio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


class BoundedStream(trio.abc.Stream):
    """An in-memory stream that behaves like a TCP connection with a full window: ``send_all``
    blocks while the peer's buffer is full, a cancelled ``send_all`` leaves what it wrote, and
    writing to a peer that closed raises ``BrokenResourceError``. (trio's lockstep streams
    block too, but cannot be written to again after a cancelled ``send_all``.)"""

    def __init__(self, outgoing: _Pipe, incoming: _Pipe) -> None:
        self._out = outgoing
        self._in = incoming
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(bytes(data))
        while view:
            if self._closed:  # closed by another task while we waited
                raise trio.ClosedResourceError
            if self._out.reader_closed:
                raise trio.BrokenResourceError("the peer closed")
            room = self._out.capacity - len(self._out.buffer)
            if room <= 0:
                await self._out.wait_changed()
                continue
            self._out.buffer += view[:room]
            view = view[room:]
            self._out.notify()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        while len(self._out.buffer) >= self._out.capacity and not self._out.reader_closed:
            await self._out.wait_changed()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._in.buffer:
            if self._closed:  # closed by another task while we waited
                raise trio.ClosedResourceError
            if self._in.writer_closed:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            await self._in.wait_changed()
        size = len(self._in.buffer) if max_bytes is None else min(max_bytes, len(self._in.buffer))
        data = bytes(self._in.buffer[:size])
        del self._in.buffer[:size]
        self._in.notify()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.writer_closed = True
            self._in.reader_closed = True
            self._out.notify()
            self._in.notify()
        await trio.lowlevel.checkpoint()


def bounded_stream_pair(capacity: int = 65536) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """A connected pair of :class:`BoundedStream` (``capacity`` bytes each way)."""
    a_to_b, b_to_a = _Pipe(capacity), _Pipe(capacity)
    return BoundedStream(a_to_b, b_to_a), BoundedStream(b_to_a, a_to_b)


class StreamListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs made by ``make_pair``.

    ``trio.testing.memory_stream_pair`` buffers without bound (like the one in
    ``actorcore.testing``); :func:`bounded_stream_pair` buffers 64 KiB each way, so a peer that
    never reads blocks the server's sends, as a full TCP window would.
    """

    def __init__(
        self,
        make_pair: Callable[
            [], tuple[trio.abc.Stream, trio.abc.Stream]
        ] = trio.testing.memory_stream_pair,
    ) -> None:
        self._make_pair = make_pair
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](256)

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener closed") from None

    async def aclose(self) -> None:
        await self._receive.aclose()

    async def connect(self) -> trio.abc.Stream:
        """Open a connection; returns the client half."""
        client, server = self._make_pair()
        await self._send.send(server)
        return client


class StreamServer:
    """A registry served on a :class:`StreamListener`."""

    def __init__(
        self,
        registry: actorcore.Registry,
        listener: StreamListener,
        nursery: trio.Nursery,
        server: WebSocketServer,
    ) -> None:
        self.registry = registry
        self.listener = listener
        self.nursery = nursery
        self.server = server

    @contextlib.asynccontextmanager
    async def connect(self, path: str) -> AsyncIterator[WebSocketConnection]:
        """A trio-websocket client to ``path``; closed (bounded) when the block exits."""
        stream = await self.listener.connect()
        try:
            async with client_nursery() as nursery:
                with trio.fail_after(10):
                    ws = await wrap_client_stream(
                        nursery,
                        stream,  # type: ignore[arg-type]  # any trio Stream works
                        "localhost",
                        path,
                    )
                try:
                    yield ws
                finally:
                    with trio.move_on_after(5, shield=True):
                        await ws.aclose()
        finally:
            # trio-websocket leaves the client's stream open after a close the server started.
            with trio.move_on_after(5, shield=True):
                await stream.aclose()

    @contextlib.asynccontextmanager
    async def raw(self) -> AsyncIterator[RawClient]:
        """A :class:`RawClient` on a new connection; its stream is closed on exit."""
        client = RawClient(await self.listener.connect())
        try:
            yield client
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def serve_streams(
    registry: actorcore.Registry,
    *,
    bounded: bool = False,
    max_connections: int = 10_000,
    **options: Any,
) -> AsyncIterator[StreamServer]:
    """Serve ``registry`` on in-memory streams for the block; on exit the registry drains.

    Usable with ``autojump_clock``. ``bounded``: streams with a 64 KiB window (a client that
    does not read blocks the server's writes to it). Keepalive pings are off unless
    ``ping_interval`` is given (see ``actorcore.testing.serve_in_memory``).
    """
    options.setdefault("ping_interval", 0.0)
    listener = StreamListener(bounded_stream_pair if bounded else trio.testing.memory_stream_pair)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_listeners(
                registry,
                [listener],
                max_connections=max_connections,
                task_status=task_status,
                **options,
            )
        )
        try:
            yield StreamServer(registry, listener, nursery, server)
        finally:
            registry.request_shutdown()


# ---------------------------------------------------------------- protocol helpers


async def send_json(ws: WebSocketConnection, frame: Any) -> None:
    """Send ``frame`` as a JSON text message."""
    await ws.send_message(json.dumps(frame))


async def receive_frame(ws: WebSocketConnection, within: float = 10) -> Any:
    """The next message, decoded as JSON (bounded)."""
    with trio.fail_after(within):
        return json.loads(await ws.get_message())


async def call(
    ws: WebSocketConnection, action_id: int | str, name: str, *args: Any, within: float = 10
) -> dict[str, Any]:
    """Send an action and return its reply frame (other frames are skipped)."""
    await send_json(ws, {"type": "action", "id": action_id, "name": name, "args": list(args)})
    with trio.fail_after(within):
        while True:
            frame = await receive_frame(ws, within)
            if frame.get("id") == action_id and frame.get("type") in ("action_result", "error"):
                return dict(frame)


async def close_code(ws: WebSocketConnection, within: float = 10) -> tuple[int, str]:
    """Read until the connection closes; return the close code and reason (bounded)."""
    with trio.fail_after(within):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return int(exc.reason.code), exc.reason.reason or ""


async def wait_until(predicate: Callable[[], bool], within: float = 10) -> None:
    """Poll ``predicate`` until it holds (bounded)."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - polling state another task changes
            await trio.sleep(0.001)


def run_virtual(async_fn: Callable[[], Any]) -> None:
    """Run ``async_fn`` in a fresh ``trio.run`` on an autojumping virtual clock (one per
    hypothesis example)."""
    trio.run(async_fn, clock=trio.testing.MockClock(autojump_threshold=0))
