"""The registry's alarm timer: one task that runs every actor's scheduled actions when due.

Pending alarms live in the store (beside the actors' state), never one object per alarm in
memory. The timer holds a bounded *prefetch*: the alarms due first, read with
:meth:`Store.next_alarms`, in one sorted list. An asleep actor with a pending alarm costs no
task, no timer and no memory here; the timer sleeps until the first alarm in its prefetch is
due and then hands it to the registry, which wakes the actor and runs the action as an
ordinary action (admitted as :attr:`WorkKind.ALARM`: never in a generation that is finishing).

The prefetch is exact up to its *horizon*, a ``(due, alarm_id)`` key: every alarm in the store
that is not running and sorts at or before the horizon is in memory. A new alarm at or before
it is added (the last one is dropped past ``prefetch``, and the horizon moves down to the new
last); a later one is left to the store. When the prefetch runs empty below an incomplete
horizon, it is read again. A refill and the writes that overlap it are reconciled through a
journal of the changes made meanwhile, so a refill never brings back an alarm that ran or was
cancelled while it read.

At-least-once: an alarm is removed from the store only after its action returned. An action
that raises is retried with backoff (``alarm_retry_delay`` doubled, up to
``alarm_retry_max_delay``) until ``alarm_max_attempts`` runs failed; then it is dropped and
logged with its error. Time is trio's clock; wall time (what the store keeps) is mapped onto it
once, when the registry starts, so every rule is testable with ``autojump_clock``.
"""

from __future__ import annotations

import bisect
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from . import jsoncodec
from .errors import ActionNotFound, ActorError, ScheduleError, ScheduleLimit, StoreError
from .store.base import AlarmRecord, Store

if TYPE_CHECKING:
    from .generation import Generation
    from .options import ActorOptions

__all__ = ["AlarmFailed", "AlarmGone", "AlarmHost", "AlarmStatistics", "AlarmTimer"]

log = logging.getLogger("actorcore.alarms")

PREFETCH = 512
"""Default bound on the alarms held in memory (the ones due first)."""
MAX_RUNNING = 256
"""Default bound on alarms whose actions run at once (each may wake its actor)."""
BUG_RETRY_DELAY = 60.0
"""Seconds before an alarm runs again after the registry itself failed to run it."""
REFILL_RETRY_FIRST = 1.0
"""Seconds before reading the store again after a failed read; doubled up to 30."""

_Key = tuple[float, str]
_UNKNOWN: _Key = (-math.inf, "")
_COMPLETE: _Key = (math.inf, "")


class AlarmGone(Exception):
    """Raised by :meth:`AlarmHost.run_alarm`: the alarm can never run (its actor or action
    is gone); it is removed without a retry."""


class AlarmFailed(Exception):
    """Raised by :meth:`AlarmHost.run_alarm`: this run failed with ``error`` (the action
    raised, or its actor could not start); retried as ``options`` say."""

    def __init__(self, error: BaseException, options: ActorOptions) -> None:
        super().__init__(str(error))
        self.error = error
        self.options = options


