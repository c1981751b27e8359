"""The store contract as a runnable check, for third-party :class:`~actorcore.store.Store`\\ s.

``await actorcore.testing.store_contract(make_store)`` runs every rule of the contract that
the registry relies on (creation, generations as fencing tokens, fenced saves and deletes,
atomic begins, the synchronous probes, statistics, and the alarm methods if the store keeps
alarms) against fresh stores made by ``make_store``, each driven by
:func:`actorcore.store.open_store` (or, given a store, against that one store). It raises
:class:`AssertionError` naming the first rule broken, and returns the names of the rules
checked. It needs no test framework::

    async def test_my_store_keeps_the_contract(tmp_path):
        await actorcore.testing.store_contract(lambda: MyStore(tmp_path / "db"))
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable

import trio

from .errors import ActorNotFound, ScheduleLimit, StaleGeneration, StoreError
from .store import AlarmRecord, Store, open_store

__all__ = ["CONTRACT_TIMEOUT", "store_contract"]

CONTRACT_TIMEOUT = 10.0
"""Seconds each rule may take (a store that hangs fails the rule instead of the test run)."""

_Rule = Callable[[Store], Awaitable[None]]

_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("store_contract_prefix", default="")
"""Prepended to every actor id, key and alarm id a rule uses, so that the rules can share one
store (``store_contract`` given a store instead of a factory)."""


def _n(name: str) -> str:
    return _prefix.get() + name


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


async def _raises(error: type[Exception], call: Awaitable[object], what: str) -> None:
    try:
        await call
    except error:
        return
    except Exception as exc:
        raise AssertionError(
            f"{what}: raised {type(exc).__name__}, not {error.__name__}: {exc}"
        ) from exc
    raise AssertionError(f"{what}: did not raise {error.__name__}")


async def _started(store: Store, actor_id: str = "a1", key: str = "k1") -> int:
    actor_id, key = _n(actor_id), _n(key)
    await store.create(actor_id, "counter", key, b'{"start":1}')
    return (await store.begin_generation(actor_id)).generation


async def creates_and_finds(store: Store) -> None:
    """A created actor is found by key and by id, at generation 0, not initialized."""
    record = await store.create(_n("a1"), "counter", _n("k1"), b'{"n":1}')
    _check(
        (record.actor_id, record.name, record.key, record.generation)
        == (_n("a1"), "counter", _n("k1"), 0),
        f"create returned {record!r}",
    )
    _check(not record.initialized and record.state is None, "a new actor has no state")
    _check(record.input == b'{"n":1}', "create keeps the input")
    _check(await store.get_by_key("counter", _n("k1")) == record, "get_by_key finds it")
    _check(await store.get_by_id(_n("a1")) == record, "get_by_id finds it")
    _check(await store.get_by_key("counter", _n("k2")) is None, "another key is not found")
    _check(await store.get_by_id(_n("nobody")) is None, "an unknown id is not found")
    _check(store.exists_nowait(_n("a1")) and not store.exists_nowait(_n("nobody")), "exists_nowait")
    known = store.key_exists_nowait("counter", _n("k1"))
    _check(known is None or known is True, "key_exists_nowait of an existing key")
    unknown = store.key_exists_nowait("counter", _n("k2"))
    _check(unknown is None or unknown is False, "key_exists_nowait of a free key")


async def refuses_a_duplicate_key(store: Store) -> None:
    """``(name, key)`` is unique."""
    await store.create(_n("a1"), "counter", _n("k1"), None)
    await _raises(StoreError, store.create(_n("a2"), "counter", _n("k1"), None), "a duplicate key")
    await store.create(_n("a3"), "other", _n("k1"), None)  # another name: fine


async def begins_generations_atomically(store: Store) -> None:
    """Each begin returns the next generation, also when many run at once."""
    await store.create(_n("a1"), "counter", _n("k1"), None)
    first = await store.begin_generation(_n("a1"))
    _check(first.generation == 1, f"the first generation is 1, not {first.generation}")
    seen: list[int] = []

    async def begin() -> None:
        seen.append((await store.begin_generation(_n("a1"))).generation)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(begin)
    _check(sorted(seen) == list(range(2, 12)), f"concurrent begins returned {sorted(seen)}")
    await _raises(ActorNotFound, store.begin_generation(_n("nobody")), "begin of an unknown id")


async def begins_or_creates(store: Store) -> None:
    """``begin_or_create`` creates at generation 1, or begins the existing actor."""
    created = await store.begin_or_create("counter", _n("k1"), _n("a1"), b"[1]")
    _check(
        (created.actor_id, created.generation, created.initialized) == (_n("a1"), 1, False),
        f"begin_or_create of a new key returned {created!r}",
    )
    again = await store.begin_or_create("counter", _n("k1"), "ignored", None)
    _check(
        (again.actor_id, again.generation) == (_n("a1"), 2),
        f"begin_or_create of an existing key returned {again!r}",
    )


async def creates_initialized(store: Store) -> None:
    """``create_initialized`` writes an actor at generation 1 holding its state."""
    record = await store.create_initialized(_n("a1"), "counter", _n("k1"), b'{"n":2}')
    _check((record.generation, record.initialized) == (1, True), f"returned {record!r}")
    found = await store.get_by_id(_n("a1"))
    _check(found is not None and found.state == b'{"n":2}', f"then found {found!r}")
    await store.save(_n("a1"), 1, b'{"n":3}')  # its generation is the fencing token
    await _raises(
        StoreError,
        store.create_initialized(_n("a2"), "counter", _n("k1"), b"{}"),
        "a duplicate key",
    )


async def fences_saves(store: Store) -> None:
    """Only the current generation saves; a save marks the actor initialized."""
    generation = await _started(store)
    await store.save(_n("a1"), generation, b'{"n":5}')
    record = await store.get_by_id(_n("a1"))
    _check(
        record is not None and record.initialized and record.state == b'{"n":5}',
        f"after a save: {record!r}",
    )
    await store.begin_generation(_n("a1"))
    await _raises(
        StaleGeneration,
        store.save(_n("a1"), generation, b'{"n":6}'),
        "a save of a stale generation",
    )
    record = await store.get_by_id(_n("a1"))
    _check(record is not None and record.state == b'{"n":5}', "a refused save changed the state")
    await _raises(ActorNotFound, store.save(_n("nobody"), 1, b"{}"), "a save of an unknown id")
    _check(store.statistics().stale_writes >= 1, "stale_writes counts the refusal")


async def fences_deletes_and_frees_the_key(store: Store) -> None:
    """Only the current generation deletes; the key is then free for a new actor."""
    generation = await _started(store)
    await _raises(StaleGeneration, store.delete(_n("a1"), generation - 1), "a stale delete")
    await store.delete(_n("a1"), generation)
    _check(await store.get_by_id(_n("a1")) is None, "a deleted actor is gone")
    _check(not store.exists_nowait(_n("a1")), "exists_nowait after a delete")
    await store.create(_n("a2"), "counter", _n("k1"), None)
    await _raises(ActorNotFound, store.delete(_n("a1"), generation), "a second delete")


async def counts_writes(store: Store) -> None:
    """``statistics().writes`` grows with accepted writes."""
    before = store.statistics().writes
    await _started(store)
    _check(store.statistics().writes >= before + 2, "two writes were not counted")


async def keeps_alarms(store: Store) -> None:
    """(Stores with ``keeps_alarms``.) Alarms are fenced, limited, ordered, removable,
    retryable, and deleted with their actor."""
    if not store.keeps_alarms:
        return
    generation = await _started(store)
    other = await _started(store, "a2", "k2")

    def alarm(alarm_id: str, due: float, actor_id: str = _n("a1")) -> AlarmRecord:
        return AlarmRecord(alarm_id, actor_id, due, "ping", b"[1]")

    await store.add_alarm(alarm(_n("x3"), 30.0), generation, 10)
    await store.add_alarm(alarm(_n("x1"), 10.0), generation, 10)
    await store.add_alarm(alarm(_n("x2"), 10.0, _n("a2")), other, 10)
    await _raises(
        StaleGeneration, store.add_alarm(alarm(_n("x9"), 1.0), generation - 1, 10), "a stale alarm"
    )
    await _raises(ScheduleLimit, store.add_alarm(alarm(_n("x4"), 1.0), generation, 2), "max_alarms")
    listed = [a.alarm_id for a in await store.list_alarms(_n("a1"))]
    _check(listed == [_n("x1"), _n("x3")], f"list_alarms gave {listed}")
    first = [a.alarm_id for a in await store.next_alarms(2)]
    _check(first == [_n("x1"), _n("x2")], f"next_alarms(2) gave {first}, not by (due, alarm_id)")
    _check(await store.retry_alarm(_n("x3"), 40.0, 1), "retry_alarm of a pending alarm")
    moved = (await store.list_alarms(_n("a1")))[-1]
    _check((moved.due, moved.attempts) == (40.0, 1), f"after retry_alarm: {moved!r}")
    _check(not await store.remove_alarm(_n("a2"), _n("x1")), "another actor's alarm was removed")
    _check(await store.remove_alarm(_n("a1"), _n("x1")), "remove_alarm of a pending alarm")
    _check(not await store.remove_alarm(_n("a1"), _n("x1")), "a second remove_alarm")
    await store.delete(_n("a1"), generation)
    left = [a.alarm_id for a in await store.next_alarms(10)]
    _check(left == [_n("x2")], f"after deleting its actor, alarms left: {left}")


RULES: tuple[_Rule, ...] = (
    creates_and_finds,
    refuses_a_duplicate_key,
    begins_generations_atomically,
    begins_or_creates,
    creates_initialized,
    fences_saves,
    fences_deletes_and_frees_the_key,
    counts_writes,
    keeps_alarms,
)


async def store_contract(store: Store | Callable[[], Store]) -> list[str]:
    """Check every rule of the store contract; raise AssertionError naming the first rule
    broken; return the names of the rules checked.

    ``store``: a factory (a class, a lambda) makes a fresh store for each rule, run with
    :func:`~actorcore.store.open_store`; a store itself is opened once and every rule runs on
    it, each with ids and keys of its own."""
    checked: list[str] = []
    if isinstance(store, Store):
        async with open_store(store) as shared:
            for index, rule in enumerate(RULES):
                token = _prefix.set(f"contract{index}-")
                try:
                    await _check_rule(rule, shared)
                finally:
                    _prefix.reset(token)
                checked.append(rule.__name__)
        return checked
    for rule in RULES:
        async with open_store(store()) as fresh:
            await _check_rule(rule, fresh)
        checked.append(rule.__name__)
    return checked


async def _check_rule(rule: _Rule, store: Store) -> None:
    name = rule.__name__
    try:
        with trio.fail_after(CONTRACT_TIMEOUT):
            await rule(store)
    except AssertionError as exc:
        raise AssertionError(f"store contract, rule {name!r}: {exc}") from exc
    except trio.TooSlowError:
        raise AssertionError(
            f"store contract, rule {name!r}: took over {CONTRACT_TIMEOUT}s"
        ) from None
    except Exception as exc:
        raise AssertionError(
            f"store contract, rule {name!r}: raised {type(exc).__name__}: {exc}"
        ) from exc
