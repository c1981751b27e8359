"""The end of detached connections: ``resume_timeout`` after their socket went away.

A resumable protocol connection whose socket went away without its client closing it is kept
on its actor (``ActorEntry.detached``) for ``ActorOptions.resume_timeout``. This registry-wide
timer ends the ones nobody resumed in time: their record is deleted with the actor's next
save and ``on_disconnect`` runs, waking the actor if it sleeps (as for a client that closes
while its actor sleeps). It is a task only while some actor holds detached connections.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from .conn import Conn, ConnKind

if TYPE_CHECKING:
    from .generation import ActorEntry
    from .host import RegistryHost
    from .resume import DetachedConn

__all__ = ["DetachedExpiry"]

log = logging.getLogger("actorcore.ws")


class DetachedExpiry:
    """Ends detached connections at their deadline (see the module docstring)."""

    def __init__(self, host: RegistryHost) -> None:
        self._host = host
        self._entries: set[ActorEntry] = set()
        self._running = False
        self._wakeup: trio.Event | None = None
        self.expired = 0
        """Detached connections ended because nobody resumed them in time (or because their
        actor held ``max_detached_conns`` already)."""

    def track(self, entry: ActorEntry) -> None:
        """``entry`` holds detached connections (new ones, or ones loaded from the store)."""
        self._entries.add(entry)
        options = entry.definition.options
        detached = entry.detached
        if detached is not None and len(detached) > options.max_detached_conns:
            oldest = min(detached.values(), key=lambda held: held.expires)
            self.end(entry, oldest)
        if self._wakeup is not None:
            self._wakeup.set()
        if not self._running and not self._host.draining:
            self._running = True
            self._host.spawn(self._run, name="actorcore detached connections")

    async def _run(self) -> None:
        try:
            while self._entries and not self._host.draining:
                now = trio.current_time()
                due = math.inf
                for entry in list(self._entries):
                    detached = entry.detached
                    if not detached or entry.retired:
                        self._entries.discard(entry)
                        continue
                    for held in list(detached.values()):
                        if held.expires <= now:
                            self.end(entry, held)
                        else:
                            due = min(due, held.expires)
                wakeup = self._wakeup = trio.Event()
                with trio.move_on_at(due):
                    await wakeup.wait()
        finally:
            self._running = False
            self._wakeup = None

    def end(self, entry: ActorEntry, held: DetachedConn) -> None:
        """End ``held`` now: forget its record and run its disconnect hooks."""
        if entry.take_detached(held.conn_id) is None:
            return
        held.journal.on_change = None
        self.expired += 1
        entry.forget_conn(held.conn_id)
        conn = Conn(
            id=held.conn_id,
            actor_id=entry.actor_id,
            kind=ConnKind.PROTOCOL,
            params=held.params,
            hibernatable=True,
        )
        conn.state = held.state
        conn.mark_closed()
        log.info(
            "actor %s id=%s: connection %s was not resumed within resume_timeout; it ends",
            entry.name,
            entry.actor_id,
            held.conn_id,
        )
        self._host.spawn(
            self._host.disconnect_hooks,
            entry,
            conn,
            1006,
            "resume.expired",
            name=f"disconnect:{entry.name}",
        )
