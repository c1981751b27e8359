"""One running generation of an actor, and the in-memory slot (ActorEntry) it runs in.

A generation is one awake period of an actor, from LOADING to the end of its finalize. It owns a
nursery (background work: ``wait_until``, the idle timer, the state saver), counts in-flight
work, arms the idle timer, keeps the grace deadline, and runs the finalize sequence:

1. grace: run ``on_sleep``/``on_destroy`` and wait until hooks, in-flight calls,
   ``keep_awake`` blocks and ``wait_until`` work are done, or until ``sleep_grace_period``
   passes (then what is left is cancelled and logged by name);
2. finalize: give every connection that does not survive this generation its close frame,
   concurrently and bounded, run their disconnect hooks, save the final state (or delete the
   actor), then close the nursery.

Work that callers run (actions, connection hooks) runs in the *caller's* task, inside a cancel
scope that the generation registers and can cancel at its grace deadline; no task per call.

The registry owns the entries and decides when to start a generation; this module never looks
up other actors.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from . import closecodes
from .conn import Conn, ConnKind
from .context import ActorContext
from .errors import ActorError, ActorStartFailed, StateError, StoreError
from .lifecycle import Lifecycle, LifecycleEvent, LifecycleState

if TYPE_CHECKING:
    from .actor import Actor, ActorDefinition
    from .store.base import Store

__all__ = ["ActorEntry", "Generation", "GenerationHost"]

log = logging.getLogger("actorcore.lifecycle")

S = LifecycleState
E = LifecycleEvent
_GRACE_STATES = frozenset({S.SLEEP_GRACE, S.DESTROY_GRACE})


class GenerationHost(Protocol):
    """What a generation needs from its registry."""

    @property
    def store(self) -> Store:
        """The store actors persist to."""
        ...

    def request(self, entry: ActorEntry, event: LifecycleEvent, reason: str) -> None:
        """Ask the lifecycle authority for a sleep or destroy of ``entry``."""
        ...

    def note_save_error(self, entry: ActorEntry, error: ActorError) -> None:
        """Count and surface a failed state save."""
        ...

    def note_delete_failed(self, entry: ActorEntry, generation: int, error: ActorError) -> None:
        """The destroy's delete failed: the registry retries it (on reuse of the key, and at
        drain) so the destroyed actor does not come back."""
        ...


@attrs.define(eq=False, slots=True)
class ActorEntry:
    """An actor that is present in memory: awake, starting, stopping, or asleep while it still
    holds hibernating connections or waiting work. Asleep actors without those have none."""

    actor_id: str
    key: str
    definition: ActorDefinition
    lifecycle: Lifecycle = attrs.field(factory=Lifecycle)
    generation: Generation | None = None
    """The generation running now (LOADING to the end of finalize), else None."""
    last_generation: int = 0
    """Number of the last generation that began."""
    _changed: trio.Event | None = None
    """Made on demand (most entries never have a waiter); set and dropped at every transition."""
    held: int = 0
    """Calls and connections waiting for the next generation."""
    conns: set[Conn] = attrs.field(factory=set[Conn])
    """Live connections; hibernatable ones stay here while the actor sleeps."""
    start_error: ActorError | None = None
    """The error of the last failed start."""
    wakes: int = 0
    """Generations begun through this entry (a start attempt each)."""
    failed_wake: int = 0
    """The value of ``wakes`` when the last start failed."""
    pending_state: bytes | None = None
    """State a failed final save could not persist; the next generation starts from it."""
    retired: bool = False
    """Removed from the registry's maps; a fresh entry serves later requests."""

    @property
    def name(self) -> str:
        """The definition's route name."""
        return self.definition.name

    @property
    def changed(self) -> trio.Event:
        """An event set at the next lifecycle transition: ``await entry.changed.wait()``."""
        if self._changed is None:
            self._changed = trio.Event()
        return self._changed

    def notify(self) -> None:
        """Wake everyone waiting on :attr:`changed`."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def process(self, event: LifecycleEvent, reason: str) -> LifecycleState:
        """Apply ``event`` to the lifecycle, log the transition, wake whoever waits on it."""
        old = self.lifecycle.state
        new = self.lifecycle.process_event(event)
        if new is not old:
            gen = self.generation
            number = gen.number if gen is not None else self.last_generation
            log.info(
                "actor %s/%s id=%s gen=%d %s -> %s (%s)",
                self.name,
                self.key,
                self.actor_id,
                number,
                old.value,
                new.value,
                reason,
                extra={
                    "actor_name": self.name,
                    "actor_id": self.actor_id,
                    "generation": number,
                    "old_state": old.value,
                    "new_state": new.value,
                    "reason": reason,
                },
            )
            self.notify()
            if gen is not None:
                gen.on_transition(new)
        return new


class WorkScope:
    """One unit of in-flight work (see :meth:`Generation.track_work`).

    It is counted from the moment it is made, so a reader can reserve work for a generation
    synchronously right after admission and enter the scope later in another task. A plain
    class because it is on the per-message path.
    """

    __slots__ = ("_blocks_idle", "_gen", "scope")

    def __init__(self, gen: Generation, name: str, blocks_idle: bool) -> None:
        self._gen = gen
        self._blocks_idle = blocks_idle
        self.scope = scope = trio.CancelScope()
        gen._work[scope] = name
        if blocks_idle:
            gen._busy_inc()

    def __enter__(self) -> trio.CancelScope:
        return self.scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        gen = self._gen
        try:
            return self.scope.__exit__(exc_type, exc, tb)
        finally:
            del gen._work[self.scope]
            if self._blocks_idle:
                gen._busy_dec()
            gen.mark_dirty()
            if not gen._work:
                gen.poke()


@attrs.define(eq=False, slots=True)
class Generation:
    """One awake period of an actor. Created by the registry, run by :meth:`run`."""

    entry: ActorEntry
    host: GenerationHost
    number: int = 0
    state: Any = None
    instance: Actor | None = None
    ctx: ActorContext = attrs.field(init=False)
    aborted: bool = False
    """Grace has begun: long-running work should wrap up (see :attr:`abort_signal`)."""
    _abort_signal: trio.Event | None = None
    _nursery: trio.Nursery | None = None
    _work: dict[trio.CancelScope, str] = attrs.field(factory=dict[trio.CancelScope, str])
    _busy: int = 0
    _timer_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _idle_at: float = math.inf
    """When the idle timer fires (inf: busy, in grace, or no_sleep)."""
    _save_at: float = math.inf
    """When the next interval save is due (inf: nothing changed since the last one)."""
    _last_save: float = 0.0
    _grace_begun: trio.Event = attrs.field(factory=trio.Event)
    _poke: trio.Event | None = None
    _dirty: bool = False
    _save_lock: trio.Lock | None = None
    _saved: bytes | None = None
    _no_sleep: bool = attrs.field(default=False, init=False)
    _finalizing: bool = False
    ended: bool = False
    """The generation has ended (finalized, failed to start, or was cancelled)."""
    _finished: trio.Event | None = None

    def __attrs_post_init__(self) -> None:
        self.ctx = ActorContext(self)
        self._no_sleep = self.entry.definition.options.no_sleep

    # ---------------------------------------------------------------- identity

    @property
    def actor_id(self) -> str:
        """The actor's id."""
        return self.entry.actor_id

    # Events are made on demand: most generations never have anyone waiting on them, and an
    # awake idle actor should cost as little memory as possible.

    @property
    def abort_signal(self) -> trio.Event:
        """Set when grace begins."""
        if self._abort_signal is None:
            self._abort_signal = trio.Event()
            if self.aborted:
                self._abort_signal.set()
        return self._abort_signal

    @property
    def finished(self) -> trio.Event:
        """Set when the generation has ended."""
        if self._finished is None:
            self._finished = trio.Event()
            if self.ended:
                self._finished.set()
        return self._finished

    def end(self) -> None:
        """Mark the generation ended (called once by the registry)."""
        self.ended = True
        if self._finished is not None:
            self._finished.set()

    def poke(self) -> None:
        """Wake the grace/finalize loop to re-check what is left."""
        if self._poke is not None:
            self._poke.set()

    @property
    def key(self) -> str:
        """The actor's key."""
        return self.entry.key

    @property
    def definition(self) -> ActorDefinition:
        """The actor's definition."""
        return self.entry.definition

    @property
    def lifecycle(self) -> Lifecycle:
        """The actor's lifecycle (shared with the entry)."""
        return self.entry.lifecycle

    # ---------------------------------------------------------------- requests

    def request_sleep(self, reason: str) -> None:
        """Request sleep through the registry's authority."""
        self.host.request(self.entry, E.SLEEP, reason)

    def request_destroy(self, reason: str) -> None:
        """Request destroy through the registry's authority."""
        self.host.request(self.entry, E.DESTROY, reason)

    def on_transition(self, new: LifecycleState) -> None:
        """Called by the entry after every transition of this generation."""
        if new in _GRACE_STATES:
            self.aborted = True
            if self._abort_signal is not None:
                self._abort_signal.set()
            self._grace_begun.set()
            self._idle_at = math.inf
        self.poke()

    # ---------------------------------------------------------------- work tracking

    def track_work(self, name: str, *, blocks_idle: bool = True) -> WorkScope:
        """Reserve in-flight work of this generation, to be run as a ``with`` block.

        The work blocks finalize (and idle sleep unless ``blocks_idle`` is False) from this call
        until the block exits, and is cancelled if the grace deadline passes. Call it right
        after admission, before any checkpoint; the block may then be entered later, in
        another task, but it must be entered.
        """
        return WorkScope(self, name, blocks_idle)

    # The idle timer and the save interval share one deadline, kept on the cancel scope the
    # generation's own task waits in (see _serve): no extra task per awake actor.

    def _rearm(self) -> None:
        self._timer_scope.deadline = min(self._idle_at, self._save_at)

    def _busy_inc(self) -> None:
        # Nothing to re-arm: a timer that fires while the actor is busy is ignored (see _serve).
        self._busy += 1

    def _busy_dec(self) -> None:
        self._busy -= 1
        if self._busy == 0 and self.lifecycle.state is S.STARTED and not self._no_sleep:
            self._idle_at = trio.current_time() + self.definition.options.sleep_timeout
            # Only move the timer earlier: one that fires too early re-arms itself.
            if self._timer_scope.deadline > self._idle_at:
                self._timer_scope.deadline = self._idle_at

    def conn_attached(self, conn: Conn) -> None:
        """A connection went live: a non-hibernatable one keeps the actor awake."""
        conn.generation = self.number
        if not conn.hibernatable:
            self._busy_inc()

    def conn_detached(self, conn: Conn) -> None:
        """A connection ended."""
        if not conn.hibernatable:
            self._busy_dec()

    def mark_dirty(self) -> None:
        """The state may have changed: it is compared and saved at the next save interval."""
        if not self._dirty:
            self._dirty = True
            self._save_at = self._last_save + self.definition.options.state_save_interval
            self._rearm()

    def wait_until(self, async_fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        """Start background work that finalize waits for (see ``ActorContext.wait_until``)."""
        if self._nursery is None or self._finalizing:
            raise RuntimeError("wait_until() is only available while the generation runs")
        name = f"wait_until:{getattr(async_fn, '__qualname__', repr(async_fn))}"
        self._spawn_tracked(name, async_fn, *args)

    def _spawn_tracked(
        self, name: str, async_fn: Callable[..., Awaitable[Any]], *args: Any
    ) -> None:
        """Run ``async_fn`` in the generation's nursery as work that blocks finalize (not idle
        sleep); reserved now, so a drain check right after can never miss it."""
        assert self._nursery is not None
        work = self.track_work(name, blocks_idle=False)
        self._nursery.start_soon(self._run_tracked, work, name, async_fn, args, name=name)

    async def _run_tracked(
        self,
        work: WorkScope,
        name: str,
        async_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
    ) -> None:
        try:
            with work:
                await async_fn(*args)
        except Exception:
            log.exception("actor %s id=%s: %s raised", self.entry.name, self.actor_id, name)

    def _drained(self) -> bool:
        return not self._work

    # ---------------------------------------------------------------- connections

    def live_conns(self) -> list[Conn]:
        """The actor's live connections."""
        return [c for c in self.entry.conns if not c.closing]

    def broadcast(self, event: str, args: list[Any]) -> None:
        """Queue an event frame to every subscribed protocol connection (encoded once)."""
        frame: str | None = None
        for conn in self.entry.conns:
            if conn.kind is ConnKind.PROTOCOL and event in conn.subscriptions:
                if frame is None:
                    frame = json.dumps({"type": "event", "name": event, "args": args})
                conn.queue_frame(frame)

    # ---------------------------------------------------------------- state

    async def save_state(self, *, reason: str) -> None:
        """Save the state if it differs from the last save. Raises StateError / StoreError."""
        if self._save_lock is None:
            self._save_lock = trio.Lock()
        async with self._save_lock:
            try:
                data = json.dumps(self.state, separators=(",", ":")).encode()
            except (TypeError, ValueError, RecursionError) as exc:  # too deep: not JSON either
                raise StateError(f"state of actor {self.actor_id} is not JSON: {exc}") from exc
            if data == self._saved:
                return
            await self.host.store.save(self.actor_id, self.number, data)
            self._saved = data
            log.debug(
                "actor %s id=%s gen=%d saved (%s)",
                self.entry.name,
                self.actor_id,
                self.number,
                reason,
            )

    async def _serve(self) -> None:
        """Wait for grace; meanwhile fire the idle timer and the interval saves."""
        while not self._grace_begun.is_set():
            self._timer_scope = trio.CancelScope(deadline=min(self._idle_at, self._save_at))
            with self._timer_scope:
                await self._grace_begun.wait()
            now = trio.current_time()
            if self._dirty and now >= self._save_at:
                self._dirty = False
                self._save_at = math.inf
                self._last_save = now
                try:
                    await self.save_state(reason="interval")
                except ActorError as exc:
                    self.host.note_save_error(self.entry, exc)
                    self.mark_dirty()  # try again at the next interval
            if now >= self._idle_at:
                self._idle_at = math.inf  # re-armed when the actor is next idle
                if self._busy == 0 and self.lifecycle.state is S.STARTED:
                    self.request_sleep("idle")

    # ---------------------------------------------------------------- run

    async def run(self) -> None:
        """Run the whole generation: start, serve, grace, finalize. Never raises for user code."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if await self._start_or_fail():
                await self._serve_and_finalize(nursery)
            nursery.cancel_scope.cancel()

    async def _start_or_fail(self) -> bool:
        try:
            await self._start()
        except ActorError as exc:
            self._start_failed(exc)
            return False
        self.entry.process(E.LOADED, "started")
        return True

    async def _serve_and_finalize(self, nursery: trio.Nursery) -> None:
        self._last_save = trio.current_time()
        if self._busy == 0 and not self._no_sleep:
            self._idle_at = self._last_save + self.definition.options.sleep_timeout
        await self._serve()
        await self._grace()
        destroying = self.lifecycle.state is S.DESTROY_GRACE
        self.entry.process(E.GRACE_ENDED, "grace ended")
        self._finalizing = True
        await self._finalize(destroying=destroying)

    def _start_failed(self, exc: ActorError) -> None:
        log.warning(
            "actor %s/%s id=%s gen=%d failed to start: %s",
            self.entry.name,
            self.key,
            self.actor_id,
            self.number,
            exc,
        )
        self.entry.start_error = exc
        self.entry.failed_wake = self.entry.wakes
        self.entry.process(E.LOAD_FAILED, f"start failed: {exc.code}")

    async def _start(self) -> None:
        entry = self.entry
        definition = self.definition
        options = definition.options
        record = await self.host.store.begin_generation(self.actor_id)
        self.number = record.generation
        entry.last_generation = record.generation
        ctx = self.ctx
        try:
            self.instance = definition.cls()
            with trio.fail_after(options.hook_timeout):
                if entry.pending_state is not None:
                    self.state = json.loads(entry.pending_state)
                elif record.initialized and record.state is not None:
                    self.state = json.loads(record.state)
                    self._saved = record.state
                else:
                    input_value = json.loads(record.input) if record.input is not None else None
                    value = self.instance.create_state(ctx, input_value)
                    if inspect.isawaitable(value):
                        value = await value
                    self.state = value
                if not record.initialized:
                    await self.instance.on_create(ctx)
                    await self.save_state(reason="created")
                elif entry.pending_state is not None:
                    await self.save_state(reason="pending state from a failed save")
                    entry.pending_state = None
                await self.instance.on_wake(ctx)
        except trio.TooSlowError:
            raise ActorStartFailed(
                f"start of actor {self.actor_id} exceeded hook_timeout={options.hook_timeout}s"
            ) from None
        except ActorError as exc:
            if isinstance(exc, StoreError):
                raise ActorStartFailed(f"start of actor {self.actor_id}: {exc}") from exc
            raise ActorStartFailed(f"start of actor {self.actor_id} failed: {exc}") from exc
        except Exception as exc:
            log.exception("actor %s id=%s: start hook raised", entry.name, self.actor_id)
            raise ActorStartFailed(
                f"start of actor {self.actor_id} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _start_hook(self, hook: str) -> None:
        assert self.instance is not None
        self._spawn_tracked(f"hook:{hook}", getattr(self.instance, hook), self.ctx)

    async def _grace(self) -> None:
        grace = self.definition.options.sleep_grace_period
        deadline = trio.current_time() + grace
        hooks_started: set[str] = set()
        while True:
            hook = "on_destroy" if self.lifecycle.state is S.DESTROY_GRACE else "on_sleep"
            if hook not in hooks_started:
                if hooks_started:
                    # Escalation from sleep to destroy: on_destroy gets a full budget.
                    deadline = max(deadline, trio.current_time() + grace)
                hooks_started.add(hook)
                self._start_hook(hook)
            if self._drained():
                return
            self._poke = trio.Event()
            with trio.move_on_at(deadline):
                await self._poke.wait()
            if trio.current_time() >= deadline and not self._drained():
                if self.lifecycle.state is S.DESTROY_GRACE and "on_destroy" not in hooks_started:
                    continue
                names = sorted(self._work.values())
                log.warning(
                    "actor %s id=%s gen=%d: grace period %.3gs passed; cancelling %s",
                    self.entry.name,
                    self.actor_id,
                    self.number,
                    grace,
                    ", ".join(names),
                )
                for scope in list(self._work):
                    scope.cancel()
                return

    async def _finalize(self, *, destroying: bool) -> None:
        entry = self.entry
        options = self.definition.options
        # Cancelled work unwinds in its callers' tasks; give it a bounded moment.
        if not self._drained():
            with trio.move_on_after(options.close_timeout):
                while not self._drained():
                    self._poke = trio.Event()
                    await self._poke.wait()
        if destroying:
            closing = list(entry.conns)
            close = closecodes.ACTOR_DESTROYED
        else:
            closing = [c for c in entry.conns if not c.hibernatable]
            close = closecodes.ACTOR_SLEEPING
        if closing:
            async with trio.open_nursery() as nursery:
                for conn in closing:
                    nursery.start_soon(self._close_conn, conn, close.code, close.reason)
        if destroying:
            try:
                await self.host.store.delete(self.actor_id, self.number)
            except ActorError as exc:
                log.error("actor %s id=%s: delete failed: %s", entry.name, self.actor_id, exc)
                self.host.note_delete_failed(entry, self.number, exc)
            return
        try:
            await self.save_state(reason="finalize")
        except ActorError as exc:
            self.host.note_save_error(entry, exc)
            try:
                entry.pending_state = json.dumps(self.state, separators=(",", ":")).encode()
            except (TypeError, ValueError, RecursionError):
                log.error(
                    "actor %s id=%s: unsaveable state dropped at finalize",
                    entry.name,
                    self.actor_id,
                )
            else:
                log.error(
                    "actor %s id=%s: final save failed (%s); state kept in memory for the "
                    "next generation",
                    entry.name,
                    self.actor_id,
                    exc,
                )

    async def _close_conn(self, conn: Conn, code: int, reason: str) -> None:
        options = self.definition.options
        entry = self.entry
        # Whoever removes the connection from the actor runs its disconnect hooks, once. Remove
        # it before closing: the handler then sees that finalize owns them (it would otherwise
        # run them again, waking the actor to do so); if it left first, the handler owns them.
        if conn not in entry.conns:
            return
        entry.conns.discard(conn)
        self.conn_detached(conn)
        conn.close_nowait(code, reason)
        with trio.move_on_after(options.close_timeout + 0.5):
            await conn.wait_closed()
        assert self.instance is not None
        with trio.move_on_after(options.hook_timeout):
            try:
                if conn.kind is ConnKind.RAW:
                    await self.instance.on_ws_close(self.ctx, conn, code, reason)
                await self.instance.on_disconnect(self.ctx, conn)
            except Exception:
                log.exception("actor %s id=%s: disconnect hook raised", entry.name, self.actor_id)
