"""Registry rules on a real SQLite file: persistence across restarts, fencing, many actors.

Real clock (SQLite runs in worker threads, which a jumping virtual clock does not mix with):
durations are kept tiny through small ActorOptions and every wait is bounded by
``trio.fail_after``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import actorcore
from actorcore import ActorContext, ActorOptions, LifecycleState, SQLiteStore
from actorcore.registry import host_of

S = LifecycleState

TIMEOUT = 20.0
"""Upper bound on any one wait in this module (real seconds); the tests take far less."""


class Counter(actorcore.Actor):
    name = "counter"
    options = ActorOptions(
        sleep_timeout=5.0,  # no idle sleep within a test unless it waits for one
        sleep_grace_period=0.5,
        state_save_interval=0.05,
        hook_timeout=2.0,
        ready_timeout=5.0,
        close_timeout=0.5,
    )

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        start = input["start"] if isinstance(input, dict) else 0
        return {"count": start}

    @actorcore.action
    async def increment(self, ctx: ActorContext, by: int = 1) -> int:
        ctx.state["count"] += by
        return int(ctx.state["count"])

    @actorcore.action
    async def get(self, ctx: ActorContext) -> int:
        return int(ctx.state["count"])

    @actorcore.action
    async def generation(self, ctx: ActorContext) -> int:
        return ctx.generation

    @actorcore.action
    async def increment_and_save(self, ctx: ActorContext, by: int) -> int:
        ctx.state["count"] += by
        await ctx.save_state()
        return int(ctx.state["count"])


class Sleepy(Counter):
    """Sleeps after 0.2 s without work."""

    name = "sleepy"
    options = ActorOptions(
        sleep_timeout=0.2,
        sleep_grace_period=0.5,
        state_save_interval=0.05,
        hook_timeout=2.0,
        ready_timeout=5.0,
        close_timeout=0.5,
    )


class Awake(Counter):
    """Never sleeps on idle: whatever it holds at drain is saved by the drain."""

    name = "awake"
    options = ActorOptions(
        no_sleep=True,
        sleep_grace_period=0.5,
        state_save_interval=60.0,  # no interval save within a test: only finalize saves
        hook_timeout=2.0,
        ready_timeout=5.0,
        close_timeout=0.5,
    )


ACTORS: list[type[actorcore.Actor]] = [Counter, Sleepy, Awake]


@asynccontextmanager
async def running(path: Path) -> AsyncIterator[tuple[actorcore.Registry, SQLiteStore]]:
    """A registry on a new SQLiteStore over ``path``; drained (bounded) when the block ends."""
    store = SQLiteStore(path)
    registry = actorcore.Registry(ACTORS, store=store)
    with trio.fail_after(TIMEOUT):
        async with registry:
            yield registry, store
    assert registry.statistics().running_generations == 0, "drain ended every generation"


async def stored_count(store: SQLiteStore, actor_id: str) -> int | None:
    """The count in the actor's last saved state (None: no state saved yet)."""
    record = await store.get_by_id(actor_id)
    assert record is not None, f"actor {actor_id} is in the store"
    if record.state is None:
        return None
    return int(json.loads(record.state)["count"])


async def wait_for_state(registry: actorcore.Registry, actor_id: str, state: S) -> None:
    with trio.fail_after(TIMEOUT):
        while registry.lifecycle(actor_id) is not state:  # noqa: ASYNC110 - test polling
            await trio.sleep(0.01)


async def test_counter_flow_on_sqlite(sqlite_path: Path) -> None:
    async with running(sqlite_path) as (registry, store):
        with trio.fail_after(TIMEOUT):
            handle = await registry.get_or_create("counter", "room-1")
            assert await handle.call("increment", 2) == 2
            assert registry.lifecycle(handle.actor_id) is S.STARTED
            await registry.sleep(handle.actor_id)
            assert registry.lifecycle(handle.actor_id) is S.ASLEEP
            assert host_of(registry).entry(handle.actor_id) is None, "an asleep actor leaves memory"
            assert await stored_count(store, handle.actor_id) == 2, "saved at finalize"
            again = await registry.get("counter", "room-1")
            assert again.actor_id == handle.actor_id
            by_id = await registry.get_by_id(handle.actor_id)
            assert await by_id.call("increment", 3) == 5, "state survives sleep"
            assert await by_id.call("generation") == 2
            await registry.destroy(handle.actor_id)
            assert registry.lifecycle(handle.actor_id) is S.DESTROYED
            assert await store.get_by_id(handle.actor_id) is None, "the row is deleted"
            with pytest.raises(actorcore.ActorNotFound):
                await registry.get("counter", "room-1")
            with pytest.raises(actorcore.ActorNotFound):
                await registry.get_by_id(handle.actor_id)
            with pytest.raises(actorcore.ActorDestroyed):
                await handle.call("get")
            assert registry.lifecycle("no-such-id") is None


