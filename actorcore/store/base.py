"""The store contract: where actors and their state live while they sleep.

Every write names the actor id **and the generation** that makes it. A store accepts a write
only from the actor's current generation (the fencing token handed out by
:meth:`Store.begin_generation`), so a late write from a finished generation can never overwrite
the state of the next one. This is also the seam for a later multi-node mode: a remote store
keeps the same contract.

State travels as bytes (UTF-8 JSON made by the registry); a store never interprets it.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import attrs

from actorcore.errors import ActorError, StoreError

__all__ = [
    "ActorRecord",
    "AlarmRecord",
    "ConnRecord",
    "ConnWrites",
    "SaveItem",
    "Store",
    "StoreStatistics",
    "due_order",
]


@attrs.frozen
class ConnRecord:
    """One resumable protocol connection as the store holds it (see ``docs/zero-loss.md``)."""

    conn_id: str
    """The connection's id (unique over all actors)."""
    actor_id: str
    """The actor it talks to."""
    data: bytes
    """What the connection holds, as the registry encodes it (UTF-8 JSON): params, state,
    subscriptions, the unacknowledged outputs and the answers of its actions."""
    detached_at: float | None
    """When its socket went away (seconds since the Unix epoch), or None while attached. A
    store that opens marks every attached record detached as of then: its socket died with
    the process that held it."""


@attrs.frozen
class ConnWrites:
    """The connection records a save writes in its transaction, beside the actor's state."""

    upserts: tuple[ConnRecord, ...] = ()
    deletes: tuple[str, ...] = ()
    """Connection ids whose records go (the connection ended)."""

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


@attrs.frozen
class SaveItem:
    """One actor's part of :meth:`Store.save_many`."""

    actor_id: str
    generation: int
    """The fencing token, as for :meth:`Store.save`."""
    state: bytes | None
    """The state to store, or None: unchanged."""
    conns: ConnWrites = ConnWrites()


@attrs.frozen
class ActorRecord:
    """One actor as the store holds it."""

    actor_id: str
    """Unique id, assigned at creation, never reused."""
    name: str
    """The actor definition's route name."""
    key: str
    """The user's key; ``(name, key)`` is unique among existing actors."""
    generation: int
    """The last generation that began (0: created, never started)."""
    initialized: bool
    """True once ``create_state`` and ``on_create`` completed and the state was saved."""
    state: bytes | None
    """The last saved state (UTF-8 JSON), or None before the first save."""
    input: bytes | None
    """The creation input (UTF-8 JSON), kept until the actor is initialized."""
    conns: tuple[ConnRecord, ...] = ()
    """The actor's resumable connections, returned by the calls that begin a generation (a
    store that keeps connections; see :attr:`Store.keeps_conns`)."""


@attrs.frozen
class AlarmRecord:
    """One pending alarm as the store holds it (see ``docs/schedule.md``)."""

    alarm_id: str
    """Unique id, returned by ``ctx.schedule.after``/``at``."""
    actor_id: str
    """The actor whose action runs."""
    due: float
    """When it falls due, in seconds since the Unix epoch."""
    action: str
    """The action to run."""
    args: bytes
    """Its arguments: a UTF-8 JSON array."""
    attempts: int = 0
    """Runs of the action that failed so far."""


def due_order(alarm: AlarmRecord) -> tuple[float, str]:
    """The order alarms fall due in (by time, then id): what ``next_alarms`` and
    ``list_alarms`` sort by."""
    return (alarm.due, alarm.alarm_id)


@attrs.frozen
class StoreStatistics:
    """Counters a store reports through :meth:`Store.statistics`."""

    actors: int
    """Number of actors the store holds (-1 when not cheaply known)."""
    writes: int
    """Write operations accepted since the store was opened."""
    commits: int
    """Transactions committed (a group commit counts once)."""
    write_errors: int
    """Write operations that failed (store errors, not fencing refusals)."""
    stale_writes: int
    """Writes refused because their generation was not current."""


