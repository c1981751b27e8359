"""The lifecycle table, driven directly (no trio): every transition, request and admission."""

from __future__ import annotations

import itertools

import pytest

from actorcore import LifecycleError
from actorcore.lifecycle import (
    ADMISSION,
    TRANSITIONS,
    Admission,
    Lifecycle,
    LifecycleEvent,
    LifecycleState,
    WorkKind,
    admit,
)

S = LifecycleState
E = LifecycleEvent


def at(state: S, *, sleep: bool = False, destroy: bool = False) -> Lifecycle:
    return Lifecycle(state=state, sleep_requested=sleep, destroy_requested=destroy)


def test_happy_path_sleep_then_wake() -> None:
    lc = Lifecycle()
    assert lc.state is S.ASLEEP
    assert lc.process_event(E.WAKE) is S.LOADING
    assert not lc.started
    assert lc.process_event(E.LOADED) is S.STARTED
    assert lc.started
    assert lc.process_event(E.SLEEP) is S.SLEEP_GRACE
    assert lc.started and lc.sleep_requested
    assert lc.process_event(E.GRACE_ENDED) is S.SLEEP_FINALIZE
    assert not lc.started
    assert lc.process_event(E.FINALIZED) is S.ASLEEP
    assert lc.process_event(E.WAKE) is S.LOADING
    assert not lc.sleep_requested, "a new generation starts without a sleep request"


def test_destroy_path() -> None:
    lc = at(S.STARTED)
    assert lc.process_event(E.DESTROY) is S.DESTROY_GRACE
    assert not lc.started
    assert lc.process_event(E.GRACE_ENDED) is S.DESTROYING
    assert lc.process_event(E.FINALIZED) is S.DESTROYED


def test_second_sleep_is_a_no_op() -> None:
    lc = at(S.STARTED)
    lc.process_event(E.SLEEP)
    before = (lc.state, lc.sleep_requested, lc.destroy_requested)
    assert lc.process_event(E.SLEEP) is S.SLEEP_GRACE
    assert (lc.state, lc.sleep_requested, lc.destroy_requested) == before


def test_destroy_escalates_sleep_grace() -> None:
    lc = at(S.STARTED)
    lc.process_event(E.SLEEP)
    assert lc.process_event(E.DESTROY) is S.DESTROY_GRACE
    assert lc.sleep_requested and lc.destroy_requested


def test_requests_during_loading_apply_after_start() -> None:
    lc = at(S.LOADING)
    assert lc.process_event(E.SLEEP) is S.LOADING
    assert lc.process_event(E.LOADED) is S.SLEEP_GRACE
    lc = at(S.LOADING)
    lc.process_event(E.SLEEP)
    lc.process_event(E.DESTROY)
    assert lc.process_event(E.LOADED) is S.DESTROY_GRACE, "destroy wins over sleep"


def test_destroy_while_asleep_or_finalizing_is_recorded() -> None:
    for state in (S.ASLEEP, S.SLEEP_FINALIZE):
        lc = at(state)
        assert lc.process_event(E.DESTROY) is state
        assert lc.destroy_requested
    lc = at(S.ASLEEP, destroy=True)
    lc.process_event(E.WAKE)
    assert lc.destroy_requested, "a pending destroy survives the wake"
    assert lc.process_event(E.LOADED) is S.DESTROY_GRACE


def test_load_failure_goes_back_to_sleep() -> None:
    lc = at(S.LOADING)
    assert lc.process_event(E.LOAD_FAILED) is S.ASLEEP


def test_requests_after_destroy_began_are_no_ops() -> None:
    for state in (S.DESTROY_GRACE, S.DESTROYING, S.DESTROYED):
        for event in (E.SLEEP, E.DESTROY):
            lc = at(state, destroy=state is not S.DESTROYED)
            assert lc.process_event(event) is state


@pytest.mark.parametrize(("state", "event"), [
    (s, e)
    for s, e in itertools.product(S, [E.WAKE, E.LOADED, E.LOAD_FAILED, E.GRACE_ENDED, E.FINALIZED])
    if e not in TRANSITIONS[s]
])  # fmt: skip
def test_every_missing_transition_is_an_error_naming_state_and_event(state: S, event: E) -> None:
    lc = at(state)
    with pytest.raises(LifecycleError) as info:
        lc.process_event(event)
    assert state.name in str(info.value) and event.name in str(info.value)
    assert lc.state is state, "a refused event changes nothing"


