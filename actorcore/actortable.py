"""The registry's table of in-memory actors: lookup by id and by key, the per-key creation
locks, the tombstones of destroyed ids, and the destroys whose delete failed.

Pure bookkeeping: no I/O, no lifecycle decisions (the registry makes those, and the lifecycle
table in ``actorcore/lifecycle.py`` decides them)."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .errors import ActorError
    from .generation import ActorEntry

__all__ = ["TOMBSTONES", "ActorTable"]

TOMBSTONES = 10_000
"""Destroyed ids remembered so ``lifecycle()`` can answer DESTROYED (oldest forgotten first)."""


class ActorTable:
    """The in-memory actors of one registry (see the module docstring)."""

    __slots__ = ("_by_id", "_by_key", "_key_locks", "_tombstones", "pending_deletes")

    def __init__(self) -> None:
        self._by_id: dict[str, ActorEntry] = {}
        self._by_key: dict[tuple[str, str], ActorEntry] = {}
        self._key_locks: dict[tuple[str, str], trio.Lock] = {}
        self._tombstones: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.pending_deletes: dict[str, tuple[int, ActorError]] = {}
        """Destroyed actors whose delete failed: id -> (last generation, the store's error)."""

    # ---------------------------------------------------------------- entries

    def get(self, actor_id: str) -> ActorEntry | None:
        """The entry of ``actor_id``, if it is in memory."""
        return self._by_id.get(actor_id)

    def get_by_key(self, name: str, key: str) -> ActorEntry | None:
        """The entry of ``name``/``key``, if it is in memory."""
        return self._by_key.get((name, key))

    def entries(self) -> list[ActorEntry]:
        """Every entry (a copy: safe to iterate while entries come and go)."""
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, entry: ActorEntry) -> None:
        """Hold ``entry`` under its id and its key."""
        self._by_id[entry.actor_id] = entry
        self._by_key[(entry.name, entry.key)] = entry

    def remove(self, entry: ActorEntry) -> None:
        """Drop ``entry`` (a newer entry under the same id or key stays)."""
        if self._by_id.get(entry.actor_id) is entry:
            del self._by_id[entry.actor_id]
        if self._by_key.get((entry.name, entry.key)) is entry:
            del self._by_key[(entry.name, entry.key)]

    # ---------------------------------------------------------------- tombstones

    def tombstone(self, actor_id: str) -> None:
        """Remember that ``actor_id`` was destroyed (bounded by :data:`TOMBSTONES`)."""
        self._tombstones[actor_id] = None
        while len(self._tombstones) > TOMBSTONES:
            self._tombstones.popitem(last=False)

    def is_tombstoned(self, actor_id: str) -> bool:
        """Whether ``actor_id`` was destroyed recently."""
        return actor_id in self._tombstones

    # ---------------------------------------------------------------- key locks

    def key_lock(self, name: str, key: str) -> trio.Lock:
        """The creation lock of ``name``/``key`` (made on demand)."""
        return self._key_locks.setdefault((name, key), trio.Lock())

    def existing_key_lock(self, name: str, key: str) -> trio.Lock | None:
        """The creation lock of ``name``/``key`` if a lookup holds or waits for it."""
        return self._key_locks.get((name, key))

    def drop_key_lock(self, name: str, key: str, lock: trio.Lock) -> None:
        """Forget ``lock`` once nobody holds or waits for it."""
        if (
            not lock.statistics().tasks_waiting
            and not lock.locked()
            and self._key_locks.get((name, key)) is lock
        ):
            del self._key_locks[(name, key)]
