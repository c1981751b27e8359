"""The actor lifecycle: states, the transition table, and the one admission function.

Rule 1: everything that decides a lifecycle transition or what a state admits lives in this
module. The registry, the generation runner and the WebSocket dispatcher ask; they never decide.

Rule 2: this module does no I/O and knows nothing of trio, tasks or connections. It can be
tested, and reasoned about, as a table.

Theory of operation
-------------------

An actor moves through one *generation* at a time::

    LOADING -> STARTED -> SLEEP_GRACE -> SLEEP_FINALIZE -> ASLEEP -> (WAKE) LOADING ...
                      \\-> DESTROY_GRACE -> DESTROYING -> DESTROYED

Sleep and destroy are *requests*: they set a flag (``sleep_requested``, ``destroy_requested``).
The flags then trigger state transitions, computed to a fixed point after every event, exactly
like h11's state-triggered transitions:

* STARTED with ``destroy_requested`` moves to DESTROY_GRACE;
* STARTED with ``sleep_requested`` moves to SLEEP_GRACE;
* SLEEP_GRACE with ``destroy_requested`` moves to DESTROY_GRACE (destroy wins over sleep).

A request made while LOADING is only recorded; it applies as soon as the start finishes
(LOADED moves to STARTED, and the fixed point carries it on into grace). A destroy requested
while the actor finalizes a sleep, or while it is asleep, is recorded too: the registry then
wakes the actor so that ``on_destroy`` runs in a generation of its own.

``started`` is true in STARTED and SLEEP_GRACE: the actor is fully functional during sleep grace.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

from .errors import LifecycleError

__all__ = [
    "ADMISSION",
    "TRANSITIONS",
    "Admission",
    "Lifecycle",
    "LifecycleEvent",
    "LifecycleState",
    "WorkKind",
    "admit",
]


class LifecycleState(enum.Enum):
    """Where an actor is in its life. The registry reports these through ``lifecycle()``."""

    # Identity hash (members are singletons, equality is identity): admit() looks both up on
    # every message, and Enum's own __hash__ is a Python-level call.
    __hash__ = object.__hash__

    LOADING = "loading"
    """A generation is starting: state is loaded, ``create_state``/``on_create``/``on_wake`` run."""
    STARTED = "started"
    """Running and serving work."""
    SLEEP_GRACE = "sleep_grace"
    """``on_sleep`` runs; the actor is still fully functional and serves work."""
    SLEEP_FINALIZE = "sleep_finalize"
    """The generation is ending: final state saved, connections closed, nursery closed."""
    ASLEEP = "asleep"
    """No generation runs; the actor lives only in the store."""
    DESTROY_GRACE = "destroy_grace"
    """``on_destroy`` runs; new work is refused."""
    DESTROYING = "destroying"
    """The last generation is ending and the actor's data is being deleted."""
    DESTROYED = "destroyed"
    """Gone. Its id stays unknown; its key is free for a new actor."""


class LifecycleEvent(enum.Enum):
    """What can happen to an actor. Requests set flags; the others move the state."""

    WAKE = "wake"
    """The registry begins a new generation for an asleep actor."""
    LOADED = "loaded"
    """The start sequence finished."""
    LOAD_FAILED = "load_failed"
    """The start sequence raised; the actor goes back to sleep with no request pending (the
    waiters got the error), and the next request retries."""
    SLEEP = "sleep"
    """A request to sleep (``ctx.sleep()``, idle timeout, ``registry.sleep()``, drain)."""
    DESTROY = "destroy"
    """A request to destroy (``ctx.destroy()``, ``registry.destroy()``)."""
    GRACE_ENDED = "grace_ended"
    """Hooks and in-flight work finished, or the grace deadline passed."""
    FINALIZED = "finalized"
    """The finalize sequence finished."""
    CANCELLED = "cancelled"
    """The registry was cancelled from outside while a generation ran (a hard stop): the
    generation ended where it was, recorded as asleep without its finalize (``Registry.run``
    saved its state once)."""


