"""An in-memory :class:`~actorcore.store.base.Store`: same contract as SQLite, nothing persists.

Meant for tests and for runtimes whose actors need not survive the process. Every write is
applied synchronously after one checkpoint, so each operation is atomic with respect to other
trio tasks; fencing, duplicate detection and the statistics follow the SQLite store exactly.

Fault injection, for testing callers against a failing store:

* :attr:`MemoryStore.fail_writes` -- when set to an exception, every write raises
  :class:`~actorcore.errors.StoreError` chained to it (counted in ``write_errors``).
* :attr:`MemoryStore.write_delay` -- seconds slept (``trio.sleep``) before each write.
"""

from __future__ import annotations

import heapq
from typing import ClassVar

import attrs
import trio

from actorcore.errors import ActorNotFound, ScheduleLimit, StaleGeneration, StoreError
from actorcore.store.base import (
    ActorRecord,
    AlarmRecord,
    ConnRecord,
    ConnWrites,
    Store,
    StoreStatistics,
    due_order,
)

__all__ = ["MemoryStore"]


@attrs.define(eq=False)
class MemoryStore(Store):
    """A :class:`Store` kept in two dicts: records by id, and ids by ``(name, key)``.

    Usable right after construction; :meth:`run` exists so that every store is driven the same
    way (see :func:`actorcore.store.open_store`). After :meth:`aclose` every operation raises
    :class:`~actorcore.errors.StoreError`.

    Statistics: ``writes`` counts accepted writes (a :meth:`create_many` call counts once),
    ``commits`` equals ``writes`` (each write is its own transaction), ``stale_writes`` counts
    fencing refusals and ``write_errors`` every other :class:`StoreError` of a write (duplicate
    key, injected fault). A write refused with :class:`ActorNotFound` is in neither counter.
    """

    keeps_alarms: ClassVar[bool] = True
    keeps_conns: ClassVar[bool] = True

    fail_writes: Exception | None = attrs.field(default=None, kw_only=True)
    """Fault hook: when not None, every write raises ``StoreError`` chained to this exception."""
    write_delay: float = attrs.field(default=0.0, kw_only=True)
    """Fault hook: seconds to ``trio.sleep`` before each write (0: just a checkpoint)."""

    _by_id: dict[str, ActorRecord] = attrs.field(factory=dict, init=False)
    _by_key: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False)
    _alarms: dict[str, AlarmRecord] = attrs.field(factory=dict, init=False)
    _alarms_of: dict[str, set[str]] = attrs.field(factory=dict, init=False)
    """Alarm ids by actor id."""
    _conns: dict[str, dict[str, ConnRecord]] = attrs.field(factory=dict, init=False)
    """Connection records by actor id, then connection id."""
    _closed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _writes: int = attrs.field(default=0, init=False)
    _write_errors: int = attrs.field(default=0, init=False)
    _stale_writes: int = attrs.field(default=0, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report ready, then wait until :meth:`aclose` (or cancellation). Holds no resources.

        Running a closed store again reopens it with its data, like reopening a file: tests use
        this to restart a registry on the same store.
        """
        if self._closed.is_set():
            self._closed = trio.Event()
        task_status.started()
        await self._closed.wait()

    async def aclose(self) -> None:
        """Refuse further operations and end :meth:`run`. Idempotent; the data is kept for a
        later :meth:`run`."""
        self._closed.set()
        await trio.lowlevel.checkpoint()

    async def create(self, actor_id: str, name: str, key: str, input: bytes | None) -> ActorRecord:
        """Insert a new actor with generation 0. Raises StoreError if ``(name, key)`` exists."""
        return await self._create("create", ActorRecord(actor_id, name, key, 0, False, None, input))

    async def _create(self, operation: str, record: ActorRecord) -> ActorRecord:
        """Insert ``record`` as one write; StoreError if its key or id exists."""
        await self._before_write(operation)
        if (record.name, record.key) in self._by_key or record.actor_id in self._by_id:
            self._write_errors += 1
            raise StoreError(
                f"{operation} failed: actor name={record.name!r} key={record.key!r} "
                f"(id {record.actor_id!r}) already exists"
            )
        self._insert(record)
        self._writes += 1
        return record

    async def create_many(self, rows: list[tuple[str, str, str, bytes | None]]) -> None:
        """Insert ``(actor_id, name, key, input)`` rows at generation 0, all or none."""
        await self._before_write("create_many")
        ids: set[str] = set()
        keys: set[tuple[str, str]] = set()
        for actor_id, name, key, _ in rows:
            if (
                actor_id in ids
                or (name, key) in keys
                or actor_id in self._by_id
                or (name, key) in self._by_key
            ):
                self._write_errors += 1
                raise StoreError(
                    f"create_many failed: actor name={name!r} key={key!r} (id {actor_id!r}) "
                    "already exists; no row was inserted"
                )
            ids.add(actor_id)
            keys.add((name, key))
        for actor_id, name, key, input in rows:
            self._insert(ActorRecord(actor_id, name, key, 0, False, None, input))
        self._writes += 1

    async def get_by_key(self, name: str, key: str) -> ActorRecord | None:
        """The actor with this name and key, or None."""
        await self._before_read("get_by_key")
        actor_id = self._by_key.get((name, key))
        return None if actor_id is None else self._by_id[actor_id]

    async def get_by_id(self, actor_id: str) -> ActorRecord | None:
        """The actor with this id, or None."""
        await self._before_read("get_by_id")
        return self._by_id.get(actor_id)

    def exists_nowait(self, actor_id: str) -> bool:
        """Whether the actor exists."""
        self._check_open("exists_nowait")
        return actor_id in self._by_id

    def key_exists_nowait(self, name: str, key: str) -> bool:
        """Whether an actor ``(name, key)`` exists."""
        self._check_open("key_exists_nowait")
        return (name, key) in self._by_key

    async def create_initialized(
        self, actor_id: str, name: str, key: str, state: bytes
    ) -> ActorRecord:
        """Insert a new actor at generation 1, initialized with ``state``. One write."""
        record = ActorRecord(actor_id, name, key, 1, True, state, None)
        return await self._create("create_initialized", record)

    async def begin_generation(self, actor_id: str) -> ActorRecord:
        """Increment the actor's generation and return the updated record."""
        await self._before_write("begin_generation")
        record = self._lookup("begin_generation", actor_id)
        record = attrs.evolve(record, generation=record.generation + 1)
        self._by_id[actor_id] = record
        self._writes += 1
        return self._with_conns(record)

    def _with_conns(self, record: ActorRecord) -> ActorRecord:
        conns = self._conns.get(record.actor_id)
        return attrs.evolve(record, conns=tuple(conns.values())) if conns else record

    async def begin_or_create(
        self, name: str, key: str, actor_id: str, input: bytes | None
    ) -> ActorRecord:
        """Begin the next generation of ``(name, key)``, inserting it (as ``actor_id``, at
        generation 1) if it does not exist. One write."""
        await self._before_write("begin_or_create")
        existing = self._by_key.get((name, key))
        if existing is not None:
            record = self._by_id[existing]
            record = attrs.evolve(record, generation=record.generation + 1)
            self._by_id[existing] = record
            record = self._with_conns(record)
        elif actor_id in self._by_id:
            self._write_errors += 1
            raise StoreError(
                f"begin_or_create failed: actor name={name!r} key={key!r} could not be created "
                f"as id {actor_id!r}: that id already exists"
            )
        else:
            record = ActorRecord(actor_id, name, key, 1, False, None, input)
            self._insert(record)
        self._writes += 1
        return record

    async def save(self, actor_id: str, generation: int, state: bytes) -> None:
        """Store ``state``, mark the actor initialized and drop its creation input. Fenced."""
        await self._before_write("save")
        record = self._fenced("save", actor_id, generation)
        self._by_id[actor_id] = attrs.evolve(record, state=state, initialized=True, input=None)
        self._writes += 1

    async def save_with_conns(
        self, actor_id: str, generation: int, state: bytes | None, conns: ConnWrites
    ) -> None:
        """Store ``state`` (None: unchanged) and the connection records, at once. Fenced."""
        await self._before_write("save_with_conns")
        record = self._fenced("save_with_conns", actor_id, generation)
        if state is not None:
            record = attrs.evolve(record, state=state, initialized=True, input=None)
            self._by_id[actor_id] = record
        mine = self._conns.setdefault(actor_id, {})
        for conn in conns.upserts:
            mine[conn.conn_id] = conn
        for conn_id in conns.deletes:
            mine.pop(conn_id, None)
        if not mine:
            del self._conns[actor_id]
        self._writes += 1

    async def prune_conns(self, detached_before: float) -> int:
        """Delete the connection records detached before ``detached_before``."""
        await self._before_write("prune_conns")
        pruned = 0
        for actor_id, mine in list(self._conns.items()):
            for conn_id, conn in list(mine.items()):
                if conn.detached_at is not None and conn.detached_at < detached_before:
                    del mine[conn_id]
                    pruned += 1
            if not mine:
                del self._conns[actor_id]
        return pruned

    async def delete(self, actor_id: str, generation: int) -> None:
        """Remove the actor and free its key. Fenced like :meth:`save`."""
        await self._before_write("delete")
        record = self._fenced("delete", actor_id, generation)
        del self._by_id[actor_id]
        del self._by_key[record.name, record.key]
        for alarm_id in self._alarms_of.pop(actor_id, ()):
            del self._alarms[alarm_id]
        self._conns.pop(actor_id, None)
        self._writes += 1

    async def add_alarm(self, alarm: AlarmRecord, generation: int, max_alarms: int) -> None:
        """Store ``alarm``; fenced by ``generation``; ScheduleLimit past ``max_alarms``."""
        await self._before_write("add_alarm")
        self._fenced("add_alarm", alarm.actor_id, generation)
        mine = self._alarms_of.setdefault(alarm.actor_id, set())
        if len(mine) >= max_alarms:
            if not mine:
                del self._alarms_of[alarm.actor_id]
            raise ScheduleLimit(
                f"actor {alarm.actor_id} already has {len(mine)} pending alarms "
                f"(max_alarms={max_alarms})"
            )
        if alarm.alarm_id in self._alarms:
            self._write_errors += 1
            raise StoreError(f"add_alarm failed: alarm {alarm.alarm_id!r} already exists")
        mine.add(alarm.alarm_id)
        self._alarms[alarm.alarm_id] = alarm
        self._writes += 1

    async def remove_alarm(self, actor_id: str, alarm_id: str) -> bool:
        """Remove the alarm; False if ``actor_id`` has no alarm ``alarm_id``."""
        await self._before_write("remove_alarm")
        alarm = self._alarms.get(alarm_id)
        if alarm is None or alarm.actor_id != actor_id:
            return False
        del self._alarms[alarm_id]
        mine = self._alarms_of[actor_id]
        mine.discard(alarm_id)
        if not mine:
            del self._alarms_of[actor_id]
        self._writes += 1
        return True

    async def retry_alarm(self, alarm_id: str, due: float, attempts: int) -> bool:
        """Move the alarm to ``due`` with ``attempts``; False if it is gone."""
        await self._before_write("retry_alarm")
        alarm = self._alarms.get(alarm_id)
        if alarm is None:
            return False
        self._alarms[alarm_id] = attrs.evolve(alarm, due=due, attempts=attempts)
        self._writes += 1
        return True

    async def list_alarms(self, actor_id: str) -> list[AlarmRecord]:
        """The actor's alarms, earliest first."""
        await self._before_read("list_alarms")
        alarms = [self._alarms[alarm_id] for alarm_id in self._alarms_of.get(actor_id, ())]
        return sorted(alarms, key=due_order)

    async def list_actors(
        self, search: str = "", offset: int = 0, limit: int = 50
    ) -> tuple[int, list[ActorRecord]]:
        """A page of the actors held, ordered by name and key (see ``Store.list_actors``)."""
        await self._before_read("list_actors")
        needle = search.lower()
        found = sorted(
            (
                r
                for r in self._by_id.values()
                if not needle
                or needle in r.name.lower()
                or needle in r.key.lower()
                or needle in r.actor_id.lower()
            ),
            key=lambda r: (r.name, r.key),
        )
        return len(found), found[max(0, offset) : max(0, offset) + max(0, limit)]

    async def next_alarms(self, limit: int) -> list[AlarmRecord]:
        """The ``limit`` alarms due first, earliest first."""
        await self._before_read("next_alarms")
        return heapq.nsmallest(limit, self._alarms.values(), key=due_order)

    async def count(self) -> int:
        """Number of actors held."""
        await self._before_read("count")
        return len(self._by_id)

    def statistics(self) -> StoreStatistics:
        """Counters for observability (see the class docstring)."""
        return StoreStatistics(
            actors=len(self._by_id),
            writes=self._writes,
            commits=self._writes,
            write_errors=self._write_errors,
            stale_writes=self._stale_writes,
        )

    def _check_open(self, operation: str) -> None:
        if self._closed.is_set():
            raise StoreError(f"{operation} failed: the store is closed")

    async def _before_read(self, operation: str) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open(operation)

    async def _before_write(self, operation: str) -> None:
        # Nothing awaits after this returns, so the write that follows is atomic.
        if self.write_delay > 0:
            await trio.sleep(self.write_delay)
        else:
            await trio.lowlevel.checkpoint()
        self._check_open(operation)
        if self.fail_writes is not None:
            self._write_errors += 1
            raise StoreError(f"{operation} failed: {self.fail_writes!r}") from self.fail_writes

    def _insert(self, record: ActorRecord) -> None:
        self._by_id[record.actor_id] = record
        self._by_key[record.name, record.key] = record.actor_id

    def _lookup(self, operation: str, actor_id: str) -> ActorRecord:
        record = self._by_id.get(actor_id)
        if record is None:
            raise ActorNotFound(f"{operation} failed: no actor with id {actor_id!r}")
        return record

    def _fenced(self, operation: str, actor_id: str, generation: int) -> ActorRecord:
        record = self._lookup(operation, actor_id)
        if record.generation != generation:
            self._stale_writes += 1
            raise StaleGeneration(
                f"{operation} refused: actor {actor_id!r} is at generation {record.generation}, "
                f"not {generation}"
            )
        return record
