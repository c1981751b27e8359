"""Scheduled work (issue: scheduled work): ``ctx.schedule`` and the registry's alarm timer.

Virtual clock and the memory store (a restart reuses the same store); the registry's wall
clock is pinned to trio's clock (``WALL``), so due times are exact. One test at the end runs
the same rules across a restart on a real SQLite file, on the real clock.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import actorcore
from actorcore import (
    ActionNotFound,
    ActorContext,
    ActorOptions,
    LifecycleState,
    Registry,
    ScheduleError,
    ScheduleLimit,
)
from actorcore.registry import host_of
from actorcore.store import AlarmRecord, MemoryStore, SQLiteStore, Store

S = LifecycleState
EPOCH = 1_800_000_000.0
"""Wall time at trio time 0 in these tests."""


def wall() -> float:
    """The registries' wall clock here: trio's clock, shifted to a plausible Unix time."""
    return EPOCH + trio.current_time()


class Reminder(actorcore.Actor):
    name = "reminder"
    options = ActorOptions(
        sleep_timeout=10.0,
        sleep_grace_period=5.0,
        alarm_retry_delay=1.0,
        alarm_max_attempts=3,
        max_alarms=5,
        max_alarm_args_size=100,
    )
    runs: list[tuple[str, int, float, tuple[Any, ...]]] = []
    """(key, generation, trio time, args) of every ``ring``, shared by design (reset per test)."""
    failures: dict[str, int] = {}
    """Key -> runs of ``flaky`` that still raise."""

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"rung": 0}

    async def on_create(self, ctx: ActorContext) -> None:
        if ctx.key.startswith("self-"):
            await ctx.schedule.after(3, "ring", "from on_create")

    async def on_sleep(self, ctx: ActorContext) -> None:
        if ctx.key.startswith("slow-sleeper"):
            await trio.sleep(4)  # a long grace: alarms fall due during it

    @actorcore.action
    async def ring(self, ctx: ActorContext, *args: Any) -> None:
        ctx.state["rung"] += 1
        self.runs.append((ctx.key, ctx.generation, trio.current_time(), args))

    @actorcore.action
    async def flaky(self, ctx: ActorContext) -> None:
        left = self.failures.get(ctx.key, 0)
        if left:
            self.failures[ctx.key] = left - 1
            raise RuntimeError(f"flaky failure, {left} left")
        self.runs.append((ctx.key, ctx.generation, trio.current_time(), ()))

    @actorcore.action
    async def remind(self, ctx: ActorContext, seconds: float, *args: Any) -> str:
        return await ctx.schedule.after(seconds, "ring", *args)

    @actorcore.action
    async def remind_at(self, ctx: ActorContext, when: float) -> str:
        return await ctx.schedule.at(when, "ring", "at")

    @actorcore.action
    async def remind_flaky(self, ctx: ActorContext, seconds: float) -> str:
        return await ctx.schedule.after(seconds, "flaky")

    @actorcore.action
    async def cancel(self, ctx: ActorContext, alarm_id: str) -> bool:
        return await ctx.schedule.cancel(alarm_id)

    @actorcore.action
    async def pending(self, ctx: ActorContext) -> list[list[Any]]:
        return [[a.id, a.action, list(a.args), a.at, a.attempts] for a in await ctx.schedule.list()]

    @actorcore.action
    async def schedule_raw(self, ctx: ActorContext, how: str, *args: Any) -> str:
        if how == "after":
            return await ctx.schedule.after(*args)
        return await ctx.schedule.at(*args)

    @actorcore.action
    async def schedule_unjson(self, ctx: ActorContext) -> str:
        return await ctx.schedule.after(1, "ring", {1, 2})

    @actorcore.action
    async def nap(self, ctx: ActorContext) -> None:
        ctx.sleep()

    @actorcore.action
    async def generation(self, ctx: ActorContext) -> int:
        return ctx.generation

    @actorcore.action
    async def touch(self, ctx: ActorContext) -> None:
        ctx.state["touched"] = ctx.state.get("touched", 0) + 1

    @actorcore.action
    async def rung(self, ctx: ActorContext) -> int:
        return int(ctx.state["rung"])


@pytest.fixture(autouse=True)
def _reset() -> None:
    Reminder.runs = []
    Reminder.failures = {}


@asynccontextmanager
async def running(store: Store | None = None, **kwargs: Any) -> AsyncIterator[Registry]:
    async with Registry([Reminder], store or MemoryStore(), wall_clock=wall, **kwargs) as reg:
        yield reg


async def test_after_runs_the_action_with_its_args_when_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as reg:
        handle = await reg.get_or_create("reminder", "a")
        t0 = trio.current_time()
        alarm_id = await handle.call("remind", 30, "hello", {"n": 1})
        assert isinstance(alarm_id, str) and alarm_id
        [[listed_id, action, args, at, attempts]] = await handle.call("pending")
        assert (listed_id, action, args, attempts) == (alarm_id, "ring", ["hello", {"n": 1}], 0)
        assert at == pytest.approx(wall() + 30)
        await trio.sleep(29)
        assert Reminder.runs == []
        await trio.sleep(2)
        [(key, _, ran_at, ran_args)] = Reminder.runs
        assert (key, ran_args) == ("a", ("hello", {"n": 1}))
        assert ran_at == pytest.approx(t0 + 30)
        assert await handle.call("pending") == [], "removed once its action returned"
        assert reg.statistics().alarms.ran == 1


async def test_at_takes_unix_time_and_a_past_time_runs_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as reg:
        handle = await reg.get_or_create("reminder", "a")
        t0 = trio.current_time()
        await handle.call("remind_at", wall() + 100)
        await handle.call("remind_at", wall() - 50)
        await trio.sleep(1)
        assert [run[2] for run in Reminder.runs] == [pytest.approx(t0)]
        await trio.sleep(100)
        assert [run[2] for run in Reminder.runs] == [pytest.approx(t0), pytest.approx(t0 + 100)]


async def test_cancel_removes_a_pending_alarm(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as reg:
        handle = await reg.get_or_create("reminder", "a")
        other = await reg.get_or_create("reminder", "b")
        keep = await handle.call("remind", 10, "keep")
        drop = await handle.call("remind", 5, "drop")
        assert not await other.call("cancel", drop), "an actor cancels only its own alarms"
        assert await handle.call("cancel", drop)
        assert not await handle.call("cancel", drop), "a second cancel finds nothing"
        assert not await handle.call("cancel", "no-such-alarm")
        await trio.sleep(20)
        assert [run[3] for run in Reminder.runs] == [("keep",)]
        assert not await handle.call("cancel", keep), "it ran: nothing left to cancel"


async def test_an_alarm_wakes_its_asleep_actor_on_a_new_generation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as reg:
        handle = await reg.get_or_create("reminder", "a")
        await handle.call("remind", 60, "wake up")
        await handle.call("nap")
        await trio.sleep(1)
        assert reg.lifecycle(handle.actor_id) is S.ASLEEP
        assert host_of(reg).entries() == [], "an asleep actor with a pending alarm holds no memory"
        await trio.sleep(60)
        [(_, generation, _, args)] = Reminder.runs
        assert (generation, args) == (2, ("wake up",))
        assert await handle.call("rung") == 1


async def test_pending_alarms_keep_nothing_awake(autojump_clock: trio.testing.MockClock) -> None:
    # Two hundred actors, each asleep with an alarm: no entry, no task, and only the prefetch
    # (bounded) in memory; every alarm still runs once, in due order.
    async with running(alarm_prefetch=8) as reg:
        for i in range(200):
            handle = await reg.get_or_create("reminder", f"k{i}")
            await handle.call("remind", 1000 + (i * 7919) % 200, i)
            await handle.call("nap")
        await trio.sleep(5)
        assert host_of(reg).entries() == []
        assert reg.statistics().alarms.in_memory <= 8
        # The registry's own tasks (watchdog, alarm timer, the test's) and nothing per alarm.
        assert trio.lowlevel.current_statistics().tasks_living < 15
        await trio.sleep(1300)
        assert sorted(run[3][0] for run in Reminder.runs) == list(range(200))
        times = [run[2] for run in Reminder.runs]
        assert times == sorted(times)
        assert reg.statistics().alarms.refills > 1


async def test_alarms_survive_a_restart_and_due_ones_run_at_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with running(store) as reg:
        handle = await reg.get_or_create("reminder", "a")
        await handle.call("remind", 10, "early")
        await handle.call("remind", 1000, "late")
        actor_id = handle.actor_id
    assert Reminder.runs == []
    await trio.sleep(100)  # the process is down while "early" falls due
    async with running(store) as reg:
        restarted = trio.current_time()
        await trio.sleep(1)
        [(_, generation, ran_at, args)] = Reminder.runs
        assert args == ("early",)
        assert ran_at == pytest.approx(restarted), "a due alarm wakes its actor at start"
        assert generation == 2
        await trio.sleep(1000)
        assert [run[3] for run in Reminder.runs] == [("early",), ("late",)]
        assert await (await reg.get_by_id(actor_id)).call("pending") == []


async def test_an_alarm_due_during_grace_runs_on_the_next_generation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as reg:
        handle = await reg.get_or_create("reminder", "slow-sleeper")
        await handle.call("remind", 2, "during grace")
        await handle.call("nap")  # on_sleep takes 4 s: the alarm falls due in grace
        await trio.sleep(1)
        assert reg.lifecycle(handle.actor_id) is S.SLEEP_GRACE
        await trio.sleep(10)
        [(_, generation, ran_at, _)] = Reminder.runs
        assert generation == 2, "never run in the generation that was finishing"
        assert ran_at >= 4


async def test_an_alarm_due_during_finalize_runs_on_the_next_generation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with running(store) as reg:
        handle = await reg.get_or_create("reminder", "a")
        await handle.call("remind", 2, "during finalize")
        store.write_delay = 5  # the final save takes 5 s: the alarm falls due in finalize
        await handle.call("touch")  # changed after the last save: finalize must save
        await handle.call("nap")
        await trio.sleep(3)
        assert reg.lifecycle(handle.actor_id) is S.SLEEP_FINALIZE
        store.write_delay = 0
        await trio.sleep(10)
        [(_, generation, ran_at, _)] = Reminder.runs
        assert generation == 2 and ran_at >= 5


async def test_an_actor_with_a_pending_alarm_still_sleeps_when_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as reg:
        handle = await reg.get_or_create("reminder", "a")
        await handle.call("remind", 1000, "much later")
        await trio.sleep(Reminder.options.sleep_timeout + 1)
        assert reg.lifecycle(handle.actor_id) is S.ASLEEP
        assert host_of(reg).entries() == []


async def test_an_alarm_held_when_the_registry_drains_runs_after_the_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Due while its actor is in grace, then the registry drains: the alarm is refused, not
    # lost, and the next registry runs it.
    store = MemoryStore()
    async with running(store) as reg:
        handle = await reg.get_or_create("reminder", "slow-sleeper")
        await handle.call("remind", 2, "kept")
        await handle.call("nap")
        await trio.sleep(3)  # due, held for the next generation
    assert Reminder.runs == []
    async with running(store) as reg:
        await trio.sleep(1)
        assert [run[3] for run in Reminder.runs] == [("kept",)]


async def test_a_failing_alarm_is_retried_with_backoff_then_dropped(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    Reminder.failures = {"a": 10, "b": 1}
    async with running() as reg:
        a = await reg.get_or_create("reminder", "a")
        b = await reg.get_or_create("reminder", "b")
        await a.call("remind_flaky", 5)
        await b.call("remind_flaky", 5)
        await trio.sleep(5.5)
        [[_, _, _, _, attempts]] = await a.call("pending")
        assert attempts == 1, "a failed run is counted in the store"
        with caplog.at_level(logging.ERROR, logger="actorcore.alarms"):
            await trio.sleep(100)
        # b: failed once, ran on its retry 1 s later. a: failed at 5, 6 and 8 (delay 1, 2),
        # and alarm_max_attempts=3 drops it after its third failure.
        assert [(run[0], run[2]) for run in Reminder.runs] == [("b", pytest.approx(6.0))]
        assert Reminder.failures["a"] == 7
        assert await a.call("pending") == [] and await b.call("pending") == []
        dropped = [r for r in caplog.records if "dropped after 3 failed runs" in r.getMessage()]
        assert len(dropped) == 1 and "flaky failure" in dropped[0].getMessage()
        stats = reg.statistics().alarms
        assert (stats.ran, stats.retried, stats.dropped) == (1, 3, 1)


async def test_destroy_cancels_the_actors_alarms(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    async with running(store) as reg:
        handle = await reg.get_or_create("reminder", "a")
        await handle.call("remind", 10, "never")
        await reg.destroy(handle.actor_id)
        assert await store.next_alarms(10) == []
        await trio.sleep(20)
        assert Reminder.runs == []
        assert reg.statistics().alarms.in_memory == 0


async def test_an_alarm_scheduled_by_on_create_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A new actor is written to the store at the end of its first start; an alarm from
    # on_create needs the row first, and the actor must still be created exactly once.
    store = MemoryStore()
    async with running(store) as reg:
        handle = await reg.get_or_create("reminder", "self-1")
        assert await handle.call("rung") == 0
        record = await store.get_by_id(handle.actor_id)
        assert record is not None and record.initialized and record.generation == 1
        await trio.sleep(5)
        assert [run[3] for run in Reminder.runs] == [("from on_create",)]


async def test_limits_and_bad_requests_get_typed_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as reg:
        handle = await reg.get_or_create("reminder", "a")
        for i in range(5):
            await handle.call("remind", 100, i)
        with pytest.raises(ScheduleLimit, match="max_alarms=5"):
            await handle.call("remind", 100, "one too many")
        other = await reg.get_or_create("reminder", "b")
        with pytest.raises(ScheduleLimit, match="max_alarm_args_size=100"):
            await other.call("remind", 1, "x" * 200)
        with pytest.raises(ScheduleError, match="not JSON"):
            await other.call("schedule_unjson")
        with pytest.raises(ActionNotFound):
            await other.call("schedule_raw", "after", 1, "no_such_action")
        for bad in (-1, float("nan"), "soon", True):
            with pytest.raises(ScheduleError):
                await other.call("schedule_raw", "after", bad, "ring")
        for bad in (float("inf"), None):
            with pytest.raises(ScheduleError):
                await other.call("schedule_raw", "at", bad, "ring")
        assert await other.call("pending") == [], "a refused alarm leaves nothing behind"


class StaleReads(MemoryStore):
    """Reads the next alarms, then takes 0.3 s to answer: writes made meanwhile are missing
    from (or undone in) the answer, as with a slow disk."""

    async def next_alarms(self, limit: int) -> list[AlarmRecord]:
        alarms = await super().next_alarms(limit)
        await trio.sleep(0.3)
        return alarms


@pytest.mark.parametrize("stale_reads", [False, True])
@pytest.mark.parametrize("seed", range(8))
async def test_many_alarms_with_ties_and_cancels_each_run_once(
    autojump_clock: trio.testing.MockClock, seed: int, stale_reads: bool
) -> None:
    # A tiny prefetch and running bound, ties on due times, cancels and alarms added while
    # others run: the prefetch must stay exact (nothing lost, nothing run twice).
    rng = random.Random(seed)
    store = StaleReads() if stale_reads else MemoryStore()
    async with running(store, alarm_prefetch=3, max_running_alarms=2) as reg:
        handles = [await reg.get_or_create("reminder", f"k{i}") for i in range(4)]
        expected: set[str] = set()
        for round_ in range(8):
            made: list[tuple[Any, str, str]] = []
            for j in range(5):
                tag = f"{round_}.{j}"
                handle = handles[rng.randrange(4)]
                delay = rng.choice([0, 1, 1, 2, 5])
                try:
                    made.append((handle, await handle.call("remind", delay, tag), tag))
                except ScheduleLimit:
                    continue  # that actor holds max_alarms=5 pending ones: not scheduled
            cancelled = set()
            for handle, alarm_id, tag in rng.sample(made, min(2, len(made))):
                if await handle.call("cancel", alarm_id):  # False: it ran already
                    cancelled.add(tag)
            expected.update(tag for _, _, tag in made if tag not in cancelled)
            await trio.sleep(rng.choice([0, 0.5, 1]))
        await trio.sleep(10)
        ran = [run[3][0] for run in Reminder.runs]
        assert len(ran) == len(set(ran)), "no alarm ran twice"
        assert set(ran) == expected


async def test_alarms_survive_a_restart_on_sqlite(tmp_path: Path) -> None:
    # Real clock and file: the second registry maps wall time afresh and runs what is due.
    path = tmp_path / "alarms.db"
    with trio.fail_after(20):
        async with Registry([Reminder], SQLiteStore(path)) as reg:
            handle = await reg.get_or_create("reminder", "a")
            await handle.call("remind", 0.2, "after restart")
            await handle.call("remind", 3600, "much later")
        assert Reminder.runs == []
        await trio.sleep(0.3)
        async with Registry([Reminder], SQLiteStore(path)) as reg:
            while not Reminder.runs:  # noqa: ASYNC110 - the alarm runs in another task
                await trio.sleep(0.01)
            assert [run[3] for run in Reminder.runs] == [("after restart",)]
            [[_, _, args, _, _]] = await (await reg.get_by_id(handle.actor_id)).call("pending")
            assert args == ["much later"]


async def test_the_example_room_closes_itself_after_an_idle_hour(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from examples.reminder import Reminders, Room

    async with Registry([Reminders, Room], wall_clock=wall) as reg:
        room = await reg.get_or_create("room", "lobby")
        await trio.sleep(3000)
        assert await room.call("post", "still here") == 1  # moves the close an hour on
        await trio.sleep(3000)
        assert room.lifecycle is not S.DESTROYED
        await trio.sleep(601)
        assert room.lifecycle is S.DESTROYED
        me = await reg.get_or_create("reminders", "me")
        await me.call("remind", 10, "stretch")
        await trio.sleep(11)
        assert await me.call("fired") == [{"text": "stretch", "generation": 2}]


async def test_a_store_without_alarms_refuses_to_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class NoAlarms(MemoryStore):
        keeps_alarms = False

    async with running(NoAlarms()) as reg:
        handle = await reg.get_or_create("reminder", "a")
        with pytest.raises(ScheduleError, match="keeps no alarms"):
            await handle.call("remind", 1)
        with pytest.raises(ScheduleError, match="keeps no alarms"):
            await handle.call("pending")
        with pytest.raises(ScheduleError, match="keeps no alarms"):
            await handle.call("cancel", "x")


async def test_run_due_alarms_waits_for_the_due_ones_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from actorcore.testing import run_due_alarms

    async with running() as reg:
        handle = await reg.get_or_create("reminder", "a")
        await handle.call("remind_at", wall() - 1)  # already due
        await handle.call("remind", 50, "later")
        assert await run_due_alarms(reg, timeout=1) == 1
        assert [run[3] for run in Reminder.runs] == [("at",)]
        assert await run_due_alarms(reg, timeout=1) == 0, "the later one is not due"
        autojump_clock.jump(50)
        assert await run_due_alarms(reg, timeout=1) == 1
        assert [run[3] for run in Reminder.runs] == [("at",), ("later",)]


async def test_a_failed_lookup_is_retried_not_lost(autojump_clock: trio.testing.MockClock) -> None:
    class FlakyReads(MemoryStore):
        failures = 0

        async def get_by_id(self, actor_id: str) -> Any:
            if self.failures:
                self.failures -= 1
                raise actorcore.StoreError("get_by_id failed: disk unplugged")
            return await super().get_by_id(actor_id)

    store = FlakyReads()
    async with running(store) as reg:
        handle = await reg.get_or_create("reminder", "a")
        await handle.call("remind", 10, "despite the store")
        await handle.call("nap")
        await trio.sleep(1)
        assert host_of(reg).entries() == []  # the alarm's lookup must read the store
        store.failures = 1
        await trio.sleep(10)
        assert Reminder.runs == [] and reg.statistics().alarms.retried == 1
        await trio.sleep(2)  # alarm_retry_delay: 1 s
        assert [run[3] for run in Reminder.runs] == [("despite the store",)]
