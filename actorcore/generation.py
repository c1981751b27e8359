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

import contextlib
import contextvars
import functools
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from collections.abc import Set as AbstractSet
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from . import closecodes, deadlines, gcpause, jsoncodec
from .actor import Actor
from .conn import Conn, ConnKind
from .context import ActorContext
from .errors import (
    ActorDestroyed,
    ActorError,
    ActorStartFailed,
    ActorStopping,
    StateError,
    StoreError,
)
from .lifecycle import Admission, Lifecycle, LifecycleEvent, LifecycleState, WorkKind, admit
from .logfmt import quoted
from .resume import DetachedConn, decode_record, encode_record
from .store.base import ConnWrites, SaveItem

if TYPE_CHECKING:
    from .actor import ActorDefinition
    from .alarms import AlarmTimer
    from .durability import DurableSaves
    from .lookup import ActorLookup
    from .outputgate import OutputGate
    from .store.base import ActorRecord, Store
    from .watchdog import Watchdog

__all__ = ["ActorEntry", "Generation", "GenerationHost", "PreparedSave"]

log = logging.getLogger("actorcore.lifecycle")

#: A finalize closing at least this many connections pauses the cyclic garbage collector while
#: it closes them (measured: 10,000 connections closed in 3.5 s with the collector on, 4.7 s of
#: the server's CPU in its full passes; see docs/benchmarks.md).
GC_PAUSE_CLOSES = 1_000

S = LifecycleState
E = LifecycleEvent
_GRACE_STATES = frozenset({S.SLEEP_GRACE, S.DESTROY_GRACE})
_FINALIZE_STATES = frozenset({S.SLEEP_FINALIZE, S.DESTROYING})
_ENDING_STATES = _GRACE_STATES | _FINALIZE_STATES
_NO_CONNS: frozenset[Conn] = frozenset()

#: The generations whose turn the current call chain holds (serial actors): a call that
#: re-enters one of them from within its turn (A -> B -> A, one task) runs in that turn.
_turns_held: contextvars.ContextVar[frozenset[Generation]] = contextvars.ContextVar(
    "actorcore_turns_held", default=frozenset()
)


