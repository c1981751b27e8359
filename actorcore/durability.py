"""Batched saves for the output gates: one transaction for every actor with outputs waiting.

An actor whose output gate holds outputs asks for a save (``Generation._gated_save_wanted``).
Rather than a task and a store write per actor, the registry keeps one task here that takes
every actor asking at that moment, prepares their saves (state, connection records) and hands
them to the store as one :meth:`~actorcore.store.base.Store.save_many` (one SQLite
transaction, one worker-thread call). Actors asking while it is written go into the next
batch. An actor whose store writes are held by another save (an interval or final save) is
skipped; that save asks again when it ends if outputs still wait.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from .errors import ActorError

if TYPE_CHECKING:
    from .generation import Generation, PreparedSave
    from .host import RegistryHost

__all__ = ["DurableSaves"]

log = logging.getLogger("actorcore.lifecycle")

#: Backoff after a batch in which some save failed (doubling up to the maximum).
RETRY_DELAY = 0.01
RETRY_MAX_DELAY = 1.0


class DurableSaves:
    """The registry's batcher of gate saves (see the module docstring)."""

    def __init__(self, host: RegistryHost) -> None:
        self._host = host
        self._wanted: dict[Generation, None] = {}
        self._running = False
        self.batches = 0
        """Batches written (each one store call)."""
        self.saves = 0
        """Actor saves written in them."""
        self.seconds = 0.0
        """Time spent in the store calls of the batches."""

    def want(self, gen: Generation) -> None:
        """``gen``'s gate holds outputs: save it with the next batch."""
        self._wanted[gen] = None
        if not self._running:
            self._running = True
            self._host.spawn(self._run, name="actorcore durable saves")

    async def _run(self) -> None:
        delay = RETRY_DELAY
        try:
            while self._wanted:
                # One scheduling round first: the tasks that are runnable now (readers of
                # other connections, actions) may add their actors to this batch.
                await trio.lowlevel.checkpoint()
                wanted = list(self._wanted)
                self._wanted.clear()
                if await self._batch(wanted):
                    delay = RETRY_DELAY
                else:
                    await trio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_DELAY)
        finally:
            self._running = False

    async def _batch(self, wanted: list[Generation]) -> bool:
        """Save ``wanted`` in one store call; False if any save failed (those are asked for
        again)."""
        held: list[tuple[Generation, trio.Lock, PreparedSave]] = []
        ok = True
        try:
            for gen in wanted:
                gate = gen.entry.gate
                if gen.ended or gate is None or not gate.waiting:
                    continue
                lock = gen.try_hold_store_writes()
                if lock is None:
                    continue  # that save asks again when it ends
                try:
                    prepared = gen.prepare_save()
                except ActorError as exc:  # StateError: rolled back; the next try saves
                    gen.release_store_writes(lock)
                    self._failed(gen, exc)
                    ok = False
                    continue
                if prepared is None:
                    gen.release_store_writes(lock)
                    continue
                held.append((gen, lock, prepared))
            if not held:
                await trio.lowlevel.checkpoint()
                return ok
            started = time.perf_counter()
            errors = await self._host.store.save_many([p.item for _, _, p in held])
            seconds = time.perf_counter() - started
            self.batches += 1
            self.seconds += seconds
            for (gen, _, prepared), error in zip(held, errors, strict=True):
                if error is None:
                    self.saves += 1
                    gen.save_done(prepared, seconds)
                else:
                    gen.save_failed(prepared)
                    self._failed(gen, error)
                    ok = False
        finally:
            for gen, lock, _ in held:
                gen.release_store_writes(lock)
        return ok

    def _failed(self, gen: Generation, error: ActorError) -> None:
        self._host.note_save_error(gen.entry, error)
        log.warning(
            "actor %s id=%s: a save for held outputs failed (%s); retrying",
            gen.entry.name,
            gen.actor_id,
            error,
        )
        if not gen.ended:
            self._wanted[gen] = None
