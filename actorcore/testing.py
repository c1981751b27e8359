"""Helpers for testing actors: an in-memory WebSocket server that runs on the virtual clock.

::

    async def test_chat(autojump_clock):
        registry = actorcore.Registry([Chat])
        async with serve_in_memory(registry) as server:
            async with server.connect("/actors/chat/room/connect") as ws:
                init = json.loads(await ws.get_message())

Everything runs over ``trio.testing.memory_stream_pair`` through the same dispatcher and
server front end as real sockets, so tests can use ``autojump_clock`` to run hours of actor
life in milliseconds.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream
from wsproto.utilities import LocalProtocolError

from .client import ActorConnection, connect
from .context import ActorContext
from .lifecycle import LifecycleState, WorkKind
from .registry import ActorHandle, Registry, host_of
from .storecontract import store_contract
from .ws.server import WebSocketServer, serve_listeners

__all__ = [
    "LoopbackServer",
    "MemoryListener",
    "MemoryServer",
    "TransitionRecorder",
    "client_nursery",
    "expect_close",
    "receive_json",
    "record_transitions",
    "run_due_alarms",
    "run_in_actor",
    "serve_in_memory",
    "serve_loopback",
    "store_contract",
    "wait_for_state",
]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](64)

    async def accept(self) -> trio.abc.Stream:
        """The server half of the next connection."""
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener closed") from None

    async def aclose(self) -> None:
        """Stop accepting."""
        await self._receive.aclose()

    async def connect(self) -> trio.abc.Stream:
        """Open a connection; returns the client half."""
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return client


@contextlib.asynccontextmanager
async def client_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for one trio-websocket client connection's reader task, which tolerates
    trio-websocket's known pong-after-close bug (python-trio/trio-websocket#184): a server
    ping that crosses the client's own close frame makes the client's reader answer it in the
    closing state, which wsproto refuses with ``LocalProtocolError``. The client was closing
    anyway; nothing else is swallowed."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except* LocalProtocolError:
        pass


@contextlib.asynccontextmanager
async def _client(
    stream: trio.abc.Stream, host: str, path: str, kwargs: dict[str, Any]
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client on ``stream``; closed (bounded), with its stream, on exit."""
    async with client_nursery() as nursery:
        with trio.fail_after(10):
            # trio-websocket types this as a socket stream, but any trio Stream works.
            ws = await wrap_client_stream(
                nursery,
                stream,  # type: ignore[arg-type]
                host,
                path,
                **kwargs,
            )
        try:
            yield ws
        finally:
            with trio.move_on_after(5, shield=True):
                await ws.aclose()
                # trio-websocket leaves the client's stream open after a close the server
                # started; close it so no socket is left for the garbage collector.
                await stream.aclose()


