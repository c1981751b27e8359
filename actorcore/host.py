"""RegistryHost: the implementation behind :class:`actorcore.Registry`.

It owns every actor's lifecycle: the actor table (:class:`~actorcore.actortable.ActorTable`),
lookups by key and id, admission and holding, calls, lifecycle requests through the authority,
generations, alarms (through :class:`~actorcore.alarms.AlarmTimer`), the drain and the
counters. The registry keeps in memory only actors that are awake, starting, stopping, or
asleep with hibernating connections or waiting work (:class:`~actorcore.generation.ActorEntry`).
An asleep actor is just a row in the store; it is found by key or id on demand and woken by
the first work that needs it.

Every piece of work passes a check point first (``ActorEntry.admitted``, over
:func:`actorcore.lifecycle.admit`): it runs now, is held for the next generation (waking the
actor), or is refused. Held work waits at most ``ready_timeout``.

Users see the :class:`~actorcore.Registry` facade; generations, the alarm timer, the
dispatcher and the testing kit use this class (``host_of(registry)``).
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import math
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Sequence,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio

from . import deadlines, gcpause, jsoncodec
from .actor import Actor, ActorDefinition, definition_of
from .actortable import ActorTable
from .alarms import MAX_RUNNING, PREFETCH, AlarmFailed, AlarmGone, AlarmStatistics, AlarmTimer
from .authority import LifecycleAuthority, LifecycleCommands, LifecycleRequest, LocalAuthority
from .conn import ConnKind
from .context import current_conn
from .durability import DurableSaves
from .errors import (
    ActionNotFound,
    ActionTimeout,
    ActorDestroyed,
    ActorError,
    ActorNotFound,
    ActorOverloaded,
    ActorReadyTimeout,
    ActorStartFailed,
    ActorStopping,
    DefinitionError,
    InternalError,
    RuntimeShutdown,
    StoreError,
)
from .expiry import DetachedExpiry
from .generation import ActorEntry, Generation, WorkScope
from .handle import ActorHandle
from .lifecycle import LifecycleEvent, LifecycleState, WorkKind
from .lookup import ActorLookup
from .options import ActorOptions
from .outputgate import OutputGate
from .ratelimit import CreateRate, TokenBuckets
from .store.base import ActorRecord, AlarmRecord, Store
from .store.memory import MemoryStore
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .conn import Conn
    from .registry import Registry
    from .request import ConnectRequest

__all__ = ["RegistryHost", "RegistryStatistics"]

log = logging.getLogger("actorcore.registry")

S = LifecycleState
E = LifecycleEvent

#: Bound on the last-chance save of a drain that ran out of time.
LAST_SAVE_TIMEOUT = 5.0
#: Bound on deleting expired connection records when the registry starts.
PRUNE_TIMEOUT = 10.0

#: States whose generation holds a loaded state that a drain may save.
_SAVEABLE = frozenset({S.STARTED, S.SLEEP_GRACE, S.SLEEP_FINALIZE})


DELETE_RETRY_FIRST = 0.5
"""Seconds before the first background retry of a failed delete; doubled after each failure."""
DELETE_RETRY_MAX = 30.0


@attrs.frozen
class RegistryStatistics:
    """A snapshot of what the registry holds and has done."""

    actors_by_state: dict[str, int]
    """In-memory actors by lifecycle state value (asleep actors without connections are only
    in the store and not counted here)."""
    running_generations: int
    """Generations between LOADING and the end of their finalize."""
    held: int
    """Calls and connections waiting for a next generation."""
    connections: int
    """Open connections (hibernatable and not)."""
    hibernatable_connections: int
    """Open hibernatable connections."""
    connections_held: int
    """Connections waiting for a generation before they go live."""
    messages_in: int
    """Messages received from clients."""
    messages_out: int
    """Messages sent to clients."""
    closes_by_code: dict[int, int]
    """Close frames sent by the server, by code."""
    calls: int
    """Actions run (in-process calls and protocol frames)."""
    save_errors: int
    """Failed state saves (the actor kept its state in memory)."""
    draining: bool
    """The registry is shutting down."""
    alarms: AlarmStatistics
    """The alarm timer: alarms in memory, running, ran, retried, dropped."""


@attrs.define(eq=False, slots=True)
class _Counters:
    messages_in: int = 0
    messages_out: int = 0
    calls: int = 0
    save_errors: int = 0
    connections_held: int = 0
    closes_by_code: collections.Counter[int] = attrs.field(factory=collections.Counter[int])


class RegistryHost:
    """The implementation behind one :class:`~actorcore.Registry`: its actor table, lookups,
    admission and holding, calls, lifecycle requests, generations, drain and counters.

    Generations (:class:`~actorcore.generation.GenerationHost`), the alarm timer, the
    dispatcher and the testing kit use it directly; users reach it only through the
    ``Registry`` facade (:func:`~actorcore.registry.host_of` gives it to embedders and tests).
    """

    def __init__(
        self,
        registry: Registry,
        actors: Iterable[type[Actor]] = (),
        store: Store | None = None,
        *,
        authority: LifecycleAuthority | None = None,
        authorize: Callable[[ConnectRequest], Awaitable[None]] | None = None,
        create_rate: CreateRate | float | None = CreateRate(),  # noqa: B008 - frozen, immutable
        cancel_save_timeout: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
        max_running_alarms: int = MAX_RUNNING,
        alarm_prefetch: int = PREFETCH,
        pause_gc: bool = False,
    ) -> None:
        self.authorize = authorize
        """The gate every incoming connection passes after routing, before any actor is
        looked up or created: ``async def authorize(request: ConnectRequest) -> None``,
        raising :class:`~actorcore.Forbidden` to refuse (close 1008). None: no gate."""
        if isinstance(create_rate, int | float):
            # A bare number: that many creations per second, and as many at once.
            create_rate = CreateRate(float(create_rate), burst=max(1, math.ceil(create_rate)))
        self._create_budget = TokenBuckets(create_rate) if create_rate is not None else None
        self.registry = registry
        """The facade this is the host of (what handles and ``task_status`` hand out)."""
        self._lookup = ActorLookup(registry)
        self._transition_listeners: list[Callable[[str, LifecycleState, LifecycleState], None]] = []
        self._definitions: dict[str, ActorDefinition] = {}
        for cls in actors:
            definition = definition_of(cls)
            if definition.name in self._definitions:
                raise DefinitionError(f"two actor definitions are named {definition.name!r}")
            self._definitions[definition.name] = definition
        self._store: Store = store if store is not None else MemoryStore()
        self._store_is_default = store is None
        self._authority: LifecycleAuthority = authority or LocalAuthority()
        self._authority_takes_request = _takes_one_request(self._authority)
        self._commands = _Commands(self)
        self._table = ActorTable()
        self._begun: dict[str, tuple[ActorEntry, ActorRecord]] = {}
        """Generations a lookup began in the store for an entry it made (see :meth:`take_begun`)."""
        self._unstored: dict[str, tuple[ActorEntry, bytes | None]] = {}
        """New actors not yet written to the store, with their encoded input: the first
        generation's start writes each one, created, in one write (see :meth:`is_unstored`)."""
        self._retrying_deletes = False
        self.pause_gc = pause_gc
        self._nursery: trio.Nursery | None = None
        self._running_generations = 0
        self._generations_done = trio.Event()
        self._shutdown_requested = trio.Event()
        self._draining = False
        self._stopped = trio.Event()
        self._drain_steps: list[Callable[[], Awaitable[None]]] = []
        self._cancel_save_timeout = cancel_save_timeout
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self.watchdog = Watchdog()
        self.alarms = AlarmTimer(
            self,
            wall_clock=wall_clock,
            prefetch=alarm_prefetch,
            max_running=max_running_alarms,
        )
        self.counters = _Counters()
        """Mutable counters; the dispatcher adds its message and close counts here."""
        self.detached = DetachedExpiry(self)
        """Ends detached (resumable) connections nobody resumed in time."""
        self.durable_saves = DurableSaves(self)
        """Batches the saves that output gates wait for."""
        # ---- metrics hooks (actorcore.http.metrics); None: off, one branch each.
        self.action_observer: Callable[[str, bool, float], None] | None = None
        """Called after every action with (actor name, succeeded, seconds), if set."""
        self.store_write_observer: Callable[[float], None] | None = None
        """Called after every successful state write with its seconds, if set."""
        self.store_failing = False
        """The last state write failed and none has succeeded since (``/readyz``)."""

    # ---------------------------------------------------------------- running

    @property
    def store(self) -> Store:
        """The store actors persist to."""
        return self._store

    def use_store(self, store: Store) -> None:
        """Replace the store before the registry runs (the CLI's ``--store``)."""
        if self._nursery is not None:
            raise RuntimeError("use_store() must be called before the registry runs")
        self._store = store
        self._store_is_default = False

    def use_authority(self, authority: LifecycleAuthority) -> None:
        """Replace the lifecycle authority before the registry runs (an engine runtime
        plugs its own in: :mod:`actorcore.engine.runtime`)."""
        if self._nursery is not None:
            raise RuntimeError("use_authority() must be called before the registry runs")
        self._authority = authority
        self._authority_takes_request = _takes_one_request(authority)

    @property
    def store_is_default(self) -> bool:
        """True when no store was chosen (the in-memory default is in use)."""
        return self._store_is_default

    @property
    def definitions(self) -> dict[str, ActorDefinition]:
        """Registered definitions by route name."""
        return dict(self._definitions)

    @property
    def running(self) -> bool:
        """True between the start of :meth:`run` and its end."""
        return self._nursery is not None and not self._stopped.is_set()

    def add_drain_step(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` first when the registry drains, before actors are put to sleep (the
        dispatcher closes every connection with 1012 here). Each step must bound itself."""
        self._drain_steps.append(step)

    async def wait_shutdown_requested(self) -> None:
        """Return once shutdown was requested."""
        await self._shutdown_requested.wait()

    async def wait_stopped(self) -> None:
        """Return once the registry has drained and stopped."""
        await self._stopped.wait()

    @property
    def draining(self) -> bool:
        """True once shutdown began: new work is refused with ``runtime.shutdown``."""
        return self._draining

    async def run(
        self, *, task_status: trio.TaskStatus[Registry] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`shutdown`; then drain and return.

        Cancelled from outside instead, it still saves the state of every awake actor once
        (no hooks, no grace), shielded and bounded by ``cancel_save_timeout``, before it
        returns; see ``docs/reliability.md`` for what each way of stopping guarantees."""
        if self._nursery is not None or self._stopped.is_set():
            raise RuntimeError("a Registry runs once")
        async with trio.open_nursery() as store_nursery:
            # The store runs in a shielded scope of its own: a cancel of run() must not stop
            # its writer before the final saves below are written. Cancelled by hand last.
            store_scope = trio.CancelScope(shield=True)
            await store_nursery.start(self._run_store, store_scope)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self.watchdog.run, name="actorcore watchdog")
                    attach = getattr(self._authority, "attach", None)
                    if attach is not None:
                        attach(self._commands)
                    self.alarms.start()
                    nursery.start_soon(self.alarms.run, name="actorcore alarms")
                    await self._prune_conns()
                    task_status.started(self.registry)
                    try:
                        await self._shutdown_requested.wait()
                        # See actorcore/gcpause.py: opt-in, bounded by the drain's own budget.
                        with gcpause.paused() if self.pause_gc else contextlib.nullcontext():
                            await self._drain()
                    finally:
                        # Also when cancelled from outside: a generation that ends now must not
                        # wake another one (they would be cancelled and re-woken forever).
                        self._draining = True
                    nursery.cancel_scope.cancel()
            finally:
                self._draining = True
                with trio.CancelScope(shield=True), trio.move_on_after(self._cancel_save_timeout):
                    await self._save_awake_on_cancel()
                self._abandon_generations()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._store.aclose()
                store_scope.cancel()
                store_nursery.cancel_scope.cancel()
                self._stopped.set()

    async def _prune_conns(self) -> None:
        """Delete the connection records no definition could still resume (their actors
        never woke again to end them). Bounded; a failure is logged, not raised."""
        if not self._store.keeps_conns or not self._definitions:
            return
        longest = max(d.options.resume_timeout for d in self._definitions.values())
        try:
            with trio.fail_after(PRUNE_TIMEOUT):
                pruned = await self._store.prune_conns(time.time() - longest)
        except (StoreError, trio.TooSlowError) as exc:
            log.warning("could not prune expired connection records: %r", exc)
            return
        if pruned:
            log.info("pruned %d expired connection records", pruned)

    async def _run_store(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        with scope:
            run_store = getattr(self._store, "run", None)
            if run_store is not None:
                await run_store(task_status=task_status)
            else:
                await self._store.open()
                task_status.started()

    async def _save_awake_on_cancel(self) -> None:
        """run() was cancelled before a drain finished: save every awake actor's state once,
        concurrently (no hooks). Errors are logged; nothing here raises."""
        awake = [
            (entry, gen)
            for entry in self._table.entries()
            if (gen := entry.generation) is not None and gen.needs_final_save
        ]
        if not awake:
            return
        log.warning("cancelled: saving the state of %d awake actors once", len(awake))

        async def save(entry: ActorEntry, gen: Generation) -> None:
            try:
                await gen.save_state(reason="cancelled")
            except ActorError as exc:
                self.note_save_error(entry, exc)

        async with trio.open_nursery() as nursery:
            for entry, gen in awake:
                nursery.start_soon(save, entry, gen)

    async def enter(self) -> Registry:
        """``async with registry``: run the registry until :meth:`exit` (see :meth:`serving`)."""
        stack = self._exit_stack = contextlib.AsyncExitStack()
        return await stack.enter_async_context(self.serving())

    async def exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """The end of ``async with registry``: drain and stop."""
        stack, self._exit_stack = self._exit_stack, None
        assert stack is not None
        # Not shielded here: serving() shields the registry's nursery itself, bounded by the
        # drain budget.
        await stack.__aexit__(exc_type, exc, tb)  # noqa: ASYNC102

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Registry]:
        """Run the registry for the block (``async with registry``); drain when it ends."""
        error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield self.registry
            except BaseException as exc:  # noqa: ASYNC103 - re-raised below, unwrapped
                error = exc
            finally:
                self._shutdown_requested.set()
                # Drain even when the block was cancelled (Ctrl-C): shield the nursery that
                # runs the registry, bounded by the drain budget.
                scope = nursery.cancel_scope
                scope.shield = True
                scope.deadline = min(
                    scope.deadline, trio.current_time() + self._drain_budget() + 10
                )
        if error is not None:
            raise error

    def request_shutdown(self) -> None:
        """Begin draining without waiting (see :meth:`shutdown`)."""
        self._shutdown_requested.set()

    async def shutdown(self) -> None:
        """Drain and stop: every awake actor sleeps with its state saved (bounded by its grace
        period); new work is refused with ``runtime.shutdown``. Returns when stopped."""
        self._shutdown_requested.set()
        with trio.move_on_after(self._drain_budget() + 10):
            await self._stopped.wait()

    def _drain_budget(self) -> float:
        budget = 0.0
        for d in self._definitions.values():
            o = d.options
            budget = max(budget, o.hook_timeout + o.sleep_grace_period + 2 * o.close_timeout + 1)
        return budget or 1.0

    async def _drain(self) -> None:
        self._draining = True
        self.alarms.stop()
        async with trio.open_nursery() as nursery:
            # Save what is awake now, while the connections close: a drain that runs out of
            # time later still finds every state persisted (finalize saves again if it changed).
            nursery.start_soon(self._save_awake, "drain")
            for step in self._drain_steps:
                try:
                    await step()
                except Exception:
                    log.exception("drain step %r failed", step)
            # Not after that save: the sleeps' grace overlaps it (their final saves wait for it
            # on each generation's save lock and find the state already saved).
            for entry in self._table.entries():
                if entry.lifecycle.state in (S.LOADING, S.STARTED):
                    self.request(entry, E.SLEEP, "drain")
        with trio.move_on_after(self._drain_budget()) as scope:
            while self._running_generations:
                self._generations_done = trio.Event()
                await self._generations_done.wait()
            # State whose final save failed is only in memory: persist it now (fenced by the
            # generation it belongs to) or it is lost with the process.
            async with trio.open_nursery() as nursery:
                for entry in self._table.entries():
                    if entry.pending_state is not None and entry.generation is None:
                        nursery.start_soon(self._save_pending, entry)
                for actor_id, (generation, _) in list(self._table.pending_deletes.items()):
                    nursery.start_soon(self._delete_pending, actor_id, generation)
        if scope.cancelled_caught:
            log.error(
                "drain: %d generations still running after %.1fs; saving their state and "
                "cancelling them",
                self._running_generations,
                self._drain_budget(),
            )
            with trio.move_on_after(LAST_SAVE_TIMEOUT):
                await self._save_awake("drain deadline")

    async def _save_awake(self, reason: str) -> None:
        """Save the state of every running generation that has one, concurrently (the store
        group-commits them)."""
        async with trio.open_nursery() as nursery:
            for entry in self._table.entries():
                gen = entry.generation
                if gen is not None and entry.lifecycle.state in _SAVEABLE:
                    nursery.start_soon(self._save_one, entry, gen, reason)

    async def _save_one(self, entry: ActorEntry, gen: Generation, reason: str) -> None:
        try:
            await gen.save_state(reason=reason)
        except ActorError as exc:
            self.note_save_error(entry, exc)

    async def _delete_pending(self, actor_id: str, generation: int) -> bool:
        """Retry one failed delete; True once the row is gone."""
        try:
            await self._finish_delete(actor_id, generation)
        except ActorError as exc:
            log.error("actor id=%s: destroyed, but its delete failed again: %s", actor_id, exc)
            if actor_id in self._table.pending_deletes:
                self._table.pending_deletes[actor_id] = (generation, exc)
            return False
        return True

    async def _retry_deletes(self) -> None:
        """Retry failed deletes in the background, with backoff, until none is left or the
        drain takes over: a destroyed actor's row must not outlive a store that recovered."""
        delay = DELETE_RETRY_FIRST
        try:
            while self._table.pending_deletes and not self._draining:
                await trio.sleep(delay)
                for actor_id, (generation, _) in list(self._table.pending_deletes.items()):
                    if not await self._delete_pending(actor_id, generation):
                        break  # the store still fails: back off before the next one
                delay = min(delay * 2, DELETE_RETRY_MAX)
        finally:
            self._retrying_deletes = False

    async def _save_pending(self, entry: ActorEntry) -> None:
        assert entry.pending_state is not None
        try:
            await self._store.save(entry.actor_id, entry.last_generation, entry.pending_state)
        except ActorError as exc:
            self.note_save_error(entry, exc)
        else:
            entry.pending_state = None

    # ---------------------------------------------------------------- lookup

    def watch_transitions(
        self, listener: Callable[[str, LifecycleState, LifecycleState], None]
    ) -> Callable[[], None]:
        """Call ``listener(actor_id, old_state, new_state)`` at every lifecycle transition,
        synchronously and in order, until the returned function is called (tests, metrics;
        see :func:`actorcore.testing.record_transitions`). A listener must not raise."""
        self._transition_listeners.append(listener)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._transition_listeners.remove(listener)

        return stop

    def _transitioned(self, entry: ActorEntry, old: LifecycleState, new: LifecycleState) -> None:
        for listener in self._transition_listeners:
            listener(entry.actor_id, old, new)

    @property
    def actors(self) -> ActorLookup:
        """This registry's lookup of actors, as actors see it (``ctx.actors``)."""
        return self._lookup

    def definition(self, name: str) -> ActorDefinition:
        """The definition named ``name``; :class:`ActorNotFound` if there is none."""
        try:
            return self._definitions[name]
        except KeyError:
            raise ActorNotFound(f"no actor definition named {name!r}") from None

    async def get_or_create(self, name: str, key: str, input: Any = None) -> ActorHandle:
        """The actor ``name``/``key``, created (with ``input``) if it does not exist, and
        started. Raises ActorStartFailed, ActorDestroyed (while that actor is being
        destroyed), ActorReadyTimeout."""
        entry = await self.find_entry_by_key(name, key, create=True, input=input)
        await self.admit_entry(entry, WorkKind.CALL)
        return self._handle(entry)

    async def get(self, name: str, key: str) -> ActorHandle:
        """The existing actor ``name``/``key`` (not woken); :class:`ActorNotFound` if none."""
        entry = await self.find_entry_by_key(name, key, create=False, input=None)
        self._release(entry)
        return self._handle(entry)

    async def get_by_id(self, actor_id: str) -> ActorHandle:
        """The existing actor with this id (not woken); :class:`ActorNotFound` if none."""
        if self._table.is_tombstoned(actor_id):
            raise ActorNotFound(f"actor {actor_id} was destroyed")
        entry = await self.find_entry(actor_id)
        self._release(entry)
        return self._handle(entry)

    def lifecycle(self, actor_id: str) -> LifecycleState | None:
        """The actor's current lifecycle state, DESTROYED for a recently destroyed one, or None
        for an unknown id."""
        entry = self._table.get(actor_id)
        if entry is not None:
            return entry.lifecycle.state
        if self._table.is_tombstoned(actor_id):
            return S.DESTROYED
        if self._store.exists_nowait(actor_id):
            return S.ASLEEP
        return None

    def _handle(self, entry: ActorEntry) -> ActorHandle:
        return ActorHandle(self.registry, entry.actor_id, entry.name, entry.key)

    def _require_running(self) -> None:
        if self._stopped.is_set():
            raise RuntimeShutdown("the registry has stopped")
        if self._nursery is None:
            raise RuntimeError(
                "the registry is not running: use `async with registry` or "
                "`await nursery.start(registry.run)`"
            )

    async def find_entry(self, actor_id: str) -> ActorEntry:
        """The in-memory entry of an existing actor, loading it (asleep) from the store if
        needed. Raises ActorNotFound, or ActorDestroyed for a recently destroyed id."""
        self._require_running()
        entry = self._table.get(actor_id)
        if entry is not None:
            return entry
        if self._table.is_tombstoned(actor_id):
            raise ActorDestroyed(f"actor {actor_id} was destroyed")
        record = await self._store.get_by_id(actor_id)
        entry = self._table.get(actor_id)  # it may have been loaded while we awaited
        if entry is not None:
            return entry
        if record is None:
            raise ActorNotFound(f"no actor with id {actor_id!r}")
        definition = self._definitions.get(record.name)
        if definition is None:
            raise ActorNotFound(f"actor {actor_id} is a {record.name!r}, which is not registered")
        lock = self._table.existing_key_lock(record.name, record.key)
        if lock is not None:
            # A lookup by key of this very actor is under way, and it may begin a generation in
            # the store: wait for it and use its entry. An entry made here meanwhile could start
            # a generation that the lookup's later begin would fence out.
            try:
                async with lock:
                    entry = self._table.get(actor_id)
                    if entry is not None:
                        return entry
            finally:
                self._table.drop_key_lock(record.name, record.key, lock)
        entry = self._add_entry(record.actor_id, record.key, definition)
        entry.last_generation = record.generation
        return entry

    async def find_entry_by_key(
        self, name: str, key: str, *, create: bool, input: Any, client: str | None = None
    ) -> ActorEntry:
        """Like :meth:`find_entry` by name and key; with ``create`` a missing actor is created
        (with ``input``) in the store. Concurrent calls for one key create one actor.

        With ``create`` (the connect path: the caller wakes the actor next), an actor that is
        not in memory costs one store write, :meth:`Store.begin_or_create`, which also begins
        its next generation; the generation's start takes that record (:meth:`take_begun`)
        instead of beginning one itself. A creation for ``client`` (an address) takes a token
        of its creation budget first: ActorOverloaded, and nothing created, if it has none.
        """
        self._require_running()
        if create and self._draining:
            raise RuntimeShutdown("the registry is shutting down")
        definition = self.definition(name)
        if not isinstance(key, str):
            raise TypeError(f"actor keys are str, not {type(key).__name__}")
        entry = self._table.get_by_key(name, key)
        if entry is not None:
            return entry
        lock = self._table.key_lock(name, key)
        try:
            # A free lock is taken without a scheduling round (the store call checkpoints).
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                entry = self._table.get_by_key(name, key)
                if entry is not None:
                    return entry
                if create:
                    if client is not None and self._create_budget is not None:
                        await self._charge_creation(name, key, client)
                    return await self._begin_by_key(definition, key, input)
                record = await self._store.get_by_key(name, key)
                if record is not None and self._table.is_tombstoned(record.actor_id):
                    await self._finish_delete(record.actor_id, record.generation)
                    record = None
                if record is None:
                    raise ActorNotFound(f"no {name!r} actor with key {key!r}")
                return self._adopt(record, definition, begun=False)
            finally:
                lock.release()
        finally:
            self._table.drop_key_lock(name, key, lock)

    async def _charge_creation(self, name: str, key: str, client: str) -> None:
        """Take a creation token for ``client`` if ``name``/``key`` does not exist yet."""
        assert self._create_budget is not None
        exists = self._store.key_exists_nowait(name, key)
        if exists is None:  # a store that cannot tell synchronously
            exists = await self._store.get_by_key(name, key) is not None
        if not exists and not self._create_budget.take(client, trio.current_time()):
            raise ActorOverloaded("too many new actors from this client; retry later")

    async def _begin_by_key(self, definition: ActorDefinition, key: str, input: Any) -> ActorEntry:
        """Find or create the actor ``definition.name``/``key`` in the store and begin its next
        generation there, in one write. Called under the key's lock."""
        name = definition.name
        while True:
            if self._draining:
                raise RuntimeShutdown("the registry is shutting down")
            # (No await inside the except blocks: a cancel there would drop the error.)
            bad_input: TypeError | None = None
            encoded: bytes | None = None
            try:
                encoded = _encode_input(input)
            except TypeError as exc:
                bad_input = exc
            if self._store.key_exists_nowait(name, key) is False:
                # A new actor: nothing is written yet. Its first start runs the creation
                # hooks and then writes the actor, created and initialized, in one write
                # (Store.create_initialized); begin_or_create and a first save would be two.
                if bad_input is not None:
                    raise bad_input
                entry = self._add_entry(uuid.uuid4().hex, key, definition)
                self._unstored[entry.actor_id] = (entry, encoded)
                return entry
            if bad_input is not None and await self._store.get_by_key(name, key) is None:
                raise bad_input  # only a new actor needs its input
            failed: StoreError | None = None
            try:
                record = await self._store.begin_or_create(name, key, uuid.uuid4().hex, encoded)
            except StoreError as exc:
                failed = exc
            if failed is not None:
                # Tell a failed create from a failed wake: an existing actor is loaded as is
                # and its start retries the begin (a wake failure is a failed start, as for an
                # actor found in memory); a create failure is the lookup's error.
                existing = await self._store.get_by_key(name, key)
                if existing is None or self._table.is_tombstoned(existing.actor_id):
                    raise failed
                return self._adopt(existing, definition, begun=False)
            if self._table.is_tombstoned(record.actor_id):
                await self._finish_delete(record.actor_id, record.generation)
                continue  # and create a fresh actor for the key
            return self._adopt(record, definition, begun=True)

    async def _finish_delete(self, actor_id: str, generation: int) -> None:
        """Destroyed, but the store failed to delete it: finish the delete (fenced by its last
        generation) rather than bring the destroyed actor back. Raises the store's error."""
        with contextlib.suppress(ActorNotFound):  # another retry got there first
            await self._store.delete(actor_id, generation)
        self._table.pending_deletes.pop(actor_id, None)

    def _adopt(
        self, record: ActorRecord, definition: ActorDefinition, *, begun: bool
    ) -> ActorEntry:
        """The entry for ``record`` (an entry loaded meanwhile wins; a generation ``record``
        began is then left unused, which only skips its number)."""
        entry = self._table.get(record.actor_id)
        if entry is None:
            entry = self._add_entry(record.actor_id, record.key, definition)
            # The generation it had (logs, and the authority's requests, name it; a record a
            # lookup began is one further on already).
            entry.last_generation = record.generation - 1 if begun else record.generation
            if begun:
                self._begun[record.actor_id] = (entry, record)
        return entry

    def take_begun(self, entry: ActorEntry) -> ActorRecord | None:
        """The store record of the generation that ``entry``'s lookup began, once; None when
        there is none (the generation's start then calls :meth:`Store.begin_generation`).
        For an actor not yet in the store (:meth:`is_unstored`): the record its first
        generation starts from, every time until the store has it."""
        if self.is_unstored(entry):
            input = self._unstored[entry.actor_id][1]
            return ActorRecord(entry.actor_id, entry.name, entry.key, 1, False, None, input)
        begun = self._begun.pop(entry.actor_id, None)
        if begun is None or begun[0] is not entry:
            return None
        return begun[1]

    def is_unstored(self, entry: ActorEntry) -> bool:
        """Whether ``entry`` is a new actor the store does not hold yet: its start writes it
        with :meth:`Store.create_initialized` (and then calls :meth:`note_stored`)."""
        unstored = self._unstored.get(entry.actor_id)
        return unstored is not None and unstored[0] is entry

    def note_stored(self, entry: ActorEntry) -> None:
        """The store now holds ``entry``'s actor."""
        if self.is_unstored(entry):
            del self._unstored[entry.actor_id]

    async def write_unstored(self, entry: ActorEntry) -> None:
        """Write ``entry``'s new actor now, created, not initialized, at generation 1 (its
        start then saves its first state into that row)."""
        unstored = self._unstored.get(entry.actor_id)
        if unstored is None or unstored[0] is not entry:
            return
        record = await self._store.begin_or_create(
            entry.name, entry.key, entry.actor_id, unstored[1]
        )
        if record.actor_id != entry.actor_id or record.generation != 1:
            raise StoreError(
                f"actor {entry.name}/{entry.key} was created in the store by someone else"
            )
        self.note_stored(entry)

    def _add_entry(self, actor_id: str, key: str, definition: ActorDefinition) -> ActorEntry:
        entry = ActorEntry(
            actor_id=actor_id, key=key, definition=definition, observer=self._transitioned
        )
        self._table.add(entry)
        return entry

    def _release(self, entry: ActorEntry) -> None:
        """Drop an entry a lookup loaded, if nothing needs it: an asleep actor costs only its
        row in the store."""
        if (
            entry.lifecycle.state is S.ASLEEP
            and not entry.held
            and not entry.conns
            and not entry.detached
            and not entry.conn_writes
            and entry.pending_state is None
            and not entry.lifecycle.destroy_requested
            # A new actor not written yet stays for its first start (a failed one drops it:
            # it never existed).
            and not (self.is_unstored(entry) and entry.wakes == 0)
        ):
            self._retire(entry)

    def _retire(self, entry: ActorEntry) -> None:
        entry.retired = True
        begun = self._begun.get(entry.actor_id)
        if begun is not None and begun[0] is entry:
            del self._begun[entry.actor_id]
        self.note_stored(entry)  # a new actor retired unwritten never existed
        self._table.remove(entry)

    # ---------------------------------------------------------------- admission

    async def admit(self, actor_id: str, kind: WorkKind) -> Generation:
        """Admit one unit of work for ``actor_id`` (waking or holding as the lifecycle says)
        and return the generation it must run in. The caller must enter
        ``generation.track_work`` before its next checkpoint."""
        entry = await self.find_entry(actor_id)
        return await self.admit_entry(entry, kind)

    async def admit_entry(self, entry: ActorEntry, kind: WorkKind) -> Generation:
        """Check point for ``kind`` on ``entry``: return the generation to run in now, or hold
        for the next one (waking the actor; bounded by ``ready_timeout``), or raise."""
        gen = entry.admitted(kind)
        if gen is not None:
            return gen
        return await self._hold(entry, kind)

    async def _hold(self, entry: ActorEntry, kind: WorkKind) -> Generation:
        options = entry.definition.options
        if self._draining:
            raise RuntimeShutdown("the registry is shutting down")
        if entry.held >= options.max_held_work:
            raise ActorOverloaded(f"actor {entry.actor_id} has {entry.held} requests waiting")
        entry.held += 1

        def not_ready() -> ActorError:
            return ActorReadyTimeout(
                f"actor {entry.actor_id} was not ready within {options.ready_timeout}s "
                f"(state {entry.lifecycle.state.value})"
            )

        try:
            with deadlines.fail_after(options.ready_timeout, not_ready):
                while True:
                    gen = entry.admitted(kind)
                    if gen is not None:
                        return gen
                    if entry.lifecycle.state is S.ASLEEP:
                        if self._draining:
                            raise RuntimeShutdown("the registry is shutting down")
                        self._wake(entry, "work arrived")
                    attempt = entry.wakes
                    await entry.changed.wait()
                    _raise_if_start_failed(entry, attempt)
        finally:
            entry.held -= 1
            if not entry.held:
                # The last waiter of a failed start (or of a refused one) leaves: an entry
                # nothing needs goes, or failed creates of distinct keys would pile up.
                self._release(entry)

    # ---------------------------------------------------------------- calls

    async def call(self, actor_id: str, action: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``action`` on the actor: admitted by the lifecycle (woken or held as needed),
        bounded by ``action_timeout``. The action's own exception reaches the caller
        unchanged; ActorStopping if the generation's grace deadline cut it off."""
        entry = await self.find_entry(actor_id)
        return await self.call_entry(entry, action, args, kwargs)

    async def call_entry(
        self,
        entry: ActorEntry,
        action: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        conn: Conn | None = None,
    ) -> Any:
        """Like :meth:`call` for an entry already looked up (the dispatcher's path)."""
        fn = entry.definition.actions.get(action)
        if fn is None:
            raise ActionNotFound(f"actor {entry.name!r} has no action {action!r}")
        gen = await self.admit_entry(entry, WorkKind.CALL)
        work = gen.track_work(f"action:{action}", timeout=gen.definition.options.action_timeout)
        return await self.invoke(gen, work, action, fn, args, kwargs, conn)

    async def invoke(
        self,
        gen: Generation,
        work: WorkScope,
        action: str,
        fn: Callable[..., Awaitable[Any]],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        conn: Conn | None,
    ) -> Any:
        """Run an admitted action inside its reserved ``work`` (made with
        ``timeout=action_timeout``).

        The one place actions run, for in-process calls and protocol connections alike.
        """
        self.counters.calls += 1
        observer = self.action_observer
        started = time.perf_counter() if observer is not None else 0.0
        ok = False
        token = current_conn.set(conn)
        try:
            with work:
                if gen.serial:
                    result = await gen.in_turn(fn, gen.instance, gen.ctx, *args, **kwargs)
                else:
                    result = await fn(gen.instance, gen.ctx, *args, **kwargs)
                gen.check_state(action)
                ok = True
                return result
        finally:
            current_conn.reset(token)
            if observer is not None:
                observer(gen.entry.name, ok, time.perf_counter() - started)
        # Only reached when the scope was cancelled: by its timeout or the grace deadline.
        if work.timed_out:
            raise ActionTimeout(f"action {action!r} exceeded its action_timeout")
        raise ActorStopping(
            f"action {action!r} was cancelled at the end of generation {gen.number}"
        )

    def invoke_inline(
        self, gen: Generation, action: str, args: Sequence[Any], kwargs: dict[str, Any], conn: Conn
    ) -> Any:
        """Run the admitted ``action``, whose body never suspends
        (:attr:`ActorDefinition.inline_actions`), to completion in the caller's task: no task,
        no cancel scope, no watchdog deadline (none could reach it before it returns)."""
        self.counters.calls += 1
        fn = gen.definition.actions[action]
        observer = self.action_observer
        started = time.perf_counter() if observer is not None else 0.0
        ok = False
        token = current_conn.set(conn)
        try:
            coro = cast("Coroutine[Any, Any, Any]", fn(gen.instance, gen.ctx, *args, **kwargs))
            try:
                coro.send(None)
            except StopIteration as done:
                gen.check_state(action)
                ok = True
                return done.value
            coro.close()  # never_suspends() said otherwise: a bug, not the user's
            raise InternalError(f"action {action!r} suspended although it has no await")
        finally:
            current_conn.reset(token)
            if observer is not None:
                observer(gen.entry.name, ok, time.perf_counter() - started)

    async def run_alarm(self, alarm: AlarmRecord) -> ActorOptions | None:
        """Run a due alarm's action on its actor (an AlarmHost method): woken if asleep, held
        past a generation that is finishing (:attr:`WorkKind.ALARM`), bounded by
        ``action_timeout``. None if it was cancelled before it began. Raises AlarmGone,
        AlarmFailed, or RuntimeShutdown (it is left in the store for the next run)."""
        try:
            entry = await self.find_entry(alarm.actor_id)
        except ActorNotFound as exc:  # a destroyed one too
            raise AlarmGone(exc.message) from None
        except StoreError as exc:  # the lookup's read failed: retried like a failed run
            raise AlarmFailed(exc, ActorOptions()) from exc
        definition = entry.definition
        fn = definition.actions.get(alarm.action)
        if fn is None:
            raise AlarmGone(f"actor {entry.name!r} has no action {alarm.action!r} any more")
        try:
            args = jsoncodec.loads(alarm.args)
        except ValueError as exc:
            raise AlarmGone(f"its arguments are not JSON: {exc}") from None
        try:
            gen = await self.admit_entry(entry, WorkKind.ALARM)
        except ActorDestroyed as exc:
            raise AlarmGone(exc.message) from None
        except RuntimeShutdown:
            raise
        except ActorError as exc:  # the actor could not start, or is overloaded
            raise AlarmFailed(exc, definition.options) from exc
        if not self.alarms.begin(alarm.alarm_id):
            return None
        work = gen.track_work(f"alarm:{alarm.action}", timeout=definition.options.action_timeout)
        try:
            await self.invoke(gen, work, alarm.action, fn, args, {}, None)
        except Exception as exc:
            raise AlarmFailed(exc, definition.options) from exc
        return definition.options

    # ---------------------------------------------------------------- sleep / destroy

    def request(
        self,
        entry: ActorEntry,
        event: LifecycleEvent,
        reason: str,
        *,
        only_if: Callable[[], bool] | None = None,
    ) -> None:
        """Ask the authority for ``event`` on ``entry`` (a GenerationHost method). The grant
        is re-checked when it arrives: a sleep for a generation that has ended, or one whose
        ``only_if()`` is now false (an idle sleep after new activity), is dropped."""
        generation = entry.last_generation

        def apply() -> None:
            if event is E.SLEEP and (
                entry.last_generation != generation or (only_if is not None and not only_if())
            ):
                log.debug(
                    "actor %s id=%s: sleep (%s) granted too late; dropped",
                    entry.name,
                    entry.actor_id,
                    reason,
                )
                return
            self._apply_request(entry, event, reason)

        self._ask_authority(self._lifecycle_request(entry, event, reason), apply)

    def _ask_authority(self, request: LifecycleRequest, apply: Callable[[], None]) -> None:
        if self._authority_takes_request:
            self._authority.request(request, apply)
        else:  # an authority written for the first seam: request(actor_id, generation, ...)
            legacy: Any = self._authority
            legacy.request(request.actor_id, request.generation, request.event, apply)

    def _lifecycle_request(
        self, entry: ActorEntry, event: LifecycleEvent, reason: str
    ) -> LifecycleRequest:
        return LifecycleRequest(
            entry.actor_id, entry.name, entry.key, entry.last_generation, event, reason
        )

    def _apply_request(self, entry: ActorEntry, event: LifecycleEvent, reason: str) -> None:
        """Carry out a granted (or commanded) sleep or destroy."""
        entry.process(event, reason)
        if (
            event is E.DESTROY
            and entry.lifecycle.state is S.ASLEEP
            and not entry.retired
            and not self._draining
        ):
            self._wake(entry, "destroy requested while asleep")

    @property
    def commands(self) -> LifecycleCommands:
        """What the authority may command (handed to its ``attach`` when the registry
        starts; usable directly by an embedder too)."""
        return self._commands

    async def sleep(self, actor_id: str) -> None:
        """Request sleep and return when the generation running now has finished."""
        entry = await self.find_entry(actor_id)
        gen = entry.generation
        if gen is None:
            self._release(entry)
            return
        self.request(entry, E.SLEEP, "registry.sleep")
        with _bounded(self._stop_budget(entry), f"sleep of actor {actor_id}"):
            await gen.finished.wait()

    async def destroy(self, actor_id: str) -> None:
        """Destroy the actor (waking it so ``on_destroy`` runs) and return once it is gone.

        Raises :class:`StoreError` if the actor is destroyed but the store failed to delete
        its row: the delete is retried (in the background with backoff, on the next lookup of
        its key, and by the drain), but until one succeeds a process restart would find the
        actor again."""
        entry = await self.find_entry(actor_id)
        if self._draining:
            raise RuntimeShutdown("the registry is shutting down")
        self.request(entry, E.DESTROY, "registry.destroy")
        budget = self._stop_budget(entry) + entry.definition.options.ready_timeout
        with _bounded(budget, f"destroy of actor {actor_id}"):
            while entry.lifecycle.state is not S.DESTROYED:
                attempt = entry.wakes
                await entry.changed.wait()
                _raise_if_start_failed(entry, attempt)
                if entry.lifecycle.state is S.ASLEEP and self.draining:
                    # Asked while it finalized a sleep: the drain will not wake it again.
                    raise RuntimeShutdown("the registry is shutting down")
        pending = self._table.pending_deletes.get(actor_id)
        if pending is not None:
            raise StoreError(
                f"actor {actor_id} is destroyed, but the store failed to delete it "
                f"({pending[1].message}); the delete is retried, and until it succeeds a "
                "restart would bring the actor back"
            )

    def _stop_budget(self, entry: ActorEntry) -> float:
        o = entry.definition.options
        return o.hook_timeout + 2 * o.sleep_grace_period + 2 * o.close_timeout + 5

    # ---------------------------------------------------------------- generations

    def _wake(self, entry: ActorEntry, reason: str) -> None:
        self._ask_authority(
            self._lifecycle_request(entry, E.WAKE, reason),
            lambda: self._apply_wake(entry, reason),
        )

    def _apply_wake(self, entry: ActorEntry, reason: str) -> None:
        assert self._nursery is not None, "the registry is not running"
        if entry.lifecycle.state is not S.ASLEEP:
            return  # granted late: another wake already started a generation
        entry.wakes += 1
        entry.process(E.WAKE, reason)
        gen = Generation(entry=entry, host=self)
        entry.generation = gen
        self._running_generations += 1
        self._nursery.start_soon(self._run_generation, entry, gen, name=f"actor:{entry.name}")

    async def _run_generation(self, entry: ActorEntry, gen: Generation) -> None:
        await self._drive_generation(entry, gen, gen.run)

    async def _stop_generation(self, entry: ActorEntry, gen: Generation) -> None:
        await self._drive_generation(entry, gen, gen.stop)

    async def _drive_generation(
        self, entry: ActorEntry, gen: Generation, step: Callable[[], Awaitable[bool | None]]
    ) -> None:
        """Run one task's part of a generation (its start, or its grace and finalize). The
        generation has ended afterwards unless the start left it STARTED (returned True)."""
        parked = cut = False
        try:
            parked = bool(await step())
        except Exception:
            # A bug in actorcore itself: contain it to this actor and keep serving others.
            log.exception("actor %s id=%s: generation crashed", entry.name, entry.actor_id)
        except BaseException:
            cut = True  # cancelled
            raise
        finally:
            if not parked:
                self._generation_finished(entry, gen, cut=cut)

    def spawn(self, async_fn: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        """Run ``async_fn(*args)`` in the registry's nursery (a GenerationHost method: the
        background work of generations, which have no nursery of their own)."""
        assert self._nursery is not None, "the registry is not running"
        self._nursery.start_soon(async_fn, *args, name=name)

    def output_gate(self, entry: ActorEntry, gen: Generation) -> OutputGate | None:
        """The actor's output gate, made on first use, if its outputs wait for durable state
        (``durable_outputs`` on a durable store); None otherwise."""
        if not (entry.definition.options.durable_outputs and self.store.durable):
            return None
        gate = entry.gate
        if gate is None:
            gate = entry.gate = OutputGate()
            gen.hold_outputs(gate)
        return gate

    def stop_generation(self, gen: Generation) -> None:
        """Run a started generation's grace and finalize (a GenerationHost method)."""
        self.spawn(self._stop_generation, gen.entry, gen, name=f"actor:{gen.entry.name}:stop")

    def _abandon_generations(self) -> None:
        """The registry's nursery is gone (a drain cut short, or cancelled from outside):
        generations still awake have no task left to end them; record them as ended."""
        for entry in self._table.entries():
            gen = entry.generation
            if gen is not None and not gen.ended:
                self._generation_finished(entry, gen, cut=True)

    def _generation_finished(self, entry: ActorEntry, gen: Generation, *, cut: bool) -> None:
        if gen.ended:
            return
        event, reason = gen.ending()
        entry.generation = None
        self._running_generations -= 1
        entry.process(event, reason)
        gen.end()
        self._generation_ended(entry, cut=cut)
        if self._running_generations == 0:
            self._generations_done.set()

    def _generation_ended(self, entry: ActorEntry, *, cut: bool) -> None:
        state = entry.lifecycle.state
        if state is S.DESTROYED:
            self.alarms.forget_actor(entry.actor_id)
            self._retire(entry)
            self._table.tombstone(entry.actor_id)
            return
        wanted = entry.held > 0 or entry.lifecycle.destroy_requested
        # A generation cut off by cancellation (the registry is being cancelled from outside)
        # wakes nothing: the new one would be cancelled in turn, and woken again, forever.
        if wanted and not (self._draining or cut) and entry.failed_wake != entry.wakes:
            self._wake(entry, "work was waiting")
        elif not (
            entry.held
            or entry.conns
            or entry.detached
            or entry.conn_writes
            or entry.pending_state is not None
        ):
            self._retire(entry)

    def track_detached(self, entry: ActorEntry) -> None:
        """``entry`` holds detached connections: end them at their deadline."""
        self.detached.track(entry)

    async def disconnect_hooks(self, entry: ActorEntry, conn: Conn, code: int, reason: str) -> None:
        """Run a connection's disconnect hooks (``on_ws_close`` for raw ones, then
        ``on_disconnect``) in the actor's generation, waking it if it sleeps. Never raises
        (but Cancelled): a refused admission or a hook's error is logged."""
        try:
            gen = await self.admit_entry(entry, WorkKind.HIBERNATABLE_MESSAGE)
        except (ActorDestroyed, RuntimeShutdown, ActorReadyTimeout) as exc:
            log.info(
                "actor %s id=%s: disconnect hooks skipped (%s)",
                entry.name,
                entry.actor_id,
                exc.code,
            )
            return
        except ActorError as exc:
            log.warning(
                "actor %s id=%s: disconnect hooks skipped (%s)", entry.name, entry.actor_id, exc
            )
            return
        instance = gen.instance
        assert instance is not None
        with gen.track_work("hook:disconnect", timeout=gen.definition.options.hook_timeout):
            try:
                if conn.kind is ConnKind.RAW:
                    await instance.on_ws_close(gen.ctx, conn, code, reason)
                await instance.on_disconnect(gen.ctx, conn)
            except Exception:
                log.exception("actor %s id=%s: disconnect hook raised", entry.name, entry.actor_id)

    def note_delete_failed(self, entry: ActorEntry, generation: int, error: ActorError) -> None:
        """Remember a destroy whose delete failed (a GenerationHost method). It is retried in
        the background with backoff, on the next lookup of its key and by the drain; until it
        succeeds the id stays destroyed in this process (tombstone) and ``destroy()`` raises."""
        self.note_save_error(entry, error)
        self._table.pending_deletes[entry.actor_id] = (generation, error)
        if not self._retrying_deletes and not self._draining and self._nursery is not None:
            self._retrying_deletes = True
            self._nursery.start_soon(self._retry_deletes, name="actorcore delete retry")

    def note_save_error(self, entry: ActorEntry, error: ActorError) -> None:
        """Count a failed save (a GenerationHost method); the error is logged here."""
        self.counters.save_errors += 1
        self.store_failing = True
        level = logging.ERROR if isinstance(error, StoreError) else logging.WARNING
        log.log(level, "actor %s id=%s: state save failed: %s", entry.name, entry.actor_id, error)

    def note_store_write(self, seconds: float | None) -> None:
        """A state write succeeded in ``seconds``, or failed (None): a GenerationHost method,
        for metrics and ``/readyz``."""
        self.store_failing = seconds is None
        observer = self.store_write_observer
        if seconds is None:
            return
        if observer is not None:
            observer(seconds)

    # ---------------------------------------------------------------- observability

    def statistics(self) -> RegistryStatistics:
        """A snapshot of counters; cheap enough to poll."""
        by_state: collections.Counter[str] = collections.Counter()
        conns = hib = held = 0
        for entry in self._table.entries():
            by_state[entry.lifecycle.state.value] += 1
            held += entry.held
            conns += len(entry.conns)
            hib += sum(1 for c in entry.conns if c.hibernatable)
        c = self.counters
        return RegistryStatistics(
            actors_by_state=dict(by_state),
            running_generations=self._running_generations,
            held=held,
            connections=conns,
            hibernatable_connections=hib,
            connections_held=c.connections_held,
            messages_in=c.messages_in,
            messages_out=c.messages_out,
            closes_by_code=dict(c.closes_by_code),
            calls=c.calls,
            save_errors=c.save_errors,
            draining=self._draining,
            alarms=self.alarms.statistics(),
        )

    def entry(self, actor_id: str) -> ActorEntry | None:
        """The in-memory entry of an actor, if it has one (for the dispatcher and tests)."""
        return self._table.get(actor_id)

    def entries(self) -> list[ActorEntry]:
        """All in-memory entries."""
        return self._table.entries()


class _Commands:
    """The registry's :class:`~actorcore.authority.LifecycleCommands`: transitions applied
    without asking the authority (it is the one commanding)."""

    __slots__ = ("_host",)

    def __init__(self, host: RegistryHost) -> None:
        self._host = host

    async def sleep(self, actor_id: str, reason: str) -> None:
        """Put the actor to sleep (a no-op if it is not awake)."""
        await trio.lowlevel.checkpoint()
        entry = self._host.entry(actor_id)
        if entry is not None and entry.generation is not None:
            self._host._apply_request(entry, E.SLEEP, reason)

    async def destroy(self, actor_id: str, reason: str) -> None:
        """Destroy the actor (waking it so that ``on_destroy`` runs)."""
        host = self._host
        entry = await host.find_entry(actor_id)
        if host.draining:
            raise RuntimeShutdown("the registry is shutting down")
        host._apply_request(entry, E.DESTROY, reason)

    async def wake(self, actor_id: str, reason: str) -> None:
        """Start a generation of the actor if it is asleep."""
        host = self._host
        entry = await host.find_entry(actor_id)
        if host.draining:
            raise RuntimeShutdown("the registry is shutting down")
        if entry.lifecycle.state is S.ASLEEP:
            host._apply_wake(entry, reason)

    async def move_away(self, actor_id: str, reason: str) -> None:
        """Put the actor to sleep here: it is to run elsewhere."""
        await self.sleep(actor_id, f"moved away: {reason}")


def _takes_one_request(authority: object) -> bool:
    """Whether ``authority.request`` takes ``(request, apply)`` (the current seam) rather than
    the first seam's ``(actor_id, generation, event, apply)``, which is still accepted."""
    try:
        parameters = inspect.signature(authority.request).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return True
    positional = [
        p
        for p in parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) != 4


def _raise_if_start_failed(entry: ActorEntry, attempt: int) -> None:
    """Raise ActorStartFailed if the start attempt ``attempt`` (``entry.wakes``) failed."""
    err = entry.start_error
    if entry.failed_wake == attempt and err is not None:
        raise ActorStartFailed(err.message) from err


def _bounded(seconds: float, what: str) -> contextlib.AbstractContextManager[None]:
    """A deadline whose expiry is an :class:`ActorStopping`, not a trio error."""
    return deadlines.fail_after(
        seconds, lambda: ActorStopping(f"{what} did not finish within {seconds:.1f}s")
    )


def _encode_input(value: Any) -> bytes | None:
    if value is None:
        return None
    try:
        return jsoncodec.dumps_compact(value).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"actor input must be JSON-serialisable: {exc}") from exc