S = LifecycleState
E = LifecycleEvent

#: Event-triggered transitions: ``{state: {event: new_state}}``. A pair missing here is a
#: :class:`LifecycleError`, except for the requests, which :data:`REQUEST_ACCEPTED` covers.
TRANSITIONS: Final[dict[LifecycleState, dict[LifecycleEvent, LifecycleState]]] = {
    S.LOADING: {E.LOADED: S.STARTED, E.LOAD_FAILED: S.ASLEEP, E.CANCELLED: S.ASLEEP},
    S.STARTED: {E.CANCELLED: S.ASLEEP},
    S.SLEEP_GRACE: {E.GRACE_ENDED: S.SLEEP_FINALIZE, E.CANCELLED: S.ASLEEP},
    S.SLEEP_FINALIZE: {E.FINALIZED: S.ASLEEP},
    S.ASLEEP: {E.WAKE: S.LOADING},
    S.DESTROY_GRACE: {E.GRACE_ENDED: S.DESTROYING, E.CANCELLED: S.ASLEEP},
    S.DESTROYING: {E.FINALIZED: S.DESTROYED},
    S.DESTROYED: {},
}

#: The states in which each request is recorded. Elsewhere a request is a no-op: a second
#: sleep while sleeping, or any request once destroy has begun.
REQUEST_ACCEPTED: Final[dict[LifecycleEvent, frozenset[LifecycleState]]] = {
    E.SLEEP: frozenset({S.LOADING, S.STARTED}),
    E.DESTROY: frozenset({S.LOADING, S.STARTED, S.SLEEP_GRACE, S.SLEEP_FINALIZE, S.ASLEEP}),
}

_STARTED_STATES: Final = frozenset({S.STARTED, S.SLEEP_GRACE})


@attrs.define(slots=True)
class Lifecycle:
    """The lifecycle of one actor: its state and its two request flags.

    Mutated only through :meth:`process_event`, which applies the table and then the
    state-triggered transitions to a fixed point, and returns the new state. The state and
    the flags are read-only properties: nothing else can write them.
    """

    _state: LifecycleState = attrs.field(default=S.ASLEEP, alias="state")
    _sleep_requested: bool = attrs.field(default=False, alias="sleep_requested")
    _destroy_requested: bool = attrs.field(default=False, alias="destroy_requested")

    @property
    def state(self) -> LifecycleState:
        """Where the actor is."""
        return self._state

    @property
    def sleep_requested(self) -> bool:
        """A sleep was requested for the current generation."""
        return self._sleep_requested

    @property
    def destroy_requested(self) -> bool:
        """A destroy was requested (it survives the end of a generation)."""
        return self._destroy_requested

    @property
    def started(self) -> bool:
        """True in STARTED and SLEEP_GRACE: the actor runs and serves work."""
        return self._state in _STARTED_STATES

    def process_event(self, event: LifecycleEvent) -> LifecycleState:
        """Apply ``event``; raise :class:`LifecycleError` naming the state and the event if the
        table does not allow it."""
        accepted_in = REQUEST_ACCEPTED.get(event)
        if accepted_in is not None:
            if self._state in accepted_in:
                if event is E.SLEEP:
                    self._sleep_requested = True
                else:
                    self._destroy_requested = True
        else:
            try:
                new_state = TRANSITIONS[self._state][event]
            except KeyError:
                raise LifecycleError(
                    f"can't handle event {event.name} in state {self._state.name}"
                ) from None
            if event is E.WAKE:
                # A new generation starts with a clean sleep request; a pending destroy stays.
                self._sleep_requested = False
            elif event is E.LOAD_FAILED:
                # The start failed and its waiters (a destroy's included) got the error: the
                # actor is asleep as before, with nothing pending.
                self._sleep_requested = False
                self._destroy_requested = False
            self._state = new_state
        self._fire_state_triggered_transitions()
        return self._state

    def _fire_state_triggered_transitions(self) -> None:
        # Loop to a fixed point (at most two steps: STARTED -> SLEEP_GRACE -> DESTROY_GRACE).
        while True:
            start = self._state
            if self._destroy_requested and self._state in _STARTED_STATES:
                self._state = S.DESTROY_GRACE
            elif self._sleep_requested and self._state is S.STARTED:
                self._state = S.SLEEP_GRACE
            if self._state is start:
                return