def test_started_flag_is_true_exactly_in_started_and_sleep_grace() -> None:
    assert {s for s in S if at(s).started} == {S.STARTED, S.SLEEP_GRACE}


def test_admission_table_is_complete() -> None:
    for state in S:
        assert set(ADMISSION[state]) == set(WorkKind)


def test_admission_rows() -> None:
    A = Admission
    W = WorkKind
    assert admit(at(S.STARTED), W.CALL) is A.ADMIT
    assert admit(at(S.STARTED), W.CONNECT) is A.ADMIT
    assert admit(at(S.SLEEP_GRACE, sleep=True), W.CALL) is A.ADMIT, "grace stays functional"
    assert admit(at(S.SLEEP_GRACE, sleep=True), W.MESSAGE) is A.ADMIT
    assert admit(at(S.SLEEP_GRACE, sleep=True), W.CONNECT) is A.HOLD
    for state in (S.LOADING, S.SLEEP_FINALIZE, S.ASLEEP):
        assert admit(at(state), W.CALL) is A.HOLD
        assert admit(at(state), W.CONNECT) is A.HOLD
        assert admit(at(state), W.HIBERNATABLE_MESSAGE) is A.HOLD
    for state in (S.SLEEP_FINALIZE, S.ASLEEP):
        assert admit(at(state), W.MESSAGE) is A.STOPPING
    for state in (S.DESTROY_GRACE, S.DESTROYING, S.DESTROYED):
        for kind in W:
            assert admit(at(state), kind) is A.DESTROYED
    for state in S:
        for kind in W:
            assert admit(at(state, destroy=True), kind) is A.DESTROYED, "destroy overrides"


def test_no_generation_after_finalize_admits_work() -> None:
    # Work is admitted only while the generation is started: never after its finalize began.
    for state in S:
        for kind in WorkKind:
            if admit(at(state), kind) is Admission.ADMIT:
                assert at(state).started


def test_load_failure_clears_pending_requests() -> None:
    # The waiters of a failed start (a destroy's included) got the error; nothing stays pending,
    # so the actor does not refuse all later work as "destroyed".
    lc = at(S.LOADING, sleep=True, destroy=True)
    assert lc.process_event(E.LOAD_FAILED) is S.ASLEEP
    assert not lc.sleep_requested and not lc.destroy_requested
    assert admit(lc, WorkKind.CALL) is Admission.HOLD


def test_state_and_flags_are_read_only() -> None:
    lc = Lifecycle()
    with pytest.raises(AttributeError):
        lc.state = S.STARTED  # type: ignore[misc]
    with pytest.raises(AttributeError):
        lc.sleep_requested = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        lc.destroy_requested = True  # type: ignore[misc]
    assert lc.state is S.ASLEEP


def test_a_hard_stop_is_an_event_of_the_table() -> None:
    for state in (S.LOADING, S.STARTED, S.SLEEP_GRACE, S.DESTROY_GRACE):
        assert at(state).process_event(E.CANCELLED) is S.ASLEEP
    for state in (S.SLEEP_FINALIZE, S.ASLEEP, S.DESTROYING, S.DESTROYED):
        with pytest.raises(LifecycleError):
            at(state).process_event(E.CANCELLED)


def test_admission_is_turned_into_an_action_in_one_place() -> None:
    """Check points ask ``ActorEntry.admitted``; only it calls ``admit()`` and reads its
    decision (the dispatcher, the registry and the alarm timer interpret none of their own)."""
    import ast
    import pathlib

    import actorcore

    package = pathlib.Path(actorcore.__file__).parent
    callers: set[str] = set()
    readers: set[str] = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        name = str(path.relative_to(package))
        for node in ast.walk(tree):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Name) and func.id == "admit":
                callers.add(name)
            owner = node.value if isinstance(node, ast.Attribute) else None
            if isinstance(owner, ast.Name) and owner.id == "Admission":
                readers.add(name)
    assert callers == {"generation.py"}
    assert readers == {"generation.py"}