class GenerationHost(Protocol):
    """What a generation needs from its registry."""

    @property
    def store(self) -> Store:
        """The store actors persist to."""
        ...

    def request(
        self,
        entry: ActorEntry,
        event: LifecycleEvent,
        reason: str,
        *,
        only_if: Callable[[], bool] | None = None,
    ) -> None:
        """Ask the lifecycle authority for a sleep or destroy of ``entry``; a sleep whose
        ``only_if()`` is false when it is granted is dropped."""
        ...

    def spawn(self, async_fn: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        """Run ``async_fn(*args)`` in a task of the registry's nursery."""
        ...

    def stop_generation(self, gen: Generation) -> None:
        """Grace began for a started generation: run :meth:`Generation.stop` in a task."""
        ...

    def take_begun(self, entry: ActorEntry) -> ActorRecord | None:
        """The store record of a generation the entry's lookup already began, once, or None
        (the start then begins one itself)."""
        ...

    def is_unstored(self, entry: ActorEntry) -> bool:
        """Whether the entry is a new actor the store does not hold yet."""
        ...

    def note_stored(self, entry: ActorEntry) -> None:
        """The store now holds the entry's actor (its first start wrote it)."""
        ...

    async def write_unstored(self, entry: ActorEntry) -> None:
        """Write the entry's new actor to the store now, created but not initialized, at
        generation 1 (before its first start would: an alarm scheduled by ``on_create``
        needs the actor's row)."""
        ...

    @property
    def alarms(self) -> AlarmTimer:
        """The registry's alarm timer (``ctx.schedule``)."""
        ...

    @property
    def pause_gc(self) -> bool:
        """Whether a finalize closing many connections may pause the garbage collector."""
        ...

    @property
    def actors(self) -> ActorLookup:
        """The registry's lookup of actors (``ctx.actors``)."""
        ...

    def note_save_error(self, entry: ActorEntry, error: ActorError) -> None:
        """Count and surface a failed state save."""
        ...

    def note_store_write(self, seconds: float | None) -> None:
        """A state write succeeded in ``seconds``, or failed (None): metrics, readiness."""
        ...

    @property
    def watchdog(self) -> Watchdog:
        """Keeps the deadlines of in-flight work."""
        ...

    def note_delete_failed(self, entry: ActorEntry, generation: int, error: ActorError) -> None:
        """The destroy's delete failed: the registry retries it (on reuse of the key, and at
        drain) so the destroyed actor does not come back."""
        ...

    def track_detached(self, entry: ActorEntry) -> None:
        """``entry`` holds detached connections: end them at their deadline."""
        ...

    @property
    def durable_saves(self) -> DurableSaves:
        """Saves the output gates wait for, batched over actors."""
        ...


@attrs.frozen
class PreparedSave:
    """A save between :meth:`Generation.prepare_save` and its end."""

    item: SaveItem
    """What the store writes."""
    number: int
    """Its number for the output gate."""
    data: bytes
    """The state as encoded (the last saved state once it commits)."""
    taken: dict[str, Conn | DetachedConn | None] | None
    """The connection records it writes, as taken from the entry."""


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
    observer: Callable[[ActorEntry, LifecycleState, LifecycleState], None] | None = attrs.field(
        default=None, repr=False
    )
    """Told of every transition (the registry's, for its transition listeners)."""
    held: int = 0
    """Calls and connections waiting for the next generation."""
    conns: AbstractSet[Conn] = _NO_CONNS
    """Live connections; hibernatable ones stay here while the actor sleeps. Read-only: use
    :meth:`add_conn` / :meth:`discard_conn` (an entry without connections shares one empty
    set, which saves an empty ``set`` per awake actor)."""
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
    gate: OutputGate | None = None
    """The output gate of its protocol connections (made by the first one, when the actor
    has ``durable_outputs`` on a durable store)."""
    detached: dict[str, DetachedConn] | None = None
    """Resumable connections whose socket went away, by id (made on first use)."""
    conn_writes: dict[str, Conn | DetachedConn | None] | None = None
    """Connection records the next save writes (None: delete), by connection id."""

    @property
    def name(self) -> str:
        """The definition's route name."""
        return self.definition.name

    def add_conn(self, conn: Conn) -> None:
        """A connection went live on this actor."""
        if self.conns is _NO_CONNS:
            self.conns = set()
        assert isinstance(self.conns, set)
        self.conns.add(conn)

    def note_conn(self, conn: Conn) -> None:
        """``conn``'s stored record must be written again (its journal, subscriptions or
        state changed): with the next save."""
        self.note_write(conn.id, conn)

    def note_write(self, conn_id: str, holder: Conn | DetachedConn | None) -> None:
        """Write ``holder``'s record (None: delete the record) with the next save."""
        writes = self.conn_writes
        if writes is None:
            writes = self.conn_writes = {}
        writes[conn_id] = holder
        gen = self.generation
        if gen is not None:
            gen.mark_dirty()

    def detach(self, conn: Conn, detached_at: float, expires: float) -> DetachedConn:
        """``conn``'s socket went away without its client closing it: keep it resumable
        until ``expires`` (trio's clock); ``detached_at`` is the wall-clock time."""
        assert conn.journal is not None
        conn.journal.attached = None
        detached = DetachedConn(
            conn.id,
            conn.params,
            conn.state,
            tuple(conn.subscriptions),
            conn.journal,
            detached_at,
            expires,
        )
        self.hold_detached(detached)
        self.note_write(conn.id, detached)
        return detached

    def hold_detached(self, detached: DetachedConn) -> None:
        """Keep ``detached`` (just detached, or loaded from the store)."""
        if self.detached is None:
            self.detached = {}
        self.detached[detached.conn_id] = detached
        detached.journal.on_change = functools.partial(self.note_write, detached.conn_id, detached)

    def take_detached(self, conn_id: str) -> DetachedConn | None:
        """Remove and return the detached connection ``conn_id`` (resumed or ended)."""
        detached = self.detached
        if detached is None:
            return None
        found = detached.pop(conn_id, None)
        if not detached:
            self.detached = None
        return found

    def forget_conn(self, conn_id: str) -> None:
        """The connection ``conn_id`` ended for good: its record goes with the next save."""
        self.note_write(conn_id, None)

    def discard_conn(self, conn: Conn) -> None:
        """A connection left this actor (a no-op if it was not here)."""
        conns = self.conns
        if conn in conns:
            assert isinstance(conns, set)
            conns.discard(conn)
            if not conns:
                self.conns = _NO_CONNS

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

    def admitted(self, kind: WorkKind) -> Generation | None:
        """A check point: what :func:`~actorcore.lifecycle.admit` decides for ``kind``, as the
        action to take. The generation to run it in now, or None to hold it for the next one;
        a refusal is raised: :class:`ActorDestroyed` once destroy began, :class:`ActorStopping`
        (close 1001 ``actor.sleeping``) for a message to a generation that is finalizing."""
        decision = admit(self.lifecycle, kind)
        if decision is Admission.ADMIT:
            gen = self.generation
            assert gen is not None
            return gen
        if decision is Admission.HOLD:
            return None
        if decision is Admission.DESTROYED:
            raise ActorDestroyed(f"actor {self.actor_id} is destroyed")
        raise ActorStopping(f"actor {self.actor_id} is finalizing")

    def process(self, event: LifecycleEvent, reason: str) -> LifecycleState:
        """Apply ``event`` to the lifecycle, log the transition, wake whoever waits on it."""
        old = self.lifecycle.state
        new = self.lifecycle.process_event(event)
        # A generation runs from WAKE (LOADING) until its end is recorded: asleep, no
        # generation (the registry ends one before it records the end).
        assert new is not S.ASLEEP or self.generation is None, "asleep with a generation"
        if new is not old:
            if self.observer is not None:
                self.observer(self, old, new)
            gen = self.generation
            # A generation that is starting has no number yet: name the one the actor had.
            number = gen.number if gen is not None and gen.number else self.last_generation
            log.info(
                "actor %s/%s id=%s gen=%d %s -> %s (%s)",
                self.name,
                quoted(self.key),
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
                gen.on_transition(old, new)
        return new


class Work(Protocol):
    """In-flight work a generation tracks: cancelled when its grace deadline passes."""

    def cancel(self) -> None:
        """Cancel the work (a frame it is sending goes out first)."""
        ...


class WorkScope:
    """One unit of in-flight work (see :meth:`Generation.track_work`).

    It is counted from the moment it is made, so a reader can reserve work for a generation
    synchronously right after admission and enter the scope later in another task. A plain
    class because it is on the per-message path: its deadline, if any, is kept by the
    registry's :class:`~actorcore.watchdog.Watchdog`, not by a cancel-scope deadline.
    """

    __slots__ = ("_blocks_idle", "_ended", "_gen", "_task", "_timeout", "scope", "timed_out")

    def __init__(
        self, gen: Generation, name: str, blocks_idle: bool, timeout: float | None
    ) -> None:
        self._gen = gen
        self._blocks_idle = blocks_idle
        self._timeout = timeout
        self._task: trio.lowlevel.Task | None = None
        self._ended = False
        self.scope = trio.CancelScope()
        self.timed_out = False
        """Its own ``timeout`` cut it (not the grace deadline, not a cancel from outside)."""
        gen.work_began(self, name, blocks_idle=blocks_idle)

    def __enter__(self) -> trio.CancelScope:
        scope = self.scope.__enter__()
        self._task = trio.lowlevel.current_task()
        if self._timeout is not None:
            self._gen.host.watchdog.arm(self, trio.current_time() + self._timeout, self._expire)
        return scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        gen = self._gen
        if self._timeout is not None:
            gen.host.watchdog.disarm(self)
        try:
            return self.scope.__exit__(exc_type, exc, tb)
        finally:
            self._task = None
            self._ended = True
            gen.work_ended(self, blocks_idle=self._blocks_idle)

    def release(self) -> None:
        """End a reservation that will not run (its task failed before entering the scope),
        so the generation does not wait for it; a no-op once the work has ended."""
        if not self._ended:
            self._ended = True
            self._gen.work_ended(self, blocks_idle=self._blocks_idle)

    def cancel(self) -> None:
        """Cancel the work; a frame it is sending right now goes out first."""
        self._gen.host.watchdog.cancel(self._task, self.scope.cancel)

    def _expire(self) -> None:
        """Its timeout passed (the watchdog's callback)."""
        if not self.scope.cancel_called:
            self.timed_out = True
        self.cancel()


@attrs.define(eq=False, slots=True)
class Generation:
    """One awake period of an actor. Created by the registry, started by :meth:`run`, ended
    by :meth:`stop`.

    While the actor is STARTED the generation has no task: its idle timer and interval saves
    are watchdog timers, its work runs in its callers' tasks, ``wait_until`` work in tasks of
    the registry's nursery. An awake idle actor is a few objects, not a task and a nursery.
    """

    entry: ActorEntry
    host: GenerationHost
    number: int = 0
    state: Any = None
    instance: Actor | None = None
    ctx: ActorContext = attrs.field(init=False)
    _abort_signal: trio.Event | None = None
    _work: dict[Work, str] = attrs.field(factory=dict["Work", str])
    _busy: int = 0
    _idle_at: float = math.inf
    """When the idle timer fires (inf: busy, in grace, or no_sleep)."""
    _idle_since: float = math.inf
    """When the actor last became idle (no work, no non-hibernatable connection)."""
    _save_at: float = math.inf
    """When the next interval save is due (inf: nothing changed since the last one)."""
    _timer_at: float = math.inf
    """When the pending watchdog timer of this generation fires (inf: none pending)."""
    _last_save: float = 0.0
    _poke: trio.Event | None = None
    _dirty: bool = False
    _save_lock: trio.Lock | None = None
    _saved: bytes | None = None
    _saveable: bytes | None = None
    """The last encoding of the state that succeeded (what a rollback returns to)."""
    _no_sleep: bool = attrs.field(default=False, init=False)
    serial: bool = attrs.field(default=False, init=False)
    """The actor is serial (``ActorOptions.serial``): its work takes turns (:meth:`turn`)."""
    _turn_lock: trio.Lock | None = None
    _finished: trio.Event | None = None

    def __attrs_post_init__(self) -> None:
        self.ctx = ActorContext(self)
        self._no_sleep = self.entry.definition.options.no_sleep
        self.serial = self.entry.definition.options.serial

    # ---------------------------------------------------------------- identity

    @property
    def actor_id(self) -> str:
        """The actor's id."""
        return self.entry.actor_id

    # ---------------------------------------------------------------- where it is
    # Derived from the lifecycle, which stays the only record of where an actor is: while this
    # generation is the entry's, the actor's state is this generation's state.

    @property
    def ended(self) -> bool:
        """The generation has ended (finalized, failed to start, or was cancelled): it is no
        longer the one its actor runs."""
        return self.entry.generation is not self

    @property
    def _started(self) -> bool:
        """LOADED: from here the generation has no task of its own until grace begins."""
        return self.entry.generation is self and self.entry.lifecycle.state is not S.LOADING

    @property
    def _stopping(self) -> bool:
        """Grace has begun (:meth:`stop` runs, or is about to), or the generation ended."""
        return self.entry.generation is not self or self.entry.lifecycle.state in _ENDING_STATES

    @property
    def _finalizing(self) -> bool:
        """Grace is over (finalize runs), or the generation ended."""
        return self.entry.generation is not self or self.entry.lifecycle.state in _FINALIZE_STATES

    @property
    def aborted(self) -> bool:
        """Grace has begun, or the generation ended: long-running work should wrap up (see
        :attr:`abort_signal`)."""
        return self._stopping

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

    def ending(self) -> tuple[LifecycleEvent, str]:
        """The lifecycle event that records this generation's end, read from where it got to:
        FINALIZED after a finalize, LOAD_FAILED after a failed start, CANCELLED when it was
        cut off (a hard stop, or a bug in actorcore contained to this actor)."""
        state = self.lifecycle.state
        if state in _FINALIZE_STATES:
            return E.FINALIZED, "finalized"
        error = self.entry.start_error
        if state is S.LOADING and self.entry.failed_wake == self.entry.wakes and error is not None:
            return E.LOAD_FAILED, f"start failed: {error.code}"
        return E.CANCELLED, "cancelled"

    def end(self) -> None:
        """Wake whoever waits for the generation's end (the registry calls this once it is no
        longer the entry's generation and its end is recorded in the lifecycle)."""
        assert self.ended
        if self._abort_signal is not None:
            self._abort_signal.set()
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

    def on_transition(self, old: LifecycleState, new: LifecycleState) -> None:
        """Called by the entry after every transition of this generation."""
        if new in _GRACE_STATES and old not in _GRACE_STATES:
            if self._abort_signal is not None:
                self._abort_signal.set()
            self._idle_at = math.inf
            if old is S.STARTED:
                # A started generation has no task: grace and finalize get one. (From LOADING,
                # the start's own task goes on into them: see run.)
                self.host.stop_generation(self)
        self.poke()

    # ---------------------------------------------------------------- work tracking

    def track_work(
        self, name: str, *, blocks_idle: bool = True, timeout: float | None = None
    ) -> WorkScope:
        """Reserve in-flight work of this generation, to be run as a ``with`` block.

        The work blocks finalize (and idle sleep unless ``blocks_idle`` is False) from this call
        until the block exits, and is cancelled if the grace deadline passes, or ``timeout``
        seconds after the block is entered (callers tell the two apart by ``aborted``). Call
        it right after admission, before any checkpoint; the block may then be entered later, in
        another task, but it must be entered.
        """
        return WorkScope(self, name, blocks_idle, timeout)

    def work_began(self, work: Work, name: str, *, blocks_idle: bool) -> None:
        """Count ``work`` as in flight (``track_work`` does this; the dispatcher's read loop
        calls it directly for its message hooks, which run without a scope of their own)."""
        self._work[work] = name
        if blocks_idle:
            self._busy += 1  # _busy_inc, inline: this runs for every message

    def work_ended(self, work: Work, *, blocks_idle: bool) -> None:
        """``work`` is over: the state may have changed, and grace may now be drained."""
        work_left = self._work
        del work_left[work]
        if blocks_idle:
            self._busy_dec()
        if not self._dirty:
            self.mark_dirty()
        if not work_left and self._poke is not None:
            self._poke.set()  # poke(), inline: this runs for every message

    # The idle timer and the save interval share one pending watchdog timer per generation. It
    # is only ever moved earlier (a new timer is pushed); one that fires early re-arms itself,
    # and one that a newer timer replaced finds it is stale and does nothing.

    def _arm(self, when: float) -> None:
        if when < self._timer_at:
            self._timer_at = when
            self.host.watchdog.call_at(when, self)

    def on_timer(self, when: float) -> None:
        """The watchdog timer set for ``when`` fired (see :meth:`Watchdog.call_at`)."""
        if when != self._timer_at or self._stopping or self.ended:
            return  # replaced by an earlier timer, or grace began
        self._timer_at = math.inf
        now = trio.current_time()
        if self._dirty and now >= self._save_at:
            self._dirty = False
            self._save_at = math.inf
            self._last_save = now
            self.host.spawn(self._interval_save, name=f"save:{self.entry.name}")
        if now >= self._idle_at:
            self._idle_at = math.inf  # re-armed when the actor is next idle
            if self._busy == 0 and self.lifecycle.state is S.STARTED:
                # Asked again after another sleep_timeout, in case it is not granted.
                self._idle_at = now + self.definition.options.sleep_timeout
                self.host.request(self.entry, E.SLEEP, "idle", only_if=self._still_idle)
        self._arm(min(self._idle_at, self._save_at))

    async def _interval_save(self) -> None:
        try:
            await self.save_state(reason="interval")
        except ActorError as exc:
            self.host.note_save_error(self.entry, exc)
            if not self._stopping:
                self.mark_dirty()  # try again at the next interval (finalize saves anyway)

    def _still_idle(self) -> bool:
        """An idle sleep granted now is still wanted: idle for a full ``sleep_timeout``."""
        return (
            self._busy == 0
            and self.lifecycle.state is S.STARTED
            and trio.current_time() >= self._idle_since + self.definition.options.sleep_timeout
        )

    def _busy_inc(self) -> None:
        # Nothing to re-arm: a timer that fires while the actor is busy does nothing.
        self._busy += 1

    def _busy_dec(self) -> None:
        self._busy -= 1
        if self._busy == 0 and self.lifecycle.state is S.STARTED and not self._no_sleep:
            self._idle_since = trio.current_time()
            self._idle_at = self._idle_since + self.definition.options.sleep_timeout
            if self._started:
                self._arm(self._idle_at)

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
            if self._started:
                self._arm(self._save_at)

    def wait_until(self, async_fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        """Start background work that finalize waits for (see ``ActorContext.wait_until``)."""
        if self._finalizing or self.ended:
            raise RuntimeError("wait_until() is only available while the generation runs")
        name = f"wait_until:{getattr(async_fn, '__qualname__', repr(async_fn))}"
        self._spawn_tracked(name, async_fn, *args)

    def _spawn_tracked(
        self, name: str, async_fn: Callable[..., Awaitable[Any]], *args: Any
    ) -> None:
        """Run ``async_fn`` in a task of the registry's nursery as work that blocks finalize
        (not idle sleep); reserved now, so a drain check right after can never miss it."""
        work = self.track_work(name, blocks_idle=False)
        self.host.spawn(self._run_tracked, work, name, async_fn, args, name=name)

    async def _run_tracked(
        self,
        work: WorkScope,
        name: str,
        async_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
    ) -> None:
        # Background work is not part of the turn it was started from: were it to call its
        # actor, it takes a turn of its own.
        _turns_held.set(frozenset())
        try:
            with work:
                await async_fn(*args)
        except Exception:
            log.exception("actor %s id=%s: %s raised", self.entry.name, self.actor_id, name)

    def _drained(self) -> bool:
        return not self._work

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold this serial actor's turn for the block: one at a time, in arrival order
        (``trio.Lock`` is fair). Re-entered from the call chain that holds it, it is that
        turn (no wait, no deadlock)."""
        held = _turns_held.get()
        if self in held:
            yield
            return
        lock = self._turn_lock
        if lock is None:
            lock = self._turn_lock = trio.Lock()
        async with lock:
            token = _turns_held.set(held | {self})
            try:
                yield
            finally:
                _turns_held.reset(token)

    async def in_turn(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """``await fn(*args, **kwargs)`` in this serial actor's turn (see :meth:`turn`)."""
        async with self.turn():
            return await fn(*args, **kwargs)

    # ---------------------------------------------------------------- connections

    def live_conns(self) -> list[Conn]:
        """The actor's live connections."""
        return [c for c in self.entry.conns if not c.closing]

    def broadcast(self, event: str, args: list[Any]) -> None:
        """Queue an event frame to every subscribed protocol connection (encoded once)."""
        frame: str | None = None
        entry = self.entry
        for conn in entry.conns:
            if conn.kind is ConnKind.PROTOCOL and event in conn.subscriptions:
                if frame is None:
                    frame = jsoncodec.dumps({"type": "event", "name": event, "args": args})
                if conn.holds_outputs:
                    conn.output(frame)
                else:
                    conn.queue_frame(frame)
        if entry.detached:
            # Kept for their clients' resume, in order with what they got before.
            for detached in entry.detached.values():
                if event in detached.subscriptions:
                    if frame is None:
                        frame = jsoncodec.dumps({"type": "event", "name": event, "args": args})
                    if detached.journal.record(frame) is not None:
                        entry.note_write(detached.conn_id, detached)

    # ---------------------------------------------------------------- state

    async def save_state(self, *, reason: str) -> None:
        """Save the state if it differs from the last save. Raises StateError / StoreError."""
        async with self._store_writes():
            await self._save(reason)

    @contextlib.asynccontextmanager
    async def _store_writes(self) -> AsyncIterator[None]:
        """Hold this generation's store writes (its saves, and writing a new actor's row): one
        at a time. The lock is made on demand and dropped when nobody holds or waits for it:
        an awake idle actor keeps no lock."""
        lock = self._save_lock
        if lock is None:
            lock = self._save_lock = trio.Lock()
        try:
            async with lock:
                yield
        finally:
            self._store_writes_released(lock)

    def _encoded_state(self) -> bytes:
        """The state as it is saved; a state that is not JSON any more (a hook put a set, a
        float('inf') or a cycle in it) is rolled back to the last saveable value and
        StateError raised, so one bad change never makes every later save fail."""
        try:
            data = jsoncodec.dumps_compact(self.state).encode()
        except (TypeError, ValueError, RecursionError) as exc:  # too deep: not JSON either
            self._roll_back_state()
            raise StateError(
                f"state of actor {self.actor_id} is not JSON ({exc}): rolled back to its last "
                "saveable value"
            ) from exc
        self._saveable = data
        return data

    @property
    def needs_final_save(self) -> bool:
        """Its state was loaded and it has not ended: a registry cancelled from outside
        saves it once (see ``Registry.run``)."""
        return self._started and not self.ended and self.state is not None

    def check_state(self, action: str) -> None:
        """After an action: raise StateError (and roll the state back to its last saveable
        value) if the action left the state unsaveable. The error reaches that action's
        caller instead of failing every later save."""
        try:
            self._encoded_state()
        except StateError as exc:
            log.error(
                "actor %s id=%s: action %r left the state unsaveable; rolled back (%s)",
                self.entry.name,
                self.actor_id,
                action,
                exc.__cause__,
            )
            raise StateError(
                f"action {action!r} left the state unsaveable ({exc.__cause__}); "
                "the state was rolled back"
            ) from None

    def _roll_back_state(self) -> None:
        good = self._saveable if self._saveable is not None else self._saved
        if good is not None:
            self.state = jsoncodec.loads(good)

    async def ensure_stored(self) -> None:
        """Make sure the store holds this actor (a new one is only written at the end of its
        first start; something that must refer to its row, an alarm, writes it first)."""
        if not self.host.is_unstored(self.entry):
            return
        async with self._store_writes():
            if self.host.is_unstored(self.entry):
                await self.host.write_unstored(self.entry)

    async def _store_created(self) -> None:
        """Write a new actor, created and initialized, in one write (the first start of an
        actor the store does not hold yet; nothing else can save before it)."""
        data = self._encoded_state()
        started = time.perf_counter()
        try:
            await self.host.store.create_initialized(self.actor_id, self.entry.name, self.key, data)
        except StoreError:
            self.host.note_store_write(None)
            raise
        self.host.note_store_write(time.perf_counter() - started)
        self._saved = data
        self.host.note_stored(self.entry)

    async def _save(self, reason: str) -> None:
        """Save the state if it changed, with the connection records that changed, in one
        write (the caller holds :meth:`_store_writes`). A save that commits releases the
        outputs the gate holds for it."""
        prepared = self.prepare_save()
        if prepared is None:
            return
        store = self.host.store
        item = prepared.item
        started = time.perf_counter()
        try:
            if item.conns:
                await store.save_with_conns(item.actor_id, item.generation, item.state, item.conns)
            else:
                assert item.state is not None
                await store.save(item.actor_id, item.generation, item.state)
        except StoreError:
            self.save_failed(prepared)
            raise
        self.save_done(prepared, time.perf_counter() - started)
        log.debug(
            "actor %s id=%s gen=%d saved (%s)", self.entry.name, self.actor_id, self.number, reason
        )

    def prepare_save(self) -> PreparedSave | None:
        """The first half of a save (the caller holds this generation's store writes): number
        it for the output gate, encode the state, take the connection records to write. None
        when there is nothing to write (the gate is released at once). Raises StateError."""
        gate = self.entry.gate
        number = gate.begin_save() if gate is not None else 0
        data = self._encoded_state()
        taken = self.entry.conn_writes
        self.entry.conn_writes = None
        if data == self._saved and not taken:
            if gate is not None:
                gate.saved(number)
            return None
        state = None if taken and data == self._saved else data
        conns = self._writes(taken) if taken else ConnWrites()
        return PreparedSave(SaveItem(self.actor_id, self.number, state, conns), number, data, taken)

    def save_done(self, prepared: PreparedSave, seconds: float) -> None:
        """The second half of a save that committed: the gate releases what it covers."""
        self.host.note_store_write(seconds)
        self._saved = prepared.data
        gate = self.entry.gate
        if gate is not None:
            gate.saved(prepared.number)

    def save_failed(self, prepared: PreparedSave) -> None:
        """The second half of a save that failed: its connection records are written with
        the next save, unless something newer replaced them meanwhile."""
        self.host.note_store_write(None)
        taken = prepared.taken
        if taken:
            writes = self.entry.conn_writes
            self.entry.conn_writes = taken if writes is None else {**taken, **writes}

    def try_hold_store_writes(self) -> trio.Lock | None:
        """Hold this generation's store writes without waiting (the lock of
        :meth:`_store_writes`), or None if a save holds them now. Release with
        :meth:`release_store_writes` from the same task."""
        lock = self._save_lock
        if lock is None:
            lock = self._save_lock = trio.Lock()
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            return None
        return lock

    def release_store_writes(self, lock: trio.Lock) -> None:
        """Release what :meth:`try_hold_store_writes` held."""
        lock.release()
        self._store_writes_released(lock)

    def _store_writes_released(self, lock: trio.Lock) -> None:
        if self._save_lock is lock and not lock.locked():
            self._save_lock = None
        gate = self.entry.gate
        if gate is not None and gate.waiting and not self.ended:
            # A batched save skipped this generation while another save held its writes.
            self._gated_save_wanted()

    def _writes(self, taken: dict[str, Conn | DetachedConn | None]) -> ConnWrites:
        """The store records of the connections in ``taken``."""
        upserts = []
        deletes = []
        for conn_id, holder in taken.items():
            if holder is None:
                deletes.append(conn_id)
                continue
            journal = holder.journal
            if journal is None:
                continue  # a connection that lost its journal (taken over) writes nothing
            upserts.append(
                encode_record(
                    self.actor_id,
                    conn_id,
                    holder.params,
                    holder.state,
                    tuple(holder.subscriptions),
                    journal,
                    holder.detached_at if isinstance(holder, DetachedConn) else None,
                )
            )
        return ConnWrites(tuple(upserts), tuple(deletes))

    def _gated_save_wanted(self) -> None:
        """The output gate holds outputs: save soon, in the registry's next batch of saves
        (one transaction for every actor that has outputs waiting)."""
        self.host.durable_saves.want(self)

    def hold_outputs(self, gate: OutputGate) -> None:
        """Run the saves ``gate`` asks for while this generation is the actor's."""
        gate.request_save = self._gated_save_wanted
        if gate.waiting:
            self._gated_save_wanted()

    def _load_conns(self, record: ActorRecord) -> None:
        """Take the actor's stored connection records that this process does not hold
        already (after a restart: all of them) as detached connections."""
        entry = self.entry
        live = {conn.id for conn in entry.conns}
        known = entry.detached or {}
        options = self.definition.options
        wall_now, trio_now = time.time(), trio.current_time()
        for stored in record.conns:
            if stored.conn_id in live or stored.conn_id in known:
                continue
            try:
                detached = decode_record(
                    stored, options.max_unacked_outputs, options.resume_timeout, wall_now, trio_now
                )
            except (ValueError, KeyError, TypeError) as exc:
                log.error(
                    "actor %s id=%s: connection record %s is unreadable (%s); dropped",
                    entry.name,
                    self.actor_id,
                    stored.conn_id,
                    exc,
                )
                entry.forget_conn(stored.conn_id)
                continue
            entry.hold_detached(detached)
        if entry.detached:
            self.host.track_detached(entry)

    # ---------------------------------------------------------------- run

    async def run(self) -> bool:
        """Start the generation. Returns True once it is STARTED: it then has no task until
        grace begins and the host runs :meth:`stop`. Returns False when it already ended (the
        start failed, or a sleep or destroy requested meanwhile was carried out here).
        Never raises for user code."""
        try:
            await self._start()
        except ActorError as exc:
            self._start_failed(exc)
            self._cancel_leftovers()
            return False
        self.entry.process(E.LOADED, "started")
        if self.entry.gate is not None:
            self.hold_outputs(self.entry.gate)
        now = self._last_save = trio.current_time()
        if self.lifecycle.state in _GRACE_STATES:
            await self.stop()
            return False
        if self._busy == 0 and not self._no_sleep:
            self._idle_since = now
            self._idle_at = now + self.definition.options.sleep_timeout
        self._arm(min(self._idle_at, self._save_at))
        return True

    async def stop(self) -> None:
        """Grace, then finalize (see the module docstring). Run once grace has begun."""
        try:
            await self._grace()
            destroying = self.lifecycle.state is S.DESTROY_GRACE
            self.entry.process(E.GRACE_ENDED, "grace ended")
            await self._finalize(destroying=destroying)
        finally:
            self._cancel_leftovers()

    def _cancel_leftovers(self) -> None:
        # Work still registered here was already cancelled at the grace deadline (or belongs
        # to a failed start); whatever still unwinds must not outlive the generation's end.
        for work in list(self._work):
            work.cancel()

    def _start_failed(self, exc: ActorError) -> None:
        log.warning(
            "actor %s/%s id=%s gen=%d failed to start: %s",
            self.entry.name,
            quoted(self.key),
            self.actor_id,
            self.number,
            exc,
        )
        # Recorded here; the lifecycle records it (LOAD_FAILED) when the generation has ended
        # (see ending), so the actor is never asleep while a generation still runs.
        self.entry.start_error = exc
        self.entry.failed_wake = self.entry.wakes

    async def _start(self) -> None:
        entry = self.entry
        definition = self.definition
        timeout = definition.options.hook_timeout
        # Store I/O and the user's hooks are bounded separately, each by hook_timeout: a slow
        # store does not eat into the hooks' budget, which create_state, on_create and on_wake
        # share as before.
        # The lookup that made the entry may already have begun this generation in the store
        # (Registry.take_begun, one write on the connect path); otherwise begin one here.
        begun = self.host.take_begun(entry)
        if begun is None:

            def store_too_slow() -> ActorError:
                return ActorStartFailed(
                    f"start of actor {self.actor_id}: the store did not begin a generation "
                    f"within hook_timeout={timeout}s"
                )

            with deadlines.fail_after(timeout, store_too_slow):
                record = await self.host.store.begin_generation(self.actor_id)
        else:
            record = begun
        unstored = begun is not None and self.host.is_unstored(entry)
        self.number = record.generation
        entry.last_generation = record.generation
        if record.conns:
            self._load_conns(record)
        ctx = self.ctx
        hooks_deadline = trio.current_time() + timeout
        in_store = False
        try:
            self.instance = definition.cls()
            with trio.fail_at(hooks_deadline):
                if entry.pending_state is not None:
                    self.state = jsoncodec.loads(entry.pending_state)
                elif record.initialized and record.state is not None:
                    self.state = jsoncodec.loads(record.state)
                    self._saved = record.state
                else:
                    raw = record.input
                    input_value = jsoncodec.loads(raw) if raw is not None else None
                    value = self.instance.create_state(ctx, input_value)
                    if inspect.isawaitable(value):
                        value = await value
                    self.state = value
                if not record.initialized:
                    await self.instance.on_create(ctx)
            if not record.initialized or entry.pending_state is not None:
                in_store = True
                saving_since = trio.current_time()
                with trio.fail_after(timeout):
                    if unstored and self.host.is_unstored(entry):
                        await self._store_created()
                    elif not record.initialized:
                        await self.save_state(reason="created")
                    else:
                        await self.save_state(reason="pending state from a failed save")
                        entry.pending_state = None
                in_store = False
                hooks_deadline += trio.current_time() - saving_since
            with trio.fail_at(hooks_deadline):
                await self.instance.on_wake(ctx)
        except trio.TooSlowError:
            if in_store:
                raise ActorStartFailed(
                    f"start of actor {self.actor_id}: the store did not save its state within "
                    f"hook_timeout={timeout}s"
                ) from None
            raise ActorStartFailed(
                f"start of actor {self.actor_id} exceeded hook_timeout={timeout}s"
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
        if getattr(type(self.instance), hook) is getattr(Actor, hook):
            return  # not overridden: the default does nothing, so no task for it
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
                for work in list(self._work):
                    work.cancel()
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
            # Every close frame first, in one pass with no checkpoint (each leaves from here
            # when its socket is free): clients get theirs before any hook runs, and a reader
            # woken by a peer's answer does not delay the frames of the others.
            for conn in closing:
                self._start_close(conn, close.code, close.reason)
            # Bounded by the closes' deadlines; see actorcore/gcpause.py for why.
            many = len(closing) >= GC_PAUSE_CLOSES and self.host.pause_gc
            with gcpause.paused() if many else contextlib.nullcontext():
                async with trio.open_nursery() as nursery:
                    for conn in closing:
                        nursery.start_soon(self._finish_close, conn, close.code, close.reason)
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
                entry.pending_state = jsoncodec.dumps_compact(self.state).encode()
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

    def _start_close(self, conn: Conn, code: int, reason: str) -> None:
        """Take ``conn`` (one of the actor's connections: the pass that calls this has no
        checkpoint, so none can have left) from the actor and close it."""
        # Whoever removes the connection from the actor runs its disconnect hooks, once. Remove
        # it before closing: the handler then sees that finalize owns them (it would otherwise
        # run them again, waking the actor to do so).
        self.entry.discard_conn(conn)
        self.conn_detached(conn)
        conn.close_nowait(code, reason)

    async def _finish_close(self, conn: Conn, code: int, reason: str) -> None:
        """Wait for a connection :meth:`_start_close` closed, then run its disconnect hooks."""
        options = self.definition.options
        entry = self.entry
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