class Store(abc.ABC):
    """Persistent home of actor records. Implementations: MemoryStore, SQLiteStore.

    All async methods raise :class:`actorcore.StoreError` (or its subclass
    :class:`actorcore.StaleGeneration`) on failure, never a library exception.
    """

    keeps_alarms: ClassVar[bool] = False
    """Whether the store implements the alarm methods (``ctx.schedule`` needs them)."""

    keeps_conns: ClassVar[bool] = False
    """Whether the store keeps resumable connections (:meth:`save_with_conns`, ``conns`` on
    the records that begin a generation). Without it, protocol connections get no resume
    token."""

    durable: ClassVar[bool] = False
    """Whether a completed write survives the process (SQLite: yes; memory: no). The output
    gate (``ActorOptions.durable_outputs``) holds outputs only for a durable store."""

    async def open(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Prepare for use (open files, start the writer). Called by the registry."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Flush pending writes and release resources. Idempotent."""

    @abc.abstractmethod
    async def create(self, actor_id: str, name: str, key: str, input: bytes | None) -> ActorRecord:
        """Insert a new actor with generation 0. Raises StoreError if ``(name, key)`` exists."""

    @abc.abstractmethod
    async def get_by_key(self, name: str, key: str) -> ActorRecord | None:
        """The actor with this name and key, or None."""

    @abc.abstractmethod
    async def get_by_id(self, actor_id: str) -> ActorRecord | None:
        """The actor with this id, or None."""

    @abc.abstractmethod
    def exists_nowait(self, actor_id: str) -> bool:
        """Whether the actor exists, answered synchronously (an indexed point read)."""

    @abc.abstractmethod
    async def begin_generation(self, actor_id: str) -> ActorRecord:
        """Atomically increment the actor's generation and return the updated record.

        The returned ``generation`` is the fencing token for every later write of that
        generation. Raises :class:`actorcore.ActorNotFound` if the actor does not exist.
        """

    async def begin_or_create(
        self, name: str, key: str, actor_id: str, input: bytes | None
    ) -> ActorRecord:
        """Begin the next generation of the actor ``(name, key)``, creating it first if needed.

        If the actor exists, its generation is incremented exactly as by
        :meth:`begin_generation` and the updated record returned (``actor_id`` and ``input``
        are ignored). Otherwise a new actor with id ``actor_id`` and creation ``input`` is
        inserted already at generation 1 (created, not initialized) and returned. Either way
        the returned ``generation`` is the fencing token of a generation that has begun.

        This is the connect path's one write for an actor that is not in memory: a store
        should make it one atomic operation (MemoryStore and SQLiteStore do: one transaction).
        The default composes :meth:`get_by_key`, :meth:`create` and :meth:`begin_generation`,
        which is correct for a single registry (it serializes calls per key) but not atomic.
        Raises StoreError if the actor had to be created and could not be.
        """
        record = await self.get_by_key(name, key)
        if record is None:
            record = await self.create(actor_id, name, key, input)
        return await self.begin_generation(record.actor_id)

    def key_exists_nowait(self, name: str, key: str) -> bool | None:
        """Whether an actor ``(name, key)`` exists, answered synchronously (an indexed point
        read), or None when this store cannot tell cheaply (the default). The registry uses it
        to give a new actor one write instead of two (see :meth:`create_initialized`)."""
        return None

    async def create_initialized(
        self, actor_id: str, name: str, key: str, state: bytes
    ) -> ActorRecord:
        """Insert a new actor whose first generation has already run its creation hooks: at
        generation 1, initialized, holding ``state`` (no input kept). Raises StoreError if
        ``(name, key)`` or ``actor_id`` exists.

        This is the one write of a new actor on the connect path: the registry calls it only
        after :meth:`key_exists_nowait` said False, once ``create_state`` and ``on_create``
        succeeded, and a store should make it one atomic operation (MemoryStore and
        SQLiteStore do). The default composes :meth:`create`, :meth:`begin_generation` and
        :meth:`save`, which is correct for a single registry but not atomic.
        """
        record = await self.create(actor_id, name, key, None)
        record = await self.begin_generation(record.actor_id)
        await self.save(actor_id, record.generation, state)
        return attrs.evolve(record, initialized=True, state=state, input=None)

    @abc.abstractmethod
    async def save(self, actor_id: str, generation: int, state: bytes) -> None:
        """Store ``state`` and mark the actor initialized.

        Raises :class:`actorcore.StaleGeneration` if ``generation`` is not the current one,
        :class:`actorcore.ActorNotFound` if the actor does not exist.
        """

    async def save_with_conns(
        self, actor_id: str, generation: int, state: bytes | None, conns: ConnWrites
    ) -> None:
        """Like :meth:`save` (``state`` None: the state is unchanged), and write ``conns`` in
        the same transaction: a connection's recorded answers are durable exactly when the
        state their actions changed is. Fenced like :meth:`save`. Only called on a store that
        :attr:`keeps_conns`."""
        raise StoreError(f"{type(self).__name__} does not keep connections")

    async def save_many(self, items: list[SaveItem]) -> list[ActorError | None]:
        """Save several actors at once (the output gate's batches): each item as
        :meth:`save_with_conns` (or :meth:`save` without connection records) would, each
        fenced on its own; the error of each item, or None. A store should make it one
        transaction (SQLiteStore does); the default saves them one after the other."""
        errors: list[ActorError | None] = []
        for item in items:
            try:
                if item.conns or item.state is None:
                    await self.save_with_conns(
                        item.actor_id, item.generation, item.state, item.conns
                    )
                else:
                    await self.save(item.actor_id, item.generation, item.state)
            except ActorError as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    async def prune_conns(self, detached_before: float) -> int:
        """Delete the connection records detached before ``detached_before`` (seconds since
        the Unix epoch) and return how many went: records of actors that never woke again.
        Only called on a store that :attr:`keeps_conns`."""
        raise StoreError(f"{type(self).__name__} does not keep connections")

    @abc.abstractmethod
    async def delete(self, actor_id: str, generation: int) -> None:
        """Remove the actor (its key becomes free), its alarms and its connection records.
        Fenced like :meth:`save`."""

    async def list_actors(
        self, search: str = "", offset: int = 0, limit: int = 50
    ) -> tuple[int, list[ActorRecord]]:
        """A page of the actors the store holds (the inspector's view), ordered by name and
        key: those whose name, key or id contains ``search`` (case-insensitive), from
        ``offset``, at most ``limit``; with how many match in all. A store that cannot list
        raises StoreError (the default)."""
        raise StoreError(f"{type(self).__name__} cannot list its actors")

    # -- alarms: stored beside the actors, so they survive sleep and restarts. A store that
    # keeps none raises StoreError; the registry then refuses to schedule (and fires nothing).

    async def add_alarm(self, alarm: AlarmRecord, generation: int, max_alarms: int) -> None:
        """Store ``alarm`` for its actor. Fenced like :meth:`save` by ``generation``; raises
        :class:`actorcore.ScheduleLimit` if the actor already holds ``max_alarms`` alarms."""
        raise StoreError(f"{type(self).__name__} does not keep alarms")

    async def remove_alarm(self, actor_id: str, alarm_id: str) -> bool:
        """Remove the alarm ``alarm_id`` of ``actor_id``; False if there was none (it ran,
        or was cancelled or removed with its actor)."""
        raise StoreError(f"{type(self).__name__} does not keep alarms")

    async def retry_alarm(self, alarm_id: str, due: float, attempts: int) -> bool:
        """Move the alarm to ``due`` with ``attempts`` failed runs; False if it is gone."""
        raise StoreError(f"{type(self).__name__} does not keep alarms")

    async def list_alarms(self, actor_id: str) -> list[AlarmRecord]:
        """The actor's alarms, earliest first."""
        raise StoreError(f"{type(self).__name__} does not keep alarms")

    async def next_alarms(self, limit: int) -> list[AlarmRecord]:
        """The ``limit`` alarms due first, over all actors, earliest first (ties by id). The
        registry holds only these in memory, never one object per pending alarm."""
        raise StoreError(f"{type(self).__name__} does not keep alarms")

    @abc.abstractmethod
    def statistics(self) -> StoreStatistics:
        """Counters for observability."""