async def test_idle_sleep_saves_state_on_sqlite(sqlite_path: Path) -> None:
    async with running(sqlite_path) as (registry, store):
        with trio.fail_after(TIMEOUT):
            handle = await registry.get_or_create("sleepy", "idle", input={"start": 40})
            assert await handle.call("increment", 2) == 42
            await wait_for_state(registry, handle.actor_id, S.ASLEEP)
            assert await stored_count(store, handle.actor_id) == 42
            assert await handle.call("get") == 42, "woken by the call, from the saved state"


async def test_restart_finds_every_actor_with_its_last_saved_state(sqlite_path: Path) -> None:
    async with running(sqlite_path) as (registry, _):
        with trio.fail_after(TIMEOUT):
            slept = await registry.get_or_create("counter", "slept")
            await slept.call("increment", 3)
            await registry.sleep(slept.actor_id)  # saved at finalize, then woken again:
            assert await slept.call("increment", 4) == 7
            await registry.sleep(slept.actor_id)
            idle = await registry.get_or_create("sleepy", "idle", input={"start": 10})
            await idle.call("increment", 1)
            await wait_for_state(registry, idle.actor_id, S.ASLEEP)
            explicit = await registry.get_or_create("awake", "explicit")
            assert await explicit.call("increment_and_save", 5) == 5
            at_drain = await registry.get_or_create("awake", "at-drain")
            assert await at_drain.call("increment", 6) == 6
            assert await at_drain.call("increment", 6) == 12
            fresh = await registry.get_or_create("awake", "fresh", input={"start": 99})
            assert registry.lifecycle(at_drain.actor_id) is S.STARTED
            generations = {h.actor_id: await h.call("generation") for h in (slept, at_drain)}
    expected = {
        ("counter", "slept"): (slept.actor_id, 7),
        ("sleepy", "idle"): (idle.actor_id, 11),
        ("awake", "explicit"): (explicit.actor_id, 5),
        ("awake", "at-drain"): (at_drain.actor_id, 12),  # only the drain's final save had it
        ("awake", "fresh"): (fresh.actor_id, 99),
    }
    async with running(sqlite_path) as (registry, store):
        with trio.fail_after(TIMEOUT):
            assert registry.statistics().actors_by_state == {}, "nothing is loaded up front"
            assert store.statistics().actors == len(expected)
            for (name, key), (actor_id, count) in expected.items():
                assert registry.lifecycle(actor_id) is S.ASLEEP, "known from the store alone"
                by_key = await registry.get(name, key)
                assert by_key.actor_id == actor_id
                by_id = await registry.get_by_id(actor_id)
                assert (by_id.name, by_id.key) == (name, key)
                assert await stored_count(store, actor_id) == count
                assert registry.lifecycle(actor_id) is S.ASLEEP, "get/get_by_id do not wake"
            for (name, key), (actor_id, count) in expected.items():
                handle = await registry.get_or_create(name, key)
                assert handle.actor_id == actor_id, "get_or_create finds, does not create"
                assert await handle.call("get") == count
            for actor_id, generation in generations.items():
                assert await registry.call(actor_id, "generation") == generation + 1, (
                    "generations continue across a restart"
                )


async def test_destroyed_actors_stay_gone_after_restart(sqlite_path: Path) -> None:
    async with running(sqlite_path) as (registry, _):
        with trio.fail_after(TIMEOUT):
            doomed = await registry.get_or_create("counter", "doomed")
            await doomed.call("increment", 5)
            await registry.sleep(doomed.actor_id)
            await registry.destroy(doomed.actor_id)  # woken so that on_destroy runs
            asleep_doomed = await registry.get_or_create("counter", "asleep-doomed")
            await registry.sleep(asleep_doomed.actor_id)
            assert host_of(registry).entry(asleep_doomed.actor_id) is None
            await registry.destroy(asleep_doomed.actor_id)
            kept = await registry.get_or_create("counter", "kept")
            await kept.call("increment", 1)
    async with running(sqlite_path) as (registry, store):
        with trio.fail_after(TIMEOUT):
            assert store.statistics().actors == 1
            assert await store.count() == 1
            for actor_id, key in (
                (doomed.actor_id, "doomed"),
                (asleep_doomed.actor_id, "asleep-doomed"),
            ):
                assert registry.lifecycle(actor_id) is None
                with pytest.raises(actorcore.ActorNotFound):
                    await registry.get_by_id(actor_id)
                with pytest.raises(actorcore.ActorNotFound):
                    await registry.get("counter", key)
                with pytest.raises(actorcore.ActorNotFound):
                    await registry.call(actor_id, "get")
                reborn = await registry.get_or_create("counter", key)
                assert reborn.actor_id != actor_id, "the key is free for a new actor"
                assert await reborn.call("get") == 0
            assert await registry.call(kept.actor_id, "get") == 1