class WorkKind(enum.Enum):
    """What asks to be admitted at a check point."""

    # Identity hash (members are singletons, equality is identity): admit() looks both up on
    # every message, and Enum's own __hash__ is a Python-level call.
    __hash__ = object.__hash__

    CALL = "call"
    """An action or other in-process work (``handle.call``)."""
    CONNECT = "connect"
    """A new connection: before handler setup, and again on open."""
    MESSAGE = "message"
    """A message on an open connection that is not hibernatable."""
    HIBERNATABLE_MESSAGE = "hibernatable_message"
    """A message on an open hibernatable connection."""
    ALARM = "alarm"
    """A scheduled action that fell due: it never runs in a generation that is finishing."""


class Admission(enum.Enum):
    """The decision of :func:`admit`."""

    ADMIT = "admit"
    """Run it now, in the current generation."""
    HOLD = "hold"
    """Wait for the next generation (waking the actor), bounded by ``ready_timeout``."""
    STOPPING = "stopping"
    """Not delivered: the connection's generation is finalizing (close 1001 ``actor.sleeping``)."""
    DESTROYED = "destroyed"
    """Refused: the actor is being destroyed or is gone (``actor.destroyed``)."""


A = Admission
W = WorkKind

#: What each state admits, by kind of work. ``destroy_requested`` overrides every row with
#: DESTROYED (see :func:`admit`).
ADMISSION: Final[dict[LifecycleState, dict[WorkKind, Admission]]] = {
    S.LOADING: {W.CALL: A.HOLD, W.CONNECT: A.HOLD, W.MESSAGE: A.STOPPING,
                W.HIBERNATABLE_MESSAGE: A.HOLD, W.ALARM: A.HOLD},
    S.STARTED: {W.CALL: A.ADMIT, W.CONNECT: A.ADMIT, W.MESSAGE: A.ADMIT,
                W.HIBERNATABLE_MESSAGE: A.ADMIT, W.ALARM: A.ADMIT},
    S.SLEEP_GRACE: {W.CALL: A.ADMIT, W.CONNECT: A.HOLD, W.MESSAGE: A.ADMIT,
                    W.HIBERNATABLE_MESSAGE: A.ADMIT, W.ALARM: A.HOLD},
    S.SLEEP_FINALIZE: {W.CALL: A.HOLD, W.CONNECT: A.HOLD, W.MESSAGE: A.STOPPING,
                       W.HIBERNATABLE_MESSAGE: A.HOLD, W.ALARM: A.HOLD},
    S.ASLEEP: {W.CALL: A.HOLD, W.CONNECT: A.HOLD, W.MESSAGE: A.STOPPING,
               W.HIBERNATABLE_MESSAGE: A.HOLD, W.ALARM: A.HOLD},
    S.DESTROY_GRACE: dict.fromkeys(W, A.DESTROYED),
    S.DESTROYING: dict.fromkeys(W, A.DESTROYED),
    S.DESTROYED: dict.fromkeys(W, A.DESTROYED),
}  # fmt: skip


def admit(lifecycle: Lifecycle, kind: WorkKind) -> Admission:
    """Decide what ``lifecycle`` admits for ``kind``. Every check point calls this.

    O(1) and allocation-free: two dict lookups and a flag test.
    """
    if lifecycle._destroy_requested:
        return A.DESTROYED
    return ADMISSION[lifecycle._state][kind]
