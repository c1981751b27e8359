"""Random interleavings of clients, lifecycle requests and faults, against the real dispatcher.

Each hypothesis example draws one whole program (a list of operations) and runs it in ONE
``trio.run`` on the virtual clock (``MockClock(autojump_threshold=0)``): a real
:class:`~actorcore.Registry` on a :class:`~actorcore.MemoryStore`, served by the real dispatcher
and trio-websocket adapter over in-memory streams (:func:`actorcore.testing.serve_in_memory`).
trio's hypothesis plugin makes its scheduler deterministic, so an example replays exactly.

Operations: connect (protocol ``/connect`` or raw ``/ws``, to a definition whose raw sockets are
hibernatable or not), send actions / raw messages (in bursts; slow ones; ending with
``ctx.sleep()``/``ctx.destroy()``), client close, a client vanishing without a close frame,
``registry.sleep``, ``registry.destroy`` (awaited or in the background), idle time past
``sleep_timeout``, ``on_sleep`` slow / raising / hanging past the grace period, store writes
failing or slow, and a registry drain at a random step (later operations race it).

Instrumentation: the actor logs every delivery and every applied effect with its generation and
the lifecycle state it sees; the ``actorcore.lifecycle`` log records give the transitions; a
recording authority sees every sleep/destroy request; each client stream is sniffed so the test
counts the close frames the server really sent (trio-websocket hides a second one).

Invariants, checked after every step and at the end:

(a) every client connection ends with exactly one close frame, whose (code, reason) is in the
    close-code table (:mod:`actorcore.closecodes`), or that echoes the client's own close; never
    an abnormal close (1006) unless the client vanished; hibernatable connections never get
    1001; each code appears only when its cause happened (1012 after the drain, 1000
    ``actor.destroyed`` after a destroy of that actor, 1011 after a store fault or a raw hook
    past ``hook_timeout``);
(b) no message or action is delivered twice, and none is delivered to (or applied in) a
    generation that began finalize; deliveries see STARTED or SLEEP_GRACE;
(c) per connection, deliveries follow the frame order; on connections still open when the
    program settles, every message sent was answered (protocol) or delivered (raw), across any
    number of sleeps; a message left unanswered on a closed connection is explained by its close;
(d) the persisted state equals the effect of exactly the actions and messages that reported
    success, plus those whose connection ended (client close, vanish, drain 1012, overload 1013,
    start failure 1011) before the report could reach the client -- never one reported as
    failed; a destroyed actor has no record;
(e) destroy beats sleep (a destroy requested while a generation loads or runs ends it in
    DESTROYING); one finalize per generation, and every generation that started finalizes;
(f) no actor work (generation, hook, action or buffered-delivery task) outlives the registry,
    and no actorcore task outlives the server.

Store writes, deletes included, fail while the fault is on: a destroy whose delete failed
raises StoreError with the actor DESTROYED, and its row goes once a retry succeeds. The store
recovers when the drain begins (a store that is down during shutdown cannot persist anything,
by definition), so at the end no destroyed actor may be left in it.

Profiles: ``ACTORCORE_HYPOTHESIS_PROFILE=long`` for deep runs (default: a CI-sized run).
``ACTORCORE_INTERLEAVINGS_REPORT=1`` prints the totals (examples, steps, connections, ...) at the
end of the module (run pytest with ``-s`` to see them). Results and the defects this test found:
``docs/reliability.md``, *Interleavings*.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.internal.entropy import deterministic_PRNG
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, wrap_client_stream

import actorcore
from actorcore import ActorContext, ActorOptions, Conn, LifecycleState, MemoryStore, closecodes
from actorcore.conn import TransportClosed
from actorcore.generation import Generation
from actorcore.lifecycle import LifecycleEvent
from actorcore.registry import host_of
from actorcore.store import open_store
from actorcore.testing import MemoryServer, client_nursery, serve_in_memory
from actorcore.ws.dispatch import ConnectRequest, Dispatcher
from tests._clients import RecordingAuthority

from .._log_recording import recording_logs
from ._tasks import actor_work, actorcore_tasks

S = LifecycleState
E = LifecycleEvent

settings.register_profile(
    "actorcore-interleavings-default",
    max_examples=500,
    deadline=None,  # wall time varies; the virtual clock keeps every example deterministic
    database=None,  # do not write .hypothesis/ into the checkout
    print_blob=True,
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],  # no slow "explain"
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "actorcore-interleavings-long",
    parent=settings.get_profile("actorcore-interleavings-default"),
    max_examples=4000,
)


def _profile() -> settings:
    name = os.environ.get("ACTORCORE_HYPOTHESIS_PROFILE", "default")
    try:
        return settings.get_profile(f"actorcore-interleavings-{name}")
    except Exception:  # hypothesis raises InvalidArgument for an unknown profile
        return settings.get_profile("actorcore-interleavings-default")


PROFILE: Final = _profile()

DEFINITIONS: Final = ("room", "plain")
"""``room``: raw sockets hibernatable; ``plain``: raw sockets not (protocol ones always are)."""
KEYS: Final = ("a", "b")

OPTIONS: Final = {
    "sleep_timeout": 5.0,
    "sleep_grace_period": 2.0,
    "hook_timeout": 2.0,
    "ready_timeout": 20.0,
    "state_save_interval": 1.0,
    "close_timeout": 1.0,
    "action_timeout": 60.0,
    "hibernation_buffer": 4,
}

CONNECT_TIMEOUT: Final = 10.0
#: How long a client waits for the answer to its close, plus its queued raw hooks' time.
CLOSE_PATIENCE: Final = 5.0
SETTLE: Final = 60.0
"""Virtual seconds the program idles at its end: longer than every timeout and budget."""
EXAMPLE_BUDGET: Final = 1000.0
"""Virtual seconds one example may take at most."""

STARTED_STATES: Final = frozenset({S.STARTED, S.SLEEP_GRACE})
RUNNING_STATES: Final = frozenset({S.LOADING, S.STARTED, S.SLEEP_GRACE})

#: Every close frame actorcore may send: the close-code table.
CLOSE_TABLE: Final = frozenset(
    (value.code, value.reason)
    for value in vars(closecodes).values()
    if isinstance(value, closecodes.CloseCode)
)
CLIENT_CLOSE: Final = (4000, "bye")
#: Closes that come after the results of every action already applied (finalize waits for
#: in-flight work, then queues the close behind the results).
STRICT_CLOSES: Final = frozenset(
    (c.code, c.reason) for c in (closecodes.ACTOR_DESTROYED, closecodes.ACTOR_SLEEPING)
)
"""The close frame a client sends when it leaves (the server echoes it)."""

#: Messages of the ``actorcore`` loggers that always mean a bug.
BUG_MESSAGES: Final = (
    "generation crashed",
    "connection handler crashed",
    "still running after",
    "unsaveable",
    "start hook raised",
    "disconnect hook raised",
)

TOTALS: collections.Counter[str] = collections.Counter()


# --------------------------------------------------------------------------- client side


class SniffingStream(trio.abc.Stream):
    """A client stream that parses what the server sends, to count its close frames."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.close_frames: list[tuple[int, str]] = []
        self.frames_after_close = 0
        self.masked_frames = 0
        self._buffer = bytearray()
        self._in_http = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self._feed(bytes(data))
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _feed(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        if self._in_http:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del buf[: end + 4]
            self._in_http = False
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            masked = buf[1] & 0x80
            length = buf[1] & 0x7F
            pos = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            if masked:
                self.masked_frames += 1
                pos += 4
            if len(buf) < pos + length:
                return
            payload = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            if self.close_frames:
                self.frames_after_close += 1
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close_frames.append((code, payload[2:].decode("utf-8", "replace")))


@attrs.define(eq=False)
class Client:
    """One client connection and everything it saw."""

    index: int
    definition: str
    key: str
    route: str  # "connect" or "ws"
    hibernatable: bool
    ws: WebSocketConnection | None = None
    stream: SniffingStream | None = None
    actor_id: str | None = None
    sent: list[int] = attrs.field(factory=list)
    delays: dict[int, float] = attrs.field(factory=dict)
    """Raw messages: each token's hook delay."""
    close_patience: float = CLOSE_PATIENCE
    """How long the client waits for the server's answer to its close (see op_client_close)."""
    answers: dict[int, tuple[str, Any]] = attrs.field(factory=dict)
    ws_close: tuple[int, str] | None = None
    client_closed: bool = False
    close_done: trio.Event = attrs.field(factory=trio.Event)
    """Set when the client's own close handshake has ended."""
    vanished: bool = False
    refused: str | None = None
    """Why the connection never opened (only after the drain began)."""
    ended: trio.Event = attrs.field(factory=trio.Event)
    checked: bool = False
    open_at_settle: bool = False
    slow_hook: bool = False

    @property
    def protocol(self) -> bool:
        return self.route == "connect"

    @property
    def live(self) -> bool:
        return (
            self.ws is not None
            and not self.ended.is_set()
            and not self.client_closed
            and not self.vanished
        )

    @property
    def server_close(self) -> tuple[int, str] | None:
        """The close frame the server sent, if exactly one."""
        if self.stream is None or len(self.stream.close_frames) != 1:
            return None
        return self.stream.close_frames[0]

    def describe(self) -> str:
        frames = self.stream.close_frames if self.stream is not None else None
        return (
            f"client {self.index} {self.definition}/{self.key}/{self.route} "
            f"(hib={self.hibernatable}, actor={self.actor_id}, closed={self.client_closed}, "
            f"vanished={self.vanished}, ws_close={self.ws_close}, frames={frames})"
        )


# --------------------------------------------------------------------------- instrumentation


@attrs.define(eq=False)
class FaultyStore(MemoryStore):
    """A MemoryStore with a switchable write fault."""

    fault: Exception | None = attrs.field(default=None, init=False)

    async def _before_write(self, operation: str) -> None:
        await super()._before_write(operation)  # the delay and the closed check
        if self.fault is not None:
            raise actorcore.StoreError(f"{operation} failed: {self.fault!r}") from self.fault


def make_actors(h: Harness) -> list[type[actorcore.Actor]]:
    """The instrumented actors, bound to one harness."""

    async def apply_token(ctx: ActorContext, token: int, delay: float, then: str | None) -> None:
        """What an action or a message does: record, wait, apply, maybe end the generation."""
        h.on_deliver(ctx, token)
        if delay:
            await trio.sleep(delay)
        h.on_apply(ctx, token)
        ctx.state = {"tokens": [*ctx.state["tokens"], token]}
        if then == "sleep":
            ctx.sleep()
        elif then == "destroy":
            ctx.destroy()

    class Room(actorcore.Actor):
        name = "room"
        options = ActorOptions(**OPTIONS, hibernatable_websockets=True)

        def create_state(self, ctx: ActorContext, input: Any) -> Any:
            return {"tokens": []}

        async def on_wake(self, ctx: ActorContext) -> None:
            h.on_wake(ctx)

        async def on_sleep(self, ctx: ActorContext) -> None:
            h.on_hook(ctx, "on_sleep")
            behaviour = h.behaviour.get((ctx.name, ctx.key))
            if behaviour == "slow":
                await trio.sleep(1.0)
            elif behaviour == "raise":
                raise RuntimeError("on_sleep fails")
            elif behaviour == "hang":
                await trio.sleep_forever()  # cancelled at the grace deadline

        async def on_destroy(self, ctx: ActorContext) -> None:
            h.on_hook(ctx, "on_destroy")

        @actorcore.action
        async def add(
            self, ctx: ActorContext, token: int, delay: float, then: str | None
        ) -> dict[str, int]:
            await apply_token(ctx, token, delay, then)
            return {"generation": ctx.generation}

        async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
            assert isinstance(message, str)
            token_text, delay_text, then = message.split(" ")
            await apply_token(ctx, int(token_text), float(delay_text), then)
            await conn.send(token_text)

    class Plain(Room):
        name = "plain"
        options = ActorOptions(**OPTIONS, hibernatable_websockets=False)

    return [Room, Plain]


# --------------------------------------------------------------------------- the harness


class Harness:
    """The model, the instrumentation callbacks and the operations of one example."""

    def __init__(self) -> None:
        self.store = FaultyStore()
        self.authority = RecordingAuthority(
            lambda request, entry, before, destroy_before, gen: self.on_request(
                entry, request.event, before, destroy_before, gen
            ),
            self.violation,
        )
        self.registry = actorcore.Registry(
            make_actors(self), store=self.store, authority=self.authority
        )
        self.authority.registry = self.registry
        self.server: MemoryServer | None = None
        self.client_nursery: trio.Nursery | None = None
        self.violations: list[str] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=100)
        self.behaviour: dict[tuple[str, str], str | None] = {}
        self.clients: list[Client] = []
        self.next_token = 0
        self.token_client: dict[int, Client] = {}
        self.draining = False
        self.faults_seen = False
        self.steps = 0
        # server-side observations
        self.delivered: dict[int, tuple[str, int]] = {}
        self.applied: dict[int, tuple[str, int]] = {}
        self.applied_by_actor: dict[str, list[int]] = collections.defaultdict(list)
        self.last_delivered: dict[int, int] = {}  # client index -> last token delivered
        self.actor_keys: dict[str, tuple[str, str]] = {}
        self.started: set[tuple[str, int]] = set()
        self.finalize: dict[tuple[str, int], str] = {}
        self.hooks: collections.Counter[tuple[str, int, str]] = collections.Counter()
        self.destroyed: set[str] = set()
        self.destroy_requested_keys: set[tuple[str, str]] = set()
        self.destroy_targets: list[tuple[str, int]] = []
        self.leftover_work: list[str] = []
        self.crossed_closes = 0

    # ------------------------------------------------------------ reporting

    def violation(self, message: str) -> None:
        self.violations.append(message)

    def report(self) -> str:
        tail = "\n  ".join(self.tail)
        return "\n".join(self.violations) + f"\n-- last records:\n  {tail}"

    # ------------------------------------------------------------ instrumentation callbacks

    def on_log(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.tail.append(f"{trio.current_time():9.3f} {record.levelname} {message}")
        if any(bug in message for bug in BUG_MESSAGES):
            self.violation(f"logged: {message}")
        new = getattr(record, "new_state", None)
        if new is None:
            return
        actor_id: str = record.actor_id  # type: ignore[attr-defined]
        number: int = record.generation  # type: ignore[attr-defined]
        old: str = record.old_state  # type: ignore[attr-defined]
        key = (actor_id, number)
        if actor_id in self.destroyed:
            self.violation(f"{actor_id}: transition {old} -> {new} after DESTROYED")
        if old == S.LOADING.value and new != S.ASLEEP.value:
            if key in self.started:
                self.violation(f"{key}: started twice")
            self.started.add(key)
        if new in (S.SLEEP_FINALIZE.value, S.DESTROYING.value):
            if key in self.finalize:
                self.violation(f"{key}: second finalize ({self.finalize[key]}, then {new})")
            if key not in self.started:
                self.violation(f"{key}: finalize of a generation that never started")
            self.finalize[key] = new
        if new == S.DESTROYED.value:
            self.destroyed.add(actor_id)

    def on_request(
        self,
        entry: Any,
        event: LifecycleEvent,
        before: S,
        destroy_before: bool,
        gen: Generation | None,
    ) -> None:
        after = entry.lifecycle.state
        self.tail.append(f"{trio.current_time():9.3f} REQUEST {event.name} {before} -> {after}")
        if event is E.DESTROY:
            self.destroy_requested_keys.add((entry.name, entry.key))
            if before in STARTED_STATES and after is not S.DESTROY_GRACE:
                self.violation(f"{entry.actor_id}: DESTROY in {before.name} led to {after.name}")
            if before in RUNNING_STATES and not destroy_before:
                if gen is None:
                    self.violation(f"{entry.actor_id}: {before.name} without a generation")
                else:
                    self.destroy_targets.append((entry.actor_id, gen.number))
        elif event is E.SLEEP and destroy_before and after is not before:
            self.violation(f"{entry.actor_id}: SLEEP moved a destroying actor to {after}")

    def on_wake(self, ctx: ActorContext) -> None:
        self.actor_keys[ctx.actor_id] = (ctx.name, ctx.key)
        tokens = ctx.state["tokens"]
        if tokens != self.applied_by_actor[ctx.actor_id]:
            self.violation(
                f"{ctx.actor_id} gen {ctx.generation}: woke with {tokens}, "
                f"applied {self.applied_by_actor[ctx.actor_id]}"
            )

    def on_hook(self, ctx: ActorContext, hook: str) -> None:
        self.hooks[(ctx.actor_id, ctx.generation, hook)] += 1
        if self.hooks[(ctx.actor_id, ctx.generation, hook)] > 1:
            self.violation(f"{ctx.actor_id} gen {ctx.generation}: {hook} ran twice")
        wanted = {"on_sleep": {S.SLEEP_GRACE, S.DESTROY_GRACE}, "on_destroy": {S.DESTROY_GRACE}}
        if ctx.lifecycle not in wanted[hook]:
            self.violation(f"{ctx.actor_id}: {hook} ran in {ctx.lifecycle.name}")

    def on_deliver(self, ctx: ActorContext, token: int) -> None:
        """(b), (c): a message or action starts in its actor."""
        where = f"token {token} on {ctx.name}/{ctx.key} gen {ctx.generation}"
        self.tail.append(f"{trio.current_time():9.3f} DELIVER {where} in {ctx.lifecycle.name}")
        client = self.token_client.get(token)
        if client is None:
            self.violation(f"{where}: never sent")
            return
        if token in self.delivered:
            self.violation(f"{where}: delivered twice (first to gen {self.delivered[token]})")
        self.delivered[token] = (ctx.actor_id, ctx.generation)
        if (client.definition, client.key) != (ctx.name, ctx.key):
            self.violation(f"{where}: sent to {client.describe()}")
        if client.actor_id is not None and client.actor_id != ctx.actor_id:
            self.violation(f"{where}: {client.describe()} is live on another actor")
        if (ctx.actor_id, ctx.generation) in self.finalize:
            self.violation(f"{where}: delivered after its generation began finalize")
        if ctx.lifecycle not in STARTED_STATES:
            self.violation(f"{where}: delivered in {ctx.lifecycle.name}")
        last = self.last_delivered.get(client.index, -1)
        if token <= last:
            self.violation(f"{where}: delivered after token {last} of the same connection")
        self.last_delivered[client.index] = token

    def on_apply(self, ctx: ActorContext, token: int) -> None:
        where = f"token {token} on {ctx.name}/{ctx.key} gen {ctx.generation}"
        if token in self.applied:
            self.violation(f"{where}: applied twice")
        if (ctx.actor_id, ctx.generation) in self.finalize:
            self.violation(f"{where}: applied after its generation began finalize")
        if ctx.lifecycle not in {*STARTED_STATES, S.DESTROY_GRACE}:
            self.violation(f"{where}: applied in {ctx.lifecycle.name}")
        self.applied[token] = (ctx.actor_id, ctx.generation)
        self.applied_by_actor[ctx.actor_id].append(token)

    # ------------------------------------------------------------ clients

    async def run_client(
        self, client: Client, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert self.server is not None and self.client_nursery is not None
        path = f"/actors/{client.definition}/{client.key}/{client.route}"
        try:
            raw = await self.server.listener.connect()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            client.refused = "listener closed"
            client.ended.set()
            task_status.started()
            return
        stream = client.stream = SniffingStream(raw)
        try:
            async with client_nursery() as nursery:
                await self._client_session(client, nursery, stream, path, task_status)
                # The session is over (closed, or gave up on a peer that never answered):
                # its reader task goes with it.
                nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(5, shield=True):
                # trio-websocket leaves the client's stream open after a server close.
                await stream.aclose()
            client.ended.set()

    async def _client_session(
        self,
        client: Client,
        nursery: trio.Nursery,
        stream: SniffingStream,
        path: str,
        task_status: trio.TaskStatus[None],
    ) -> None:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                ws = await wrap_client_stream(
                    nursery,
                    stream,  # type: ignore[arg-type]  # any trio Stream works
                    "localhost",
                    path,
                )
        except (trio.TooSlowError, HandshakeError, ConnectionClosed) as exc:
            client.refused = repr(exc)
            task_status.started()
            return
        client.ws = ws
        task_status.started()
        try:
            while True:
                self.on_frame(client, await ws.get_message())
        except ConnectionClosed as exc:
            reason = exc.reason
            client.ws_close = (
                (int(reason.code), reason.reason or "") if reason is not None else (0, "")
            )
        finally:
            with trio.move_on_after(client.close_patience + 5, shield=True):
                if client.client_closed:
                    await client.close_done.wait()  # the close op waits for the handshake
                await ws.aclose()

    def on_frame(self, client: Client, message: str | bytes) -> None:
        if not client.protocol:
            token = int(message)
            if token in client.answers:
                self.violation(f"{client.describe()}: token {token} echoed twice")
            client.answers[token] = ("echo", None)
            return
        frame = json.loads(message)
        kind = frame["type"]
        if kind == "init":
            if client.actor_id is not None:
                self.violation(f"{client.describe()}: a second init frame {frame}")
            client.actor_id = frame["actor_id"]
            return
        if kind not in ("action_result", "error"):
            self.violation(f"{client.describe()}: unexpected frame {frame}")
            return
        token = frame["id"]
        if client.actor_id is None:
            self.violation(f"{client.describe()}: answer before init: {frame}")
        if token in client.answers:
            self.violation(f"{client.describe()}: token {token} answered twice: {frame}")
        if kind == "action_result":
            client.answers[token] = ("result", frame["output"])
        else:
            client.answers[token] = ("error", frame["code"])

    def pick(self, index: int) -> Client | None:
        live = [c for c in self.clients if c.live]
        return live[index % len(live)] if live else None

    # ------------------------------------------------------------ operations

    async def op_connect(self, definition: str, key: str, route: str) -> None:
        assert self.client_nursery is not None
        client = Client(
            index=len(self.clients),
            definition=definition,
            key=key,
            route=route,
            hibernatable=route == "connect" or definition == "room",
        )
        self.clients.append(client)
        await self.client_nursery.start(self.run_client, client)
        if client.refused is not None and not self.draining:
            self.violation(f"{client.describe()}: refused before the drain: {client.refused}")

    async def op_send(self, index: int, count: int, delay: float, then: str | None) -> None:
        client = self.pick(index)
        if client is None:
            return
        ws = client.ws
        assert ws is not None
        for i in range(count):
            token = self.next_token
            self.next_token += 1
            self.token_client[token] = client
            last = i == count - 1
            this_then = then if last else None
            if client.protocol:
                message = json.dumps(
                    {
                        "type": "action",
                        "id": token,
                        "name": "add",
                        "args": [token, delay, this_then],
                    }
                )
            else:
                message = f"{token} {delay} {this_then or '-'}"
                client.delays[token] = delay
                if delay > OPTIONS["hook_timeout"]:
                    client.slow_hook = True  # on_ws_message exceeds hook_timeout: 1011
            try:
                await ws.send_message(message)
            except ConnectionClosed:
                return
            client.sent.append(token)

    async def op_client_close(self, index: int) -> None:
        client = self.pick(index)
        if client is None:
            return
        assert client.ws is not None
        if not client.protocol:
            # Raw messages are delivered one hook at a time, in order, and trio-websocket reads
            # the close frame only after the messages sent before it (its message queue holds
            # one): the server answers once their hooks have run, each cut at hook_timeout.
            # Found by this test: six queued hooks took exactly the 5 s the client waited.
            client.close_patience += sum(
                min(delay, OPTIONS["hook_timeout"])
                for token, delay in client.delays.items()
                if token not in self.applied
            )
        client.client_closed = True
        try:
            with trio.move_on_after(client.close_patience):
                await client.ws.aclose(*CLIENT_CLOSE)
        finally:
            client.close_done.set()

    async def op_vanish(self, index: int) -> None:
        client = self.pick(index)
        if client is None:
            return
        assert client.stream is not None
        client.vanished = True
        await client.stream.aclose()

    async def actor_id(self, definition: str, key: str) -> str | None:
        try:
            handle = await self.registry.get(definition, key)
        except actorcore.ActorError as exc:
            # A destroyed actor's row whose delete failed is deleted by the lookup: that
            # fails too while the store does.
            failing = type(exc) is actorcore.StoreError and self.store.fault is not None
            if not (failing or self.tolerated(exc, actorcore.ActorNotFound)):
                self.violation(f"get({definition}, {key}): {exc!r}")
            return None
        return handle.actor_id

    def tolerated(self, exc: actorcore.ActorError, *allowed: type[actorcore.ActorError]) -> bool:
        if isinstance(exc, allowed):
            return True
        if self.draining and isinstance(exc, actorcore.RuntimeShutdown):
            return True
        # A lookup already waiting on the store when the drain closes it.
        return (
            self.draining
            and type(exc) is actorcore.StoreError
            and "the store is closed" in exc.message
        )

    async def op_sleep(self, definition: str, key: str) -> None:
        actor_id = await self.actor_id(definition, key)
        if actor_id is None:
            return
        try:
            await self.registry.sleep(actor_id)
        except actorcore.ActorError as exc:
            if not self.tolerated(exc, actorcore.ActorNotFound, actorcore.ActorDestroyed):
                self.violation(f"sleep({definition}/{key}): {exc!r}")
        except trio.TooSlowError:
            self.violation(f"sleep({definition}/{key}) did not end within its stop budget")

    async def op_destroy(self, definition: str, key: str) -> None:
        actor_id = await self.actor_id(definition, key)
        if actor_id is None:
            return
        faulty = self.faults_seen
        try:
            await self.registry.destroy(actor_id)
        except actorcore.ActorError as exc:
            allowed: list[type[actorcore.ActorError]] = [
                actorcore.ActorNotFound,
                actorcore.ActorDestroyed,
            ]
            if faulty or self.faults_seen:
                allowed.append(actorcore.ActorStartFailed)
                if type(exc) is actorcore.StoreError and "failed to delete" in exc.message:
                    # Destroyed in memory; the row goes once a retry succeeds (checked at the
                    # end, after the store recovered).
                    if actor_id not in self.destroyed:
                        self.violation(f"destroy({definition}/{key}): {exc!r}, not DESTROYED")
                    return
            if not self.tolerated(exc, *allowed):
                self.violation(f"destroy({definition}/{key}): {exc!r}")
            return
        except trio.TooSlowError:
            self.violation(f"destroy({definition}/{key}) did not end within its budget")
            return
        if actor_id not in self.destroyed:
            self.violation(f"destroy({definition}/{key}) returned but {actor_id} not DESTROYED")

    def set_fault(self, on: bool) -> None:
        if on and self.draining:
            return  # the store stays up once the drain began (see the module docstring)
        if on:
            self.faults_seen = True
        self.store.fault = OSError("injected write fault") if on else None

    async def execute(self, op: tuple[Any, ...], bg: trio.Nursery) -> None:
        kind = op[0]
        if kind == "connect":
            await self.op_connect(*op[1:])
        elif kind == "send":
            await self.op_send(*op[1:])
        elif kind == "close":
            await self.op_client_close(op[1])
        elif kind == "vanish":
            await self.op_vanish(op[1])
        elif kind in ("sleep", "destroy"):
            _, definition, key, background = op
            fn = self.op_sleep if kind == "sleep" else self.op_destroy
            if background:
                bg.start_soon(fn, definition, key)
            else:
                await fn(definition, key)
        elif kind == "advance":
            await trio.sleep(op[1])
        elif kind == "hook":
            self.behaviour[(op[1], op[2])] = op[3]
        elif kind == "fault":
            self.set_fault(op[1])
        elif kind == "write_delay":
            if not self.draining:
                self.store.write_delay = op[1]
        else:  # pragma: no cover - the strategy makes only the kinds above
            raise AssertionError(op)

    def begin_drain(self) -> None:
        self.tail.append(f"{trio.current_time():9.3f} DRAIN")
        self.draining = True
        self.set_fault(False)  # a store that is down at shutdown cannot persist anything
        self.store.write_delay = 0.0
        self.registry.request_shutdown()

    # ------------------------------------------------------------ checks

    def check_step(self) -> None:
        """After every step: check the connections that ended since the last step."""
        for client in self.clients:
            if client.ended.is_set() and not client.checked:
                client.checked = True
                self.check_close(client)

    def check_close(self, client: Client) -> None:
        """(a): exactly one close frame from the table, or the client's own; no 1006."""
        where = client.describe()
        if client.refused is not None:
            if not self.draining:
                self.violation(f"{where}: refused before the drain: {client.refused}")
            return
        stream = client.stream
        assert stream is not None
        frames = stream.close_frames
        if stream.masked_frames:
            self.violation(f"{where}: {stream.masked_frames} masked frames from the server")
        if stream.frames_after_close:
            self.violation(f"{where}: {stream.frames_after_close} frames after the close frame")
        if client.vanished:
            if len(frames) > 1:
                self.violation(f"{where}: {len(frames)} close frames")
        elif len(frames) != 1:
            # (Also when the client's close crossed one of the server's: the server's frame
            # must still be written, see ``_ServerConnection`` in actorcore/ws/server.py.)
            self.violation(f"{where}: {len(frames)} close frames, not exactly one")
        if client.client_closed and frames and frames[0] != CLIENT_CLOSE:
            self.crossed_closes += 1  # the server's own close crossed the client's
        for frame in frames:
            own = client.client_closed and frame == CLIENT_CLOSE
            if frame not in CLOSE_TABLE and not own:
                self.violation(f"{where}: close frame {frame} is not in the close-code table")
        if client.ws_close is not None and client.ws_close[0] == 1006 and not client.vanished:
            self.violation(f"{where}: abnormal close 1006")
        own_close = client.client_closed or client.vanished
        if frames and not own_close and client.ws_close != frames[0]:
            self.violation(f"{where}: the client saw {client.ws_close}, not {frames[0]}")
        server_frames = [f for f in frames if f in CLOSE_TABLE and f != CLIENT_CLOSE]
        for code, reason in server_frames:
            self.check_close_cause(client, code, reason)

    def check_close_cause(self, client: Client, code: int, reason: str) -> None:
        """(a): each close code appears only when its cause happened."""
        where = client.describe()
        if (code, reason) == (1001, "actor.sleeping"):
            if client.hibernatable:
                self.violation(f"{where}: a hibernatable connection got 1001")
        elif (code, reason) == (1000, "actor.destroyed"):
            if (client.definition, client.key) not in self.destroy_requested_keys:
                self.violation(f"{where}: 1000 actor.destroyed without a destroy")
        elif code == 1012:
            if not self.draining:
                self.violation(f"{where}: 1012 before the drain")
        elif (code, reason) == (1011, "actor.internal_error") and client.slow_hook:
            pass
        elif code == 1011:
            if not self.faults_seen:
                self.violation(f"{where}: {code} {reason} without a store fault")
        elif (code, reason) == (1013, "actor.overloaded"):
            if not client.hibernatable:
                self.violation(f"{where}: overloaded without a hibernation buffer")
        else:
            self.violation(f"{where}: unexpected close {code} {reason}")

    def check_settled(self) -> None:
        """(c): every message sent on a connection still open was answered or delivered."""
        for client in self.clients:
            if not client.live:
                continue
            client.open_at_settle = True
            for token in client.sent:
                if client.protocol:
                    if token not in client.answers:
                        self.violation(f"{client.describe()}: token {token} never answered")
                elif token not in self.delivered:
                    self.violation(f"{client.describe()}: token {token} never delivered")
                elif token in self.applied and token not in client.answers:
                    self.violation(f"{client.describe()}: token {token} applied, not echoed")

    def check_tokens(self) -> collections.Counter[str]:
        """(c), (d): what each token's client saw agrees with what the actor did."""
        outcomes: collections.Counter[str] = collections.Counter()
        for client in self.clients:
            close = client.server_close
            sent = set(client.sent)
            for token in client.answers:
                if token not in sent:
                    self.violation(f"{client.describe()}: answer for unknown token {token}")
            for token in client.sent:
                answer = client.answers.get(token)
                applied = token in self.applied
                where = f"{client.describe()}: token {token}"
                if answer is not None and answer[0] in ("result", "echo"):
                    outcomes["reported success"] += 1
                    if not applied:
                        self.violation(f"{where}: reported {answer} but never applied")
                    elif answer[0] == "result" and answer[1] != {
                        "generation": self.applied[token][1]
                    }:
                        self.violation(f"{where}: {answer}, applied in {self.applied[token]}")
                    continue
                if answer is not None:
                    outcomes[f"error {answer[1]}"] += 1
                    if applied:
                        self.violation(f"{where}: applied but reported {answer}")
                    if answer[1] == "actor.destroyed":
                        if (client.definition, client.key) not in self.destroy_requested_keys:
                            self.violation(f"{where}: {answer} without a destroy")
                    elif answer[1] != "actor.stopping":
                        self.violation(f"{where}: unexpected error {answer}")
                    continue
                # Unanswered: the connection ended; its end must explain it.
                if client.client_closed or client.vanished:
                    outcomes[f"unanswered, client left (applied={applied})"] += 1
                    continue
                if close is None:
                    self.violation(f"{where}: unanswered and no single close frame")
                    continue
                outcomes[f"unanswered, closed {close} (applied={applied})"] += 1
                if applied and close in STRICT_CLOSES:
                    self.violation(f"{where}: applied, but {close} came before the result")
        return outcomes

    def check_actors(self, records: dict[str, actorcore.ActorRecord | None]) -> None:
        """(d), (e): persisted state, one finalize per generation, destroy beats sleep."""
        for actor_id, record in records.items():
            applied = self.applied_by_actor.get(actor_id, [])
            if actor_id in self.destroyed:
                if record is not None:
                    self.violation(f"{actor_id}: DESTROYED but still in the store")
                continue
            if record is None:
                self.violation(f"{actor_id}: missing from the store, applied {applied}")
                continue
            tokens = json.loads(record.state)["tokens"] if record.state is not None else []
            if tokens != applied:
                self.violation(f"{actor_id}: the store holds {tokens}, applied {applied}")
        for key in self.started:
            if key not in self.finalize:
                self.violation(f"{key}: started but never finalized")
        for actor_id, number in self.destroy_targets:
            key = (actor_id, number)
            if key in self.started and self.finalize.get(key) != S.DESTROYING.value:
                self.violation(f"{key}: destroy requested but it ended {self.finalize.get(key)}")
        for actor_id, number, hook in self.hooks:
            ended = self.finalize.get((actor_id, number))
            if hook == "on_destroy" and ended != S.DESTROYING.value:
                self.violation(f"{actor_id} gen {number}: on_destroy ran, but it ended {ended}")

    async def watch_registry(self) -> None:
        await self.registry.wait_stopped()
        self.leftover_work = actor_work()

    # ------------------------------------------------------------ the program

    async def main(self, program: list[tuple[Any, ...]], drain_at: int | None) -> None:
        try:
            with trio.fail_after(EXAMPLE_BUDGET):
                await self._main(program, drain_at)
        except trio.TooSlowError:
            self.violation(f"the example did not end within {EXAMPLE_BUDGET} virtual seconds")
            return
        leftover = actorcore_tasks()
        if leftover:
            self.violation(f"actorcore tasks outlived the server: {leftover}")
        if self.leftover_work:
            self.violation(f"actor work outlived the registry: {self.leftover_work}")
        async with open_store(self.store):
            records = {
                actor_id: await self.store.get_by_id(actor_id)
                for actor_id in {*self.actor_keys, *self.applied_by_actor}
            }
        self.check_actors(records)

    async def _main(self, program: list[tuple[Any, ...]], drain_at: int | None) -> None:
        # No keepalive: its clients are trio-websocket's, whose reader dies when a ping
        # crosses their own close frame (python-trio/trio-websocket#184), and this harness
        # idles and closes connections at every virtual second.
        async with serve_in_memory(self.registry, ping_interval=0.0) as server:
            self.server = server
            async with trio.open_nursery() as watchers:
                watchers.start_soon(self.watch_registry)
                async with trio.open_nursery() as clients:
                    self.client_nursery = clients
                    async with trio.open_nursery() as bg:
                        for step, op in enumerate(program):
                            if step == drain_at:
                                self.begin_drain()
                            self.steps += 1
                            self.tail.append(f"{trio.current_time():9.3f} OP {op!r}")
                            await self.execute(op, bg)
                            self.check_step()
                            if self.violations:
                                raise _Stop
                        if not self.draining:
                            self.set_fault(False)
                            self.store.write_delay = 0.0
                    if not self.draining:
                        await trio.sleep(SETTLE)
                        self.check_step()
                        self.check_settled()
                        self.begin_drain()
                    # Every client ends: the drain closes what is left with 1012.
                await self.registry.wait_stopped()
        self.check_step()


class _Stop(Exception):
    """A step found a violation: end the example early (the report says which)."""


# --------------------------------------------------------------------------- strategies

definitions = st.sampled_from(DEFINITIONS)
keys = st.sampled_from(KEYS)
clients = st.integers(0, 15)
sends = st.tuples(
    st.just("send"),
    clients,
    st.sampled_from([1, 1, 2, 4]),  # a burst: messages sent back to back
    st.sampled_from([0.0, 0.0, 0.5, 3.0]),  # delay; 3 s outlasts the sleep grace period
    st.sampled_from([None, None, None, "sleep", "destroy"]),  # then (after the last)
)
connects = st.tuples(st.just("connect"), definitions, keys, st.sampled_from(["connect", "ws"]))
#: Operations, by weight: mostly traffic, then lifecycle requests, time and faults.
operations = st.sampled_from(
    [sends] * 6
    + [connects] * 3
    + [st.tuples(st.just("close"), clients), st.tuples(st.just("vanish"), clients)]
    + [st.tuples(st.just("sleep"), definitions, keys, st.booleans())] * 2
    + [st.tuples(st.just("destroy"), definitions, keys, st.booleans())]
    + [st.tuples(st.just("advance"), st.sampled_from([0.0, 0.1, 0.5, 1.5, 6.0]))] * 2  # 6 > idle
    + [
        st.tuples(
            st.just("hook"), definitions, keys, st.sampled_from([None, "slow", "raise", "hang"])
        ),
        st.tuples(st.just("fault"), st.booleans()),
        st.tuples(st.just("write_delay"), st.sampled_from([0.0, 0.5])),
    ]
).flatmap(lambda strategy: strategy)
MAX_STEPS: Final = 60


def run_program(program: list[tuple[Any, ...]], drain_at: int | None) -> Harness:
    harness = Harness()
    with recording_logs(harness):
        try:
            trio.run(
                harness.main, program, drain_at, clock=trio.testing.MockClock(autojump_threshold=0)
            )
        except _Stop:
            pass
        except BaseExceptionGroup as group:
            _, rest = group.split(_Stop)
            if rest is not None:
                raise
    return harness


#: Regression (found by this test): the client's close arrived while an action's answer was
#: going out, and a server send in trio-websocket's REMOTE_CLOSING window raised wsproto's
#: LocalProtocolError instead of ConnectionClosed ("connection handler crashed").
_CLOSE_DURING_ANSWERS: Final = [("send", 0, 1, 0.0, None)] * 16 + [
    ("connect", "room", "a", "connect"),
    *[("send", 0, 1, 0.0, None)] * 4,
    ("send", 0, 2, 0.0, None),
    ("close", 0),
]


#: Regression (found by this test): a raw client closed behind six queued messages whose hooks
#: took 5 s in all, exactly as long as the client then waited for the server's answer.
_CLOSE_BEHIND_SLOW_HOOKS = [
    *[("send", 0, 1, 0.0, None)] * 6,
    ("send", 1, 1, 0.5, None),
    ("send", 1, 1, 0.5, None),
    ("send", 1, 4, 0.5, None),
    ("send", 1, 1, 3.0, None),
    ("close", 0),
    ("advance", 0.0),
    ("send", 0, 1, 0.0, None),
    ("send", 0, 1, 0.0, None),
    ("close", 0),
]


@settings(PROFILE)
@example(
    opening=[("connect", "room", "a", "connect")], program=_CLOSE_DURING_ANSWERS, drain_at=None
)
@example(
    opening=[("connect", "room", "a", "connect"), ("connect", "room", "a", "ws")],
    program=_CLOSE_BEHIND_SLOW_HOOKS,
    drain_at=None,
)
@given(
    opening=st.lists(connects, min_size=1, max_size=4),
    program=st.lists(operations, min_size=15, max_size=MAX_STEPS),
    drain_at=st.none() | st.integers(0, MAX_STEPS),
)
def test_random_interleavings_keep_the_invariants(
    opening: list[tuple[Any, ...]], program: list[tuple[Any, ...]], drain_at: int | None
) -> None:
    harness = run_program(opening + program, drain_at)
    assert not harness.violations, harness.report()
    outcomes = harness.check_tokens()
    assert not harness.violations, harness.report()
    TOTALS["examples"] += 1
    TOTALS["steps"] += harness.steps
    TOTALS["connections"] += len(harness.clients)
    TOTALS["messages attempted"] += harness.next_token
    TOTALS["messages sent"] += sum(len(c.sent) for c in harness.clients)
    TOTALS["generations"] += len(harness.started)
    TOTALS["destroyed"] += len(harness.destroyed)
    TOTALS["crossed closes (the server's own frame arrived)"] += harness.crossed_closes
    TOTALS.update(f"outcome: {k}" for k in outcomes.elements())
    closes = collections.Counter(
        f for c in harness.clients if c.stream is not None for f in c.stream.close_frames
    )
    TOTALS.update(f"close: {code} {reason}" for code, reason in closes.elements())
    for code, reason in closes:
        event(f"close {code} {reason}")
    event(f"generations: {min(len(harness.started), 10)}+")
    event(f"destroyed: {len(harness.destroyed)}")
    drained = drain_at is not None and drain_at < len(opening) + len(program)
    event("drained mid-program" if drained else "settled")


@pytest.fixture(scope="module", autouse=True)
def _report_totals() -> Iterator[None]:
    start = time.perf_counter()
    TOTALS.clear()
    yield
    if os.environ.get("ACTORCORE_INTERLEAVINGS_REPORT"):
        totals = {"seconds": round(time.perf_counter() - start, 1), **dict(TOTALS)}
        sys.__stderr__.write(json.dumps(totals, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- determinism


FIXED_PROGRAM: Final = [
    ("connect", "room", "a", "connect"),
    ("connect", "room", "a", "ws"),
    ("connect", "plain", "a", "ws"),
    ("send", 0, 4, 0.5, "sleep"),
    ("send", 1, 2, 0.0, None),
    ("send", 2, 2, 0.0, None),
    ("hook", "room", "a", "slow"),
    ("sleep", "room", "a", True),
    ("send", 0, 2, 0.0, None),
    ("send", 1, 2, 0.0, None),
    ("advance", 6.0),
    ("fault", True),
    ("send", 0, 1, 0.0, None),
    ("advance", 1.5),
    ("fault", False),
    ("destroy", "plain", "a", True),
    ("send", 2, 1, 0.0, None),
    ("vanish", 1),
    ("close", 0),
    ("connect", "room", "b", "connect"),
    ("send", 0, 2, 3.0, "destroy"),
]


def trace(harness: Harness) -> list[Any]:
    """What happened, without ids (uuid4) or wall-clock times."""
    return [
        [
            (
                c.index,
                c.sent,
                sorted(c.answers.items()),
                c.ws_close,
                c.stream and c.stream.close_frames,
            )
            for c in harness.clients
        ],
        sorted((token, gen) for token, (_, gen) in harness.applied.items()),
        sorted(collections.Counter(harness.finalize.values()).items()),
    ]


def test_a_program_replays_exactly() -> None:
    """The same program gives the same trace: the examples are deterministic.

    trio's scheduler draws from a Random that its hypothesis plugin registers; hypothesis seeds
    it for every example, as ``deterministic_PRNG`` does here.
    """
    traces = []
    for _ in range(3):
        with deterministic_PRNG():
            harness = run_program(FIXED_PROGRAM, 19)
        assert not harness.violations, harness.report()
        assert len(harness.applied) > 10 and len(harness.destroyed) == 1, "it did something"
        traces.append(trace(harness))
    assert traces[0] == traces[1] == traces[2]


# --------------------------------------------------------------------------- regressions


class Waking(actorcore.Actor):
    """A protocol actor for the regressions below."""

    name = "waking"
    options = ActorOptions(hibernation_buffer=3)

    @actorcore.action
    async def ping(self, ctx: ActorContext) -> int:
        return ctx.generation


async def test_hibernation_buffer_overflow_while_the_actor_wakes_closes_1013_once(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the random interleavings: the buffer overflowed (and was cleared) while the
    buffered-delivery task waited for the wake, which then popped from the empty buffer and
    crashed the connection handler (1011 after the 1013, or instead of it)."""
    caplog.set_level(logging.ERROR, logger="actorcore")
    store = MemoryStore()
    registry = actorcore.Registry([Waking], store=store)
    async with serve_in_memory(registry) as server:
        raw = await server.listener.connect()
        stream = SniffingStream(raw)
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, "localhost", "/actors/waking/k/connect")  # type: ignore[arg-type]
            init = json.loads(await ws.get_message())
            await registry.sleep(init["actor_id"])
            store.write_delay = 0.5  # the wake takes a while: the messages pile up meanwhile
            for i in range(4):
                await ws.send_message(json.dumps({"type": "action", "id": i, "name": "ping"}))
            with trio.fail_after(10):
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
            assert closed.value.reason is not None
            assert (closed.value.reason.code, closed.value.reason.reason) == (
                1013,
                "actor.overloaded",
            )
            await ws.aclose()
            await stream.aclose()
        store.write_delay = 0.0
    assert stream.close_frames == [(1013, "actor.overloaded")]
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]


class ScriptedTransport:
    """A :class:`actorcore.conn.Transport` fed by the test. Its first ``receive()`` calls return
    ``incoming``; the next one runs ``then`` (synchronously) and waits for the close."""

    def __init__(self, incoming: list[str], then: Callable[[], None]) -> None:
        self.incoming = incoming
        self.then: Callable[[], None] | None = then
        self.sent: list[Any] = []
        self.closed: tuple[int, str] | None = None
        self._closed = trio.Event()

    async def receive(self) -> str | bytes:
        if self.incoming:
            await trio.lowlevel.checkpoint()
            return self.incoming.pop(0)
        if self.then is not None:
            # Synchronously after the last frame was handled: no other task ran in between.
            then, self.then = self.then, None
            then()
        await self._closed.wait()
        assert self.closed is not None
        raise TransportClosed(*self.closed)

    async def send(self, message: str | bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed is not None:
            raise TransportClosed(*self.closed)
        self.sent.append(json.loads(message))

    def start_close(self, code: int, reason: str) -> bool:
        return False  # the close frame goes out in close(), after a checkpoint

    async def close(self, code: int, reason: str) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed is None:
            self.closed = (code, reason)
            self._closed.set()

    async def abort(self) -> None:
        await self.close(1006, "")


@pytest.mark.parametrize("awaits", [True, False])
async def test_an_action_read_before_a_destroy_never_starts_in_destroy_grace(
    autojump_clock: Any, awaits: bool
) -> None:
    """Found by the random interleavings: the dispatcher admits an action when it reads the
    frame and starts it in a task of its own; a destroy requested in between made the action
    body run in DESTROY_GRACE, next to ``on_destroy``. It now gets ``actor.destroyed``, like
    every action read after the destroy began. An action that never awaits runs inline, when
    its frame is read: it runs (in STARTED) and answers before the destroy can begin."""
    seen: list[S] = []

    class Recorder(actorcore.Actor):
        name = "recorder"

        @actorcore.action
        async def record(self, ctx: ActorContext) -> None:
            seen.append(ctx.lifecycle)

        @actorcore.action
        async def record_later(self, ctx: ActorContext) -> None:
            await trio.lowlevel.checkpoint()
            seen.append(ctx.lifecycle)

    async with actorcore.Registry([Recorder]) as registry:
        handle = await registry.get_or_create("recorder", "k")
        entry = host_of(registry).entry(handle.actor_id)
        assert entry is not None
        frame = json.dumps(
            {"type": "action", "id": 1, "name": "record_later" if awaits else "record"}
        )
        # The dispatcher reads the frame (admitted: STARTED), then the destroy comes before
        # the action's task has started.
        transport = ScriptedTransport(
            [frame], lambda: host_of(registry).request(entry, E.DESTROY, "test")
        )

        async def accept() -> ScriptedTransport:
            return transport

        target = "/actors/recorder/k/connect"
        dispatcher = Dispatcher(registry)
        with trio.fail_after(30):
            await dispatcher.handle(target, ConnectRequest(path=target, headers=()), accept)
    if awaits:
        assert seen == [], "the action ran after the destroy began"
        assert [f["type"] for f in transport.sent] == ["init", "error"]
        assert transport.sent[1]["id"] == 1 and transport.sent[1]["code"] == "actor.destroyed"
    else:
        assert seen == [S.STARTED]
        assert [f["type"] for f in transport.sent] == ["init", "action_result"]
    assert transport.closed == (1000, "actor.destroyed")


class SlowTransport(ScriptedTransport):
    """A :class:`ScriptedTransport` on a slow link: every send after the first takes
    ``delay`` seconds."""

    def __init__(self, incoming: list[str], delay: float) -> None:
        super().__init__(incoming, lambda: None)
        self.delay = delay

    async def send(self, message: str | bytes) -> None:
        if self.sent:
            await trio.sleep(self.delay)
        await super().send(message)


async def test_the_answer_of_an_action_cut_at_grace_is_sent_before_the_registry_stops(
    autojump_clock: Any,
) -> None:
    """Found by the random interleavings ("actor work outlived the registry"): an action cut at
    the grace deadline of a drain sent its ``actor.stopping`` answer from its own task after its
    work had ended, so the registry could stop while the answer was still on its way. The
    answer is now tracked work of the generation: finalize, and so the registry's stop, waits
    until it is sent."""

    class Stuck(actorcore.Actor):
        name = "stuck"
        options = ActorOptions(sleep_grace_period=1.0, close_timeout=5.0, action_timeout=100.0)

        @actorcore.action
        async def hang(self, ctx: ActorContext) -> None:
            await trio.sleep_forever()

    frame = json.dumps({"type": "action", "id": 1, "name": "hang"})
    transport = SlowTransport([frame], delay=0.5)
    answered_at_stop: list[list[str]] = []
    async with trio.open_nursery() as nursery:
        registry = actorcore.Registry([Stuck])
        await nursery.start(registry.run)

        async def accept() -> SlowTransport:
            return transport

        async def watch() -> None:
            await registry.wait_stopped()
            answered_at_stop.append([f["type"] for f in transport.sent])

        nursery.start_soon(watch)
        target = "/actors/stuck/k/connect"
        nursery.start_soon(
            Dispatcher(registry).handle, target, ConnectRequest(path=target, headers=()), accept
        )
        await trio.testing.wait_all_tasks_blocked()
        registry.request_shutdown()
        with trio.fail_after(30):
            await registry.wait_stopped()
        await transport.close(1012, "runtime.shutdown")  # the dispatcher's drain step's part
    assert answered_at_stop == [["init", "error"]], "the answer was not out when it stopped"
    assert transport.sent[1]["code"] == "actor.stopping"


class Embedded(actorcore.Actor):
    name = "embedded"


async def test_an_embedded_dispatcher_closes_its_connections_1012_at_drain(
    autojump_clock: Any,
) -> None:
    """An embedder's own ``actorcore.Dispatcher`` registers its drain step itself: at shutdown
    its connections get 1012 before the actors sleep (no ``add_drain_step`` call needed)."""
    registry = actorcore.Registry([Embedded])
    transport = ScriptedTransport([], lambda: registry.request_shutdown())

    async def accept() -> ScriptedTransport:
        return transport

    target = "/actors/embedded/k/connect"
    async with registry:
        dispatcher = actorcore.Dispatcher(registry)
        with trio.fail_after(30):
            await dispatcher.handle(target, ConnectRequest(path=target, headers=()), accept)
    assert [f["type"] for f in transport.sent] == ["init"]
    assert transport.closed == (1012, "runtime.shutdown")


async def test_a_handler_reports_its_phase_and_a_drain_cancels_routing_and_setup(
    autojump_clock: Any,
) -> None:
    """``Dispatcher.phases()`` follows each handler through ROUTING (authorize), SETUP (the
    setup hooks) and OPEN; a drain cancels the step a handler is in and closes with 1012."""
    from actorcore.ws.dispatch import ConnPhase

    gate_open = trio.Event()
    hook_open = trio.Event()

    async def authorize(request: ConnectRequest) -> None:
        if request.key == "gated":
            await gate_open.wait()

    class Phased(actorcore.Actor):
        async def on_before_connect(
            self, ctx: ActorContext, params: Any, request: ConnectRequest
        ) -> None:
            if request.key == "hooked":
                await hook_open.wait()

    registry = actorcore.Registry([Phased], authorize=authorize)
    transports = {key: ScriptedTransport([], lambda: None) for key in ("gated", "hooked", "open")}

    async def connect(key: str) -> None:
        async def accept() -> ScriptedTransport:
            return transports[key]

        target = f"/actors/phased/{key}/connect"
        await dispatcher.handle(target, ConnectRequest(path=target, headers=()), accept)

    async with registry:
        dispatcher = actorcore.Dispatcher(registry)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for key in transports:
                    nursery.start_soon(connect, key)
                await trio.testing.wait_all_tasks_blocked()
                assert [f["type"] for f in transports["open"].sent] == ["init"]
                phases = dispatcher.phases()
                assert phases[ConnPhase.ROUTING] == 1
                assert phases[ConnPhase.SETUP] == 1
                assert phases[ConnPhase.OPEN] == 1
                assert phases[ConnPhase.TEARDOWN] == phases[ConnPhase.DONE] == 0
                await dispatcher.close_all(closecodes.RUNTIME_SHUTDOWN)
    for transport in transports.values():
        assert transport.closed == (1012, "runtime.shutdown")
    assert [f["type"] for f in transports["open"].sent] == ["init"]
    assert transports["gated"].sent == transports["hooked"].sent == []
    assert sum(dispatcher.phases().values()) == 0