class AlarmHost(Protocol):
    """What the timer needs from its registry."""

    @property
    def store(self) -> Store:
        """Where alarms are kept."""
        ...

    async def run_alarm(self, alarm: AlarmRecord) -> ActorOptions | None:
        """Run the alarm's action on its actor; return the actor's options once it returned,
        or None if :meth:`AlarmTimer.begin` said it was cancelled. Raises AlarmGone,
        AlarmFailed, or RuntimeShutdown (the alarm stays for the next run)."""
        ...

    def spawn(self, async_fn: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        """Run ``async_fn(*args)`` in a task of the registry's nursery."""
        ...


@attrs.frozen
class AlarmStatistics:
    """A snapshot of the timer (see :meth:`AlarmTimer.statistics`)."""

    in_memory: int
    """Alarms held in the prefetch (bounded by ``prefetch``)."""
    running: int
    """Alarms whose action runs now (bounded by ``max_running``)."""
    ran: int
    """Alarms whose action returned (each then removed)."""
    retried: int
    """Failed runs that were rescheduled."""
    dropped: int
    """Alarms dropped: out of attempts, or their actor or action is gone."""
    refills: int
    """Reads of the store's next alarms."""


class AlarmTimer:
    """The registry-level timer of every actor's alarms (see the module docstring)."""

    def __init__(
        self,
        host: AlarmHost,
        *,
        wall_clock: Callable[[], float],
        prefetch: int = PREFETCH,
        max_running: int = MAX_RUNNING,
    ) -> None:
        if prefetch < 1 or max_running < 1:
            raise ValueError("prefetch and max_running must be >= 1")
        self._host = host
        self._wall_clock = wall_clock
        self._prefetch = prefetch
        self._max_running = max_running
        self._offset = 0.0
        """Wall time minus trio time, fixed when the registry starts."""
        self._queue: list[_Key] = []
        """The prefetch, sorted by (due, alarm_id)."""
        self._records: dict[str, AlarmRecord] = {}
        self._horizon: _Key = _UNKNOWN
        self._journal: list[tuple[AlarmRecord | None, str]] | None = None
        """Changes made while a refill reads the store: (record, id) added, (None, id) gone."""
        self._running: dict[str, AlarmRecord] = {}
        self._begun: set[str] = set()
        """Running alarms whose action has begun (a cancel can no longer stop this run)."""
        self._cancelled: set[str] = set()
        """Alarms being cancelled, or cancelled while running: their action must not begin."""
        self._poke: trio.Event | None = None
        self._changed: trio.Event | None = None
        """Set (and dropped) at every change of the prefetch or the running set."""
        self._stopping = False
        self._ran = self._retried = self._dropped = self._refills = 0

    # ---------------------------------------------------------------- time

    def start(self) -> None:
        """Map wall time onto trio's clock (the registry calls this once, when it starts)."""
        self._offset = self._wall_clock() - trio.current_time()

    def now(self) -> float:
        """Wall time (seconds since the epoch), as trio's clock tells it."""
        return trio.current_time() + self._offset

    # ---------------------------------------------------------------- the actor's side

    async def add(self, gen: Generation, due: float, action: str, args: tuple[Any, ...]) -> str:
        """Persist an alarm of ``gen``'s actor and return its id (``ctx.schedule``)."""
        definition = gen.definition
        options = definition.options
        self._require_alarm_store()
        if action not in definition.actions:
            raise ActionNotFound(f"actor {definition.name!r} has no action {action!r}")
        if isinstance(due, bool) or not isinstance(due, int | float) or not math.isfinite(due):
            raise ScheduleError(f"an alarm's time must be a finite number, not {due!r}")
        try:
            data = jsoncodec.dumps_compact(list(args)).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise ScheduleError(f"the arguments of alarm {action!r} are not JSON: {exc}") from exc
        if len(data) > options.max_alarm_args_size:
            raise ScheduleLimit(
                f"the arguments of alarm {action!r} take {len(data)} bytes "
                f"(max_alarm_args_size={options.max_alarm_args_size})"
            )
        await gen.ensure_stored()
        record = AlarmRecord(uuid.uuid4().hex, gen.actor_id, float(due), action, data)
        await self._host.store.add_alarm(record, gen.number, options.max_alarms)
        self._added(record)
        return record.alarm_id

    async def cancel(self, gen: Generation, alarm_id: str) -> bool:
        """Remove a pending alarm of ``gen``'s actor. True: its action will not run. False: it
        has no alarm with that id, or that alarm's action has already begun (the run is not
        interrupted, but it will not be retried)."""
        self._require_alarm_store()
        if not isinstance(alarm_id, str):
            raise ScheduleError(f"alarm ids are str, not {type(alarm_id).__name__}")
        # Marked first: a run handed out while the store removes it must not begin.
        self._cancelled.add(alarm_id)
        try:
            removed = await self._host.store.remove_alarm(gen.actor_id, alarm_id)
        finally:
            if alarm_id not in self._running:
                self._cancelled.discard(alarm_id)
        if removed:
            self._gone(alarm_id)
        return removed and alarm_id not in self._begun

    def begin(self, alarm_id: str) -> bool:
        """The registry is about to run a due alarm's action (no checkpoint may follow before
        it does): False if it was cancelled meanwhile, and then it must not run."""
        if alarm_id in self._cancelled:
            return False
        self._begun.add(alarm_id)
        return True

    async def list(self, gen: Generation) -> list[AlarmRecord]:
        """The pending alarms of ``gen``'s actor, earliest first."""
        self._require_alarm_store()
        return await self._host.store.list_alarms(gen.actor_id)

    def _require_alarm_store(self) -> None:
        store = self._host.store
        if not store.keeps_alarms:
            raise ScheduleError(f"the store {type(store).__name__} keeps no alarms")

    def appeared(self, records: Iterable[AlarmRecord]) -> None:
        """Alarms that came into the store without passing through this timer (an engine
        start loads an actor's alarms with it): hold them like newly added ones."""
        for record in records:
            self._added(record)

    def forget_actor(self, actor_id: str) -> None:
        """The actor's alarms left this registry's store (it was destroyed, or under an
        engine it stopped running here): drop them from memory."""
        for alarm_id in [a for a, r in self._records.items() if r.actor_id == actor_id]:
            self._gone(alarm_id)

    # ---------------------------------------------------------------- the timer

    def stop(self) -> None:
        """Run no more alarms (the registry drains); those running finish or are refused."""
        self._stopping = True
        self._wake()

    async def run(self) -> None:
        """Run alarms as they fall due, until :meth:`stop`. Runs in the registry's nursery."""
        if not self._host.store.keeps_alarms:
            return
        retry = REFILL_RETRY_FIRST
        while not self._stopping:
            if not self._queue and self._horizon != _COMPLETE:
                if not await self._refill():
                    await self._wait(trio.current_time() + retry)
                    retry = min(retry * 2, 30.0)
                    continue
                retry = REFILL_RETRY_FIRST
                continue
            if not self._queue:
                await self._wait(math.inf)
                continue
            due, alarm_id = self._queue[0]
            at = due - self._offset
            if trio.current_time() < at:
                await self._wait(at)
            elif len(self._running) >= self._max_running:
                await self._wait(math.inf)  # a finishing run wakes us
            else:
                del self._queue[0]
                record = self._records.pop(alarm_id)
                self._running[alarm_id] = record
                self._host.spawn(self._fire, record, name=f"alarm:{record.action}")

    async def _wait(self, deadline: float) -> None:
        """Until ``deadline`` or until something changes (an alarm added, a run finished)."""
        self._poke = trio.Event()
        with trio.move_on_at(deadline):
            await self._poke.wait()
        self._poke = None

    def _wake(self) -> None:
        if self._poke is not None:
            self._poke.set()
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _settled(self) -> bool:
        """Nothing is running, nothing in memory is due, and nothing waits for a refill."""
        if self._stopping or not self._host.store.keeps_alarms:
            return True
        if self._running:
            return False
        if not self._queue:
            return self._horizon == _COMPLETE
        return self._queue[0][0] > self.now()

    async def wait_settled(self) -> int:
        """Return once every alarm due now has run (or was retried or dropped) and none is
        running; returns how many runs finished meanwhile (``actorcore.testing``)."""
        before = self._ran + self._retried + self._dropped
        while not self._settled():
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()
        await trio.lowlevel.checkpoint()
        return self._ran + self._retried + self._dropped - before

    async def _refill(self) -> bool:
        """Read the alarms due first into the prefetch. False if the store failed."""
        want = self._prefetch + len(self._running)
        journal: list[tuple[AlarmRecord | None, str]] = []
        self._journal = journal
        try:
            fetched = await self._host.store.next_alarms(want)
        except StoreError as exc:
            log.error("alarms: reading the next alarms failed (retrying): %s", exc)
            return False
        finally:
            self._journal = None
        self._refills += 1
        self._queue.clear()
        self._records.clear()
        last = fetched[-1] if fetched else None
        self._horizon = (
            _COMPLETE if len(fetched) < want or last is None else (last.due, last.alarm_id)
        )
        for record in fetched:
            if record.alarm_id not in self._running:
                self._insert(record)
        for added, alarm_id in journal:
            if added is None:
                self._discard(alarm_id)
            elif alarm_id not in self._running:
                self._insert(added)
        self._wake()
        return True

    def _insert(self, record: AlarmRecord) -> None:
        """Hold ``record`` if it sorts at or before the horizon (bounded by ``prefetch``)."""
        key = (record.due, record.alarm_id)
        if key > self._horizon or record.alarm_id in self._records:
            return
        bisect.insort(self._queue, key)
        self._records[record.alarm_id] = record
        if len(self._queue) > self._prefetch:
            _, last_id = self._queue.pop()
            del self._records[last_id]
            self._horizon = self._queue[-1]

    def _discard(self, alarm_id: str) -> None:
        record = self._records.pop(alarm_id, None)
        if record is not None:
            index = bisect.bisect_left(self._queue, (record.due, alarm_id))
            del self._queue[index]

    def _added(self, record: AlarmRecord) -> None:
        """A new (or rescheduled) alarm is in the store."""
        if self._journal is not None:
            self._journal.append((record, record.alarm_id))
        self._insert(record)
        self._wake()

    def _gone(self, alarm_id: str) -> None:
        """An alarm left the store (ran, cancelled, dropped) or left this timer's hands."""
        if self._journal is not None:
            self._journal.append((None, alarm_id))
        self._discard(alarm_id)
        self._wake()

    async def _fire(self, record: AlarmRecord) -> None:
        """Run one due alarm, then remove it, reschedule it or drop it."""
        follow_up: AlarmRecord | None = None
        try:
            follow_up = await self._run_once(record)
        finally:
            # No checkpoint from here: the record is out of the running set and its
            # follow-up (if any) in the prefetch in one step, so it never runs twice at once.
            del self._running[record.alarm_id]
            self._begun.discard(record.alarm_id)
            self._cancelled.discard(record.alarm_id)
            self._gone(record.alarm_id)
            if follow_up is not None:
                self._added(follow_up)

    async def _run_once(self, record: AlarmRecord) -> AlarmRecord | None:
        """One run of ``record``; returns the record to hold again (a retry), or None."""
        store = self._host.store
        try:
            options = await self._host.run_alarm(record)
        except AlarmGone as gone:
            self._dropped += 1
            log.warning(
                "alarm %s (%s of actor %s) dropped: %s",
                record.alarm_id,
                record.action,
                record.actor_id,
                gone,
            )
            await self._remove_quietly(record)
            return None
        except AlarmFailed as failed:
            return await self._failed(record, failed)
        except ActorError as exc:  # RuntimeShutdown: it stays in the store for the next run
            log.info("alarm %s left for the next run: %s", record.alarm_id, exc)
            return None
        except Exception:
            # A bug of actorcore's, not the action's: keep the alarm (at least once), slowly.
            log.exception("alarm %s: the registry failed to run it", record.alarm_id)
            return attrs.evolve(record, due=self.now() + BUG_RETRY_DELAY)
        if options is None:
            return None  # cancelled before it began: the cancel removed it
        self._ran += 1
        try:
            await store.remove_alarm(record.actor_id, record.alarm_id)
        except StoreError as exc:
            # It ran; the next removal (after running it again) may succeed: at least once.
            log.error("alarm %s ran, but removing it failed: %s", record.alarm_id, exc)
            due = self.now() + options.alarm_retry_delay
            return attrs.evolve(record, due=due)
        return None

    async def _failed(self, record: AlarmRecord, failed: AlarmFailed) -> AlarmRecord | None:
        options = failed.options
        attempts = record.attempts + 1
        error = failed.error
        described = f"{type(error).__name__}: {error}"
        if attempts >= options.alarm_max_attempts:
            self._dropped += 1
            log.error(
                "alarm %s (%s of actor %s) dropped after %d failed runs; last error: %s",
                record.alarm_id,
                record.action,
                record.actor_id,
                attempts,
                described,
            )
            await self._remove_quietly(record)
            return None
        delay = min(options.alarm_retry_delay * 2 ** (attempts - 1), options.alarm_retry_max_delay)
        retry = attrs.evolve(record, due=self.now() + delay, attempts=attempts)
        log.warning(
            "alarm %s (%s of actor %s) failed (run %d of %d), retrying in %.3gs: %s",
            record.alarm_id,
            record.action,
            record.actor_id,
            attempts,
            options.alarm_max_attempts,
            delay,
            described,
        )
        self._retried += 1
        try:
            kept = await self._host.store.retry_alarm(record.alarm_id, retry.due, attempts)
        except StoreError as exc:
            log.error("alarm %s: storing its retry failed: %s", record.alarm_id, exc)
            return retry  # held in memory; a restart retries it with its stored attempts
        return retry if kept else None  # not kept: cancelled while it ran

    async def _remove_quietly(self, record: AlarmRecord) -> None:
        try:
            await self._host.store.remove_alarm(record.actor_id, record.alarm_id)
        except StoreError as exc:
            log.error("alarm %s: removing it failed: %s", record.alarm_id, exc)

    def statistics(self) -> AlarmStatistics:
        """Counters and sizes; cheap enough to poll."""
        return AlarmStatistics(
            in_memory=len(self._queue),
            running=len(self._running),
            ran=self._ran,
            retried=self._retried,
            dropped=self._dropped,
            refills=self._refills,
        )