async def test_fencing_refuses_a_save_from_an_old_generation(sqlite_path: Path) -> None:
    async with running(sqlite_path) as (registry, store):
        with trio.fail_after(TIMEOUT):
            handle = await registry.get_or_create("counter", "fenced")
            await handle.call("increment", 1)
            await registry.sleep(handle.actor_id)  # generation 1 ends
            assert await handle.call("increment", 1) == 2  # generation 2
            assert await handle.call("generation") == 2
            stale_before = store.statistics().stale_writes
            with pytest.raises(actorcore.StaleGeneration) as info:
                await store.save(handle.actor_id, 1, b'{"count":999}')
            assert info.value.code == "store.stale_generation" and not info.value.retryable
            with pytest.raises(actorcore.StaleGeneration):
                await store.delete(handle.actor_id, 1)
            assert store.statistics().stale_writes == stale_before + 2
            await registry.sleep(handle.actor_id)
            assert await stored_count(store, handle.actor_id) == 2, "the stale save changed nothing"
    async with running(sqlite_path) as (registry, store):
        with trio.fail_after(TIMEOUT):
            assert await registry.call(handle.actor_id, "generation") == 3
            with pytest.raises(actorcore.StaleGeneration):
                await store.save(handle.actor_id, 2, b'{"count":999}')  # the previous run's
            assert await registry.call(handle.actor_id, "get") == 2


async def test_many_actors_asleep_then_loaded_on_demand_after_restart(sqlite_path: Path) -> None:
    n = 300
    ids: dict[str, str] = {}
    async with running(sqlite_path) as (registry, _):
        with trio.fail_after(TIMEOUT):

            async def make(i: int) -> None:
                handle = await registry.get_or_create("awake", f"k{i}")
                await handle.call("increment", i)
                ids[handle.key] = handle.actor_id
                await registry.sleep(handle.actor_id)

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(make, i)
            assert len(set(ids.values())) == n
            stats = registry.statistics()
            assert stats.actors_by_state == {}, "every asleep actor left memory"
            assert stats.running_generations == 0
            assert stats.save_errors == 0
    async with running(sqlite_path) as (registry, store):
        with trio.fail_after(TIMEOUT):
            assert store.statistics().actors == n
            assert registry.statistics().actors_by_state == {}
            assert all(registry.lifecycle(actor_id) is S.ASLEEP for actor_id in ids.values())
            for i in range(0, n, 30):  # load a few, one at a time
                handle = await registry.get("awake", f"k{i}")
                assert handle.actor_id == ids[f"k{i}"]
                assert await handle.call("get") == i
            assert registry.statistics().actors_by_state == {"started": 10}, (
                "only the actors asked for were loaded"
            )
            counts: dict[int, int] = {}

            async def load(i: int) -> None:
                handle = await registry.get_or_create("awake", f"k{i}")
                assert handle.actor_id == ids[f"k{i}"]
                counts[i] = await handle.call("get")

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(load, i)
            assert counts == {i: i for i in range(n)}
            assert registry.statistics().actors_by_state == {"started": n}
            assert store.statistics().actors == n, "loading created nothing"


async def test_lifecycle_reports_asleep_for_an_actor_only_in_the_store(sqlite_path: Path) -> None:
    async with running(sqlite_path) as (registry, _):
        with trio.fail_after(TIMEOUT):
            handle = await registry.get_or_create("awake", "stored")
            assert registry.lifecycle(handle.actor_id) is S.STARTED
    async with running(sqlite_path) as (registry, _):
        assert host_of(registry).entry(handle.actor_id) is None
        assert registry.lifecycle(handle.actor_id) is S.ASLEEP
        assert registry.lifecycle("0" * 32) is None
        with trio.fail_after(TIMEOUT):
            assert await registry.call(handle.actor_id, "get") == 0
        assert registry.lifecycle(handle.actor_id) is S.STARTED


async def test_connect_path_writes_on_sqlite(sqlite_path: Path) -> None:
    """A new actor: one write, made once its creation hooks ran (it inserts the actor at
    generation 1 with its created state); an asleep one: one write that begins its generation."""
    async with running(sqlite_path) as (registry, store):
        with trio.fail_after(TIMEOUT):
            before = store.statistics()
            handle = await registry.get_or_create("counter", "k", input={"start": 5})
            after = store.statistics()
            assert (after.writes - before.writes, after.commits - before.commits) == (1, 1)
            assert await stored_count(store, handle.actor_id) == 5
            await registry.sleep(handle.actor_id)
            before = store.statistics()
            again = await registry.get_or_create("counter", "k")
            after = store.statistics()
            assert (after.writes - before.writes, after.commits - before.commits) == (1, 1)
            assert await again.call("generation") == 2
            assert await again.call("increment_and_save", 1) == 6
            assert await stored_count(store, handle.actor_id) == 6
