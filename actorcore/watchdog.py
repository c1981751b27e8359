"""Watchdog: the bounds of per-message work, kept by one task instead of a deadline per call.

A trio cancel scope with a deadline costs about as much as the rest of delivering a message
(entering the scope, registering the deadline, removing it on exit), and a shielded scope around
every send doubles that. So the per-message bounds are kept here instead:

* **work deadlines** (``hook_timeout``, ``action_timeout``): :meth:`Watchdog.arm` records a
  deadline and what to do when it passes, :meth:`Watchdog.disarm` forgets it: two dict
  operations per call;
* **timers** (:meth:`Watchdog.call_at`): a heap of one-shot callbacks; generations keep their
  idle timer and save interval here, so an awake idle actor needs no task of its own;
* **sends**: :meth:`Watchdog.send_started` / :meth:`Watchdog.send_ended` record that a task is
  writing a frame straight to a transport. Such a send is never cancelled half-way by actorcore:
  a cancel that arrives meanwhile (a work deadline, a generation's grace deadline) is deferred
  until the frame is out. A send still blocked after its connection's ``close_timeout`` (a peer
  that does not read) is cut by aborting the connection, which closes it with 1013. Time the
  event loop spent too busy to run anything on schedule does not count: a send that waits for
  its turn to run behind thousands of other tasks is starved, not blocked by its peer (the
  watchdog measures this as its own lateness, see :meth:`Watchdog.run`).

One task (:meth:`run`, in the registry's nursery) wakes at the earliest armed deadline and, while
anything is armed or sending, at least every :data:`TICK` seconds, so arming and sending never
have to move its deadline; with nothing to watch it waits without a deadline, so an idle
registry never wakes up.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import attrs
import trio

__all__ = ["TICK", "TimerTarget", "Watchdog", "WatchdogStatistics"]

log = logging.getLogger("actorcore.watchdog")

#: How often the watchdog looks at sends in flight while there is activity (seconds).
TICK: Final = 0.25


class TimerTarget(Protocol):
    """What :meth:`Watchdog.call_at` calls."""

    def on_timer(self, when: float) -> None:
        """The timer set for ``when`` fired."""
        ...


@attrs.frozen
class WatchdogStatistics:
    """What the watchdog watches now."""

    armed: int
    """Work deadlines armed."""
    timers: int
    """Timers pending (:meth:`Watchdog.call_at`)."""
    sending: int
    """Direct sends in flight."""
    expired: int
    """Work deadlines that passed since the registry started."""
    sends_cut: int
    """Sends aborted because they outlived their ``close_timeout``."""


class Watchdog:
    """Deadlines of in-flight work and bounds of direct sends (see the module docstring)."""

    __slots__ = (
        "_armed",
        "_deferred",
        "_expired",
        "_idle",
        "_scope",
        "_sending",
        "_sends_cut",
        "_seq",
        "_stalled",
        "_target",
        "_timers",
        "_wake",
    )

    def __init__(self) -> None:
        self._armed: dict[object, tuple[float, Callable[[], None]]] = {}
        self._sending: dict[object, tuple[float, float, float, Callable[[], Awaitable[None]]]] = {}
        """task -> (started, stalled when it started, bound, abort)"""
        self._stalled = 0.0
        """Seconds the loop ran this task late, in total (see :meth:`run`)."""
        self._deferred: dict[object, list[Callable[[], None]]] = {}
        """task -> the cancels that arrived during its send, in order (every one is run)."""
        self._wake: trio.Event | None = None
        self._idle = True
        self._scope: trio.CancelScope | None = None
        self._target = math.inf
        self._expired = 0
        self._sends_cut = 0
        self._timers: list[tuple[float, int, TimerTarget]] = []
        self._seq = itertools.count()

    # ---------------------------------------------------------------- work deadlines

    def arm(self, key: object, deadline: float, on_expire: Callable[[], None]) -> None:
        """Call ``on_expire()`` at ``deadline`` unless :meth:`disarm` comes first."""
        self._armed[key] = (deadline, on_expire)
        if deadline < self._target:
            self._move(deadline)

    def disarm(self, key: object) -> None:
        """Forget ``key``'s deadline (a no-op if it expired or was never armed)."""
        self._armed.pop(key, None)

    # ---------------------------------------------------------------- timers

    def call_at(self, when: float, target: TimerTarget) -> None:
        """Call ``target.on_timer(when)`` once, at ``when``. There is no cancel: the target
        checks whether it still wants it (generations keep one pending idle/save timer each
        this way). A target, not a callback, so a pending timer is one small tuple."""
        heapq.heappush(self._timers, (when, next(self._seq), target))
        if when < self._target:
            self._move(when)

    # ---------------------------------------------------------------- sends

    def send_started(
        self, task: object, bound: float, abort: Callable[[], Awaitable[None]]
    ) -> None:
        """``task`` writes a frame to a transport; ``abort()`` cuts it after ``bound`` seconds."""
        now = trio.current_time()
        self._sending[task] = (now, self._stalled, bound, abort)
        if self._idle:
            self._move(now + min(bound, TICK))

    def send_ended(self, task: object) -> None:
        """The send of ``task`` is over; run the cancels that were deferred meanwhile."""
        del self._sending[task]
        if self._deferred:
            for cancel in self._deferred.pop(task, ()):
                cancel()

    def cancel(self, task: object | None, cancel: Callable[[], None]) -> None:
        """Run ``cancel()`` now, or after the send ``task`` is in, so no frame is cut."""
        if task is not None and task in self._sending:
            # Kept all: two cancels for one task (say its action's deadline and the grace
            # deadline of the work it belongs to) cancel two different scopes.
            self._deferred.setdefault(task, []).append(cancel)
        else:
            cancel()

    # ---------------------------------------------------------------- loop

    def statistics(self) -> WatchdogStatistics:
        """Counts for observability."""
        return WatchdogStatistics(
            armed=len(self._armed),
            timers=len(self._timers),
            sending=len(self._sending),
            expired=self._expired,
            sends_cut=self._sends_cut,
        )

    def _move(self, when: float) -> None:
        self._target = when
        if self._scope is not None:
            self._scope.deadline = when
        elif self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Watch until cancelled (the registry's nursery owns this task)."""
        while True:
            now = trio.current_time()
            target = self._check(now)
            if target == math.inf:
                # Nothing to watch: sleep without a deadline until something is armed.
                self._idle = True
                self._target = math.inf
                self._wake = trio.Event()
                await self._wake.wait()  # the registry's nursery bounds this task
                self._wake = None
                self._idle = False
                continue
            self._idle = False
            self._target = target
            with trio.CancelScope(deadline=target) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            # Woken later than asked (beyond a tick): the loop was too busy to run us, and so
            # every other task. That time is not a peer's fault.
            late = now - self._target - TICK
            if late > 0:
                self._stalled += late
            await self._cut_sends(now)

    def _check(self, now: float) -> float:
        """Expire what is due; return when to look next (inf: nothing to watch)."""
        target = math.inf
        if self._armed:
            due = [key for key, (deadline, _) in self._armed.items() if deadline <= now]
            for key in due:
                _, on_expire = self._armed.pop(key)
                self._expired += 1
                try:
                    on_expire()
                except Exception:  # a bug in a callback must not stop the watchdog
                    log.exception("watchdog callback raised")
            if self._armed:
                target = min(now + TICK, *(deadline for deadline, _ in self._armed.values()))
        if self._sending:
            target = min(target, now + TICK)
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, timer = heapq.heappop(timers)
            try:
                timer.on_timer(when)
            except Exception:
                log.exception("timer callback raised")
        if timers:
            target = min(target, timers[0][0])
        return target

    async def _cut_sends(self, now: float) -> None:
        stalled = self._stalled
        late = [
            (task, abort)
            for task, (started, stalled_then, bound, abort) in self._sending.items()
            if now - started - (stalled - stalled_then) >= bound
        ]
        for task, abort in late:
            if task not in self._sending:
                continue
            self._sends_cut += 1
            with trio.move_on_after(TICK):
                try:
                    await abort()
                except Exception:
                    log.exception("aborting a stuck send raised")