class MemoryServer:
    """A registry served over a :class:`MemoryListener`."""

    def __init__(
        self,
        registry: Registry,
        listener: MemoryListener,
        nursery: trio.Nursery,
        server: WebSocketServer | None = None,
    ):
        self.registry = registry
        self.listener = listener
        self._nursery = nursery
        self.server = server
        """The running server (its statistics and options)."""

    def client(self, name: str, key: str, **kwargs: Any) -> ActorConnection:
        """A protocol client (:func:`actorcore.connect`) of the actor ``name``/``key`` over
        this in-memory server, on the same clock: ``async with server.client("counter", "k")
        as counter: await counter.call("increment")``. ``kwargs`` are those of
        :func:`actorcore.connect`."""
        return connect("ws://localhost", name, key, open_stream=self.listener.connect, **kwargs)

    @contextlib.asynccontextmanager
    async def connect(self, path: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
        """A client WebSocket to ``path``; closed (bounded) when the block exits."""
        stream = await self.listener.connect()
        async with _client(stream, "localhost", path, kwargs) as ws:
            yield ws


@contextlib.asynccontextmanager
async def serve_in_memory(
    registry: Registry, *, max_connections: int = 10_000, **options: Any
) -> AsyncIterator[MemoryServer]:
    """Serve ``registry`` in memory for the block; on exit the registry drains. ``options``
    are those of :class:`actorcore.ws.server.ServerOptions` (the server's defaults, keepalive
    included: a silent peer is pinged after 20 virtual seconds).

    trio-websocket's client, which :meth:`MemoryServer.connect` returns, drops its reader when
    a ping crosses its own close frame (python-trio/trio-websocket#184): a test that keeps a
    connection silent for ``ping_interval`` and then closes it may pass ``ping_interval=0``."""
    listener = MemoryListener()
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
        yield MemoryServer(registry, listener, nursery, server)
        registry.request_shutdown()


class LoopbackServer(MemoryServer):
    """A registry served on a real 127.0.0.1 socket (port 0); :attr:`port` is the bound port."""

    def __init__(
        self,
        registry: Registry,
        port: int,
        nursery: trio.Nursery,
        server: WebSocketServer | None = None,
    ):
        self.registry = registry
        self.port = port
        self._nursery = nursery
        self.server = server

    def client(self, name: str, key: str, **kwargs: Any) -> ActorConnection:
        """A protocol client (:func:`actorcore.connect`) of ``name``/``key`` over TCP."""
        return connect(f"ws://127.0.0.1:{self.port}", name, key, **kwargs)

    @contextlib.asynccontextmanager
    async def connect(self, path: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
        """A client WebSocket over TCP to ``path``; closed (bounded) when the block exits."""
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with _client(stream, "127.0.0.1", path, kwargs) as ws:
            yield ws


@contextlib.asynccontextmanager
async def serve_loopback(
    registry: Registry, *, max_connections: int = 10_000, **options: Any
) -> AsyncIterator[LoopbackServer]:
    """Serve ``registry`` on 127.0.0.1 (port 0) for the block; on exit the registry drains.
    ``options`` are those of :meth:`actorcore.Registry.serve`."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: registry.serve(
                "127.0.0.1", 0, max_connections=max_connections, task_status=task_status, **options
            )
        )
        yield LoopbackServer(registry, server.port, nursery, server)
        registry.request_shutdown()


async def wait_for_state(
    registry: Registry,
    actor_id: str,
    state: LifecycleState,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - the documented API of this helper
) -> None:
    """Return once the actor's lifecycle is ``state`` (at once if it already is): woken by the
    transition itself, no polling. ``timeout``: ``trio.TooSlowError`` after that many
    seconds (None: unbounded; bound the test with ``trio.fail_after`` then)."""
    reached = trio.Event()

    def listener(changed: str, old: LifecycleState, new: LifecycleState) -> None:
        if changed == actor_id and new is state:
            reached.set()

    stop = registry.watch_transitions(listener)
    try:
        if registry.lifecycle(actor_id) is state:
            await trio.lowlevel.checkpoint()
            return
        with trio.fail_after(math.inf if timeout is None else timeout):
            await reached.wait()
    finally:
        stop()


async def run_in_actor(handle: ActorHandle, fn: Callable[[ActorContext], Any]) -> Any:
    """Run ``fn(ctx)`` (sync or async) inside the actor, as in-flight work of its current
    generation, waking it if it sleeps, and return its result: a test reads or sets
    ``ctx.state``, calls ``ctx.sleep()``, inspects ``ctx.conns`` ... without an action for it.
    Admitted like a call (held past a finishing generation, bounded by ``ready_timeout`` and
    ``action_timeout``); a state it leaves unsaveable raises StateError and is rolled back."""
    registry = handle.registry
    entry = await host_of(registry).find_entry(handle.actor_id)
    gen = await host_of(registry).admit_entry(entry, WorkKind.CALL)
    work = gen.track_work("run_in_actor", timeout=gen.definition.options.action_timeout)

    async def body(_instance: Any, ctx: ActorContext) -> Any:
        result = fn(ctx)
        if inspect.isawaitable(result):
            result = await result
        return result

    return await host_of(registry).invoke(gen, work, "run_in_actor", body, (), {}, None)


async def run_due_alarms(
    registry: Registry,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - the documented API of this helper
) -> int:
    """Return once every alarm due now (``ctx.schedule``) has run, been retried or dropped,
    and none is running: the registry's timer runs them (waking their actors); this waits for
    it, without polling. Returns how many runs finished meanwhile. With ``autojump_clock``,
    ``await trio.sleep(seconds)`` first to make later alarms due. ``timeout``:
    ``trio.TooSlowError`` after that many seconds (None: unbounded)."""
    with trio.fail_after(math.inf if timeout is None else timeout):
        return await host_of(registry).alarms.wait_settled()


@attrs.define
class TransitionRecorder:
    """The transitions seen while :func:`record_transitions` was active."""

    transitions: list[tuple[str, LifecycleState, LifecycleState]] = attrs.Factory(list)
    """``(actor_id, from_state, to_state)``, in the order they happened."""

    def of(self, actor_id: str) -> list[tuple[LifecycleState, LifecycleState]]:
        """The transitions of one actor."""
        return [(old, new) for aid, old, new in self.transitions if aid == actor_id]


@contextlib.contextmanager
def record_transitions(registry: Registry) -> Iterator[TransitionRecorder]:
    """``with record_transitions(registry) as rec:`` records every lifecycle transition of the
    registry's actors in ``rec.transitions`` until the block ends."""
    recorder = TransitionRecorder()
    stop = registry.watch_transitions(
        lambda actor_id, old, new: recorder.transitions.append((actor_id, old, new))
    )
    try:
        yield recorder
    finally:
        stop()


#: Bound on each helper wait below; wrap a call in ``trio.fail_after`` for a tighter one.
HELPER_TIMEOUT = 30.0


async def receive_json(ws: WebSocketConnection) -> Any:
    """The next message, decoded as JSON (bounded by :data:`HELPER_TIMEOUT`)."""
    with trio.fail_after(HELPER_TIMEOUT):
        return json.loads(await ws.get_message())


async def expect_close(ws: WebSocketConnection) -> tuple[int, str]:
    """Read until the connection closes; return the close code and reason. Messages received
    before the close are discarded. Bounded by :data:`HELPER_TIMEOUT`."""
    with trio.fail_after(HELPER_TIMEOUT):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return int(exc.reason.code), exc.reason.reason or ""
