"""Registry and generation rules (issue: core), on the virtual clock with the memory store."""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest
import trio
import trio.testing

import actorcore
from actorcore import ActorContext, ActorOptions, LifecycleState
from actorcore.registry import host_of
from actorcore.store import open_store

S = LifecycleState


class Counter(actorcore.Actor):
    name = "counter"
    options = ActorOptions(sleep_timeout=30.0, sleep_grace_period=15.0)
    log: list[str] = []  # shared by design, reset per test

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        start = input["start"] if isinstance(input, dict) else 0
        return {"count": start}

    async def on_create(self, ctx: ActorContext) -> None:
        self.log.append(f"create:{ctx.generation}")

    async def on_wake(self, ctx: ActorContext) -> None:
        self.log.append(f"wake:{ctx.generation}")

    async def on_sleep(self, ctx: ActorContext) -> None:
        self.log.append(f"sleep:{ctx.generation}")

    async def on_destroy(self, ctx: ActorContext) -> None:
        self.log.append(f"destroy:{ctx.generation}")

    @actorcore.action
    async def increment(self, ctx: ActorContext, by: int = 1) -> int:
        ctx.state["count"] += by
        return int(ctx.state["count"])

    @actorcore.action
    async def get(self, ctx: ActorContext) -> int:
        return int(ctx.state["count"])

    @actorcore.action
    async def slow(self, ctx: ActorContext, seconds: float) -> str:
        await trio.sleep(seconds)
        ctx.state["count"] += 100
        return "done"

    @actorcore.action
    async def info(self, ctx: ActorContext) -> dict[str, Any]:
        return {
            "generation": ctx.generation,
            "lifecycle": ctx.lifecycle.value,
            "started": ctx.started,
            "sleep_requested": ctx.sleep_requested,
        }

    @actorcore.action
    async def boom(self, ctx: ActorContext) -> None:
        raise ValueError("boom")

    @actorcore.action
    async def go_to_sleep(self, ctx: ActorContext) -> None:
        ctx.sleep()

    @actorcore.action
    async def self_destroy(self, ctx: ActorContext) -> None:
        ctx.destroy()


async def wait_for_state(registry: actorcore.Registry, actor_id: str, state: S) -> None:
    with trio.fail_after(100):
        while registry.lifecycle(actor_id) is not state:  # noqa: ASYNC110 - test polling
            await trio.sleep(0.01)


@pytest.fixture(autouse=True)
def _reset_log() -> None:
    Counter.log = []


async def test_counter_example_from_the_readme(autojump_clock: Any, make_registry: Any) -> None:
    registry = await make_registry([Counter])
    handle = await registry.get_or_create("counter", "room-1", input=None)
    assert await handle.call("increment", 2) == 2
    assert registry.lifecycle(handle.actor_id) is S.STARTED
    await registry.sleep(handle.actor_id)
    assert registry.lifecycle(handle.actor_id) is S.ASLEEP
    again = await registry.get("counter", "room-1")
    assert again.actor_id == handle.actor_id
    by_id = await registry.get_by_id(handle.actor_id)
    assert await by_id.call("increment", 3) == 5, "state survives sleep"
    await registry.destroy(handle.actor_id)
    assert registry.lifecycle(handle.actor_id) is S.DESTROYED
    with pytest.raises(actorcore.ActorNotFound):
        await registry.get("counter", "room-1")
    with pytest.raises(actorcore.ActorNotFound) as info:
        await registry.get_by_id(handle.actor_id)
    assert info.value.code == "actor.not_found"
    assert registry.lifecycle("no-such-id") is None


async def test_async_with_drains_and_saves(autojump_clock: Any) -> None:
    store = actorcore.MemoryStore()
    registry = actorcore.Registry([Counter], store=store)
    async with registry:
        handle = await registry.get_or_create("counter", "a")
        await handle.call("increment", 7)
    assert Counter.log == ["create:1", "wake:1", "sleep:1"]
    async with open_store(store):
        record = await store.get_by_id(handle.actor_id)
    assert record is not None and record.state == b'{"count":7}'
    assert registry.draining
    with pytest.raises(actorcore.RuntimeShutdown):
        await registry.get_or_create("counter", "b")


async def test_drain_pauses_the_garbage_collector_and_restores_it(autojump_clock: Any) -> None:
    """With ``pause_gc=True`` the drain turns the cyclic GC off (its full passes stalled the
    loop while thousands of connections closed) and the last of two nested registries restores
    it as it was."""
    seen: list[bool] = []

    class Sleeper(actorcore.Actor):
        name = "sleeper"

        async def on_sleep(self, ctx: ActorContext) -> None:
            seen.append(gc.isenabled())
            await trio.sleep(0.5 if ctx.key == "a" else 2)

    assert gc.isenabled()
    async with actorcore.Registry([Sleeper], pause_gc=True) as outer:
        await outer.get_or_create("sleeper", "a")
        async with actorcore.Registry([Sleeper], pause_gc=True) as inner:
            await inner.get_or_create("sleeper", "b")
            inner.request_shutdown()
            await outer.shutdown()  # drains in 0.5 s while the inner one drains for 2 s
            assert seen == [False, False]
            assert not gc.isenabled(), "still paused: the inner drain runs"
        assert gc.isenabled(), "restored once both drains ended"
    gc.disable()
    try:
        async with actorcore.Registry([Sleeper], pause_gc=True) as registry:
            await registry.get_or_create("sleeper", "c")
        assert not gc.isenabled(), "a collector the application turned off stays off"
    finally:
        gc.enable()


async def test_hooks_order_and_generations(autojump_clock: Any, make_registry: Any) -> None:
    registry = await make_registry([Counter])
    handle = await registry.get_or_create("counter", "k", input={"start": 10})
    assert await handle.call("get") == 10, "create_state got the input"
    await registry.sleep(handle.actor_id)
    info = await handle.call("info")
    assert info["generation"] == 2
    await registry.sleep(handle.actor_id)
    await registry.destroy(handle.actor_id)
    assert Counter.log == [
        "create:1",
        "wake:1",
        "sleep:1",
        "wake:2",
        "sleep:2",
        "wake:3",
        "destroy:3",
    ]


async def test_second_sleep_is_a_no_op(autojump_clock: Any, make_registry: Any) -> None:
    class SlowSleep(Counter):
        name = "slowsleep"

        async def on_sleep(self, ctx: ActorContext) -> None:
            self.log.append("on_sleep")
            await trio.sleep(5)

    registry = await make_registry([SlowSleep])
    handle = await registry.get_or_create("slowsleep", "k")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.sleep, handle.actor_id)
        await trio.sleep(1)
        await registry.sleep(handle.actor_id)
    assert Counter.log.count("on_sleep") == 1
    assert registry.lifecycle(handle.actor_id) is S.ASLEEP


async def test_destroy_during_sleep_grace_escalates(
    autojump_clock: Any, make_registry: Any
) -> None:
    class SlowSleep(Counter):
        name = "slowsleep"

        async def on_sleep(self, ctx: ActorContext) -> None:
            self.log.append("on_sleep")
            await trio.sleep(5)

    store = actorcore.MemoryStore()
    registry = await make_registry([SlowSleep], store=store)
    handle = await registry.get_or_create("slowsleep", "k")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.sleep, handle.actor_id)  # must return normally
        await trio.sleep(1)
        assert registry.lifecycle(handle.actor_id) is S.SLEEP_GRACE
        await registry.destroy(handle.actor_id)
    assert "destroy:1" in Counter.log
    assert registry.lifecycle(handle.actor_id) is S.DESTROYED
    assert await store.get_by_id(handle.actor_id) is None, "state was deleted"
    fresh = await registry.get_or_create("slowsleep", "k")
    assert fresh.actor_id != handle.actor_id
    assert await fresh.call("get") == 0


async def test_sleep_requested_during_loading_applies_after_start(
    autojump_clock: Any, make_registry: Any
) -> None:
    class SlowWake(Counter):
        name = "slowwake"

        async def on_wake(self, ctx: ActorContext) -> None:
            await trio.sleep(2)
            self.log.append(f"wake:{ctx.generation}")

    registry = await make_registry([SlowWake])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.get_or_create, "slowwake", "k")
        await trio.sleep(1)
        entry = host_of(registry).entries()[0]
        assert entry.lifecycle.state is S.LOADING
        await registry.sleep(entry.actor_id)
    assert Counter.log == ["create:1", "wake:1", "sleep:1"]


async def test_destroy_requested_during_loading(autojump_clock: Any, make_registry: Any) -> None:
    class SlowWake(Counter):
        name = "slowwake"

        async def on_wake(self, ctx: ActorContext) -> None:
            await trio.sleep(2)

    registry = await make_registry([SlowWake])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_expect_destroyed, registry.get_or_create("slowwake", "k"))
        await trio.sleep(1)
        actor_id = host_of(registry).entries()[0].actor_id
        assert registry.lifecycle(actor_id) is S.LOADING
        nursery.start_soon(registry.destroy, actor_id)
        await trio.sleep(0.5)
        assert registry.lifecycle(actor_id) is S.LOADING, "the start finishes first"
        with pytest.raises(actorcore.ActorDestroyed):
            await registry.call(actor_id, "get")
    assert registry.lifecycle(actor_id) is S.DESTROYED
    assert "destroy:1" in Counter.log


async def _expect_destroyed(coro: Any) -> None:
    with pytest.raises(actorcore.ActorDestroyed):
        await coro


async def test_work_during_sleep_grace_is_served(autojump_clock: Any, make_registry: Any) -> None:
    class SlowSleep(Counter):
        name = "slowsleep"

        async def on_sleep(self, ctx: ActorContext) -> None:
            await trio.sleep(5)

    registry = await make_registry([SlowSleep])
    handle = await registry.get_or_create("slowsleep", "k")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.sleep, handle.actor_id)
        await trio.sleep(1)
        info = await handle.call("info")
        assert info == {
            "generation": 1,
            "lifecycle": "sleep_grace",
            "started": True,
            "sleep_requested": True,
        }
        assert await handle.call("increment") == 1


async def test_grace_waits_for_in_flight_work_keep_awake_and_wait_until(
    autojump_clock: Any,
    make_registry: Any,
) -> None:
    events: list[str] = []
    t0 = [0.0]

    class Busy(Counter):
        name = "busy"

        @actorcore.action
        async def hold(self, ctx: ActorContext) -> None:
            async with ctx.keep_awake("holding"):
                await trio.sleep(3)
            events.append(f"kept:{trio.current_time() - t0[0]:.0f}")

        @actorcore.action
        async def later(self, ctx: ActorContext) -> None:
            async def work() -> None:
                await trio.sleep(6)
                ctx.state["count"] = 42
                events.append(f"waited:{trio.current_time() - t0[0]:.0f}")

            ctx.wait_until(work)

    registry = await make_registry([Busy])
    handle = await registry.get_or_create("busy", "k")
    start = t0[0] = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle.call, "hold")
        await handle.call("later")
        await trio.sleep(0.1)
        await registry.sleep(handle.actor_id)
        elapsed = trio.current_time() - start
    assert events == ["kept:3", "waited:6"]
    assert 6 <= elapsed < 7, "grace ended as soon as the work was done"
    assert await handle.call("get") == 42, "state written by wait_until was saved"


async def test_grace_deadline_cancels_what_is_left_and_logs_it(
    autojump_clock: Any, make_registry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Stuck(Counter):
        name = "stuck"
        options = ActorOptions(sleep_grace_period=2.0, action_timeout=1000)

    registry = await make_registry([Stuck])
    handle = await registry.get_or_create("stuck", "k")
    outcome: list[BaseException] = []

    async def caller() -> None:
        try:
            await handle.call("slow", 100)
        except actorcore.ActorError as exc:
            outcome.append(exc)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        await trio.sleep(0.1)
        await registry.sleep(handle.actor_id)
    assert trio.current_time() - start < 3
    assert isinstance(outcome[0], actorcore.ActorStopping)
    assert outcome[0].retryable
    assert "action:slow" in caplog.text
    assert await handle.call("get") == 0, "the cancelled action's effect never happened"


async def test_failing_or_hanging_on_sleep_is_bounded_and_keeps_saved_state(
    autojump_clock: Any,
    make_registry: Any,
) -> None:
    class BadSleep(Counter):
        name = "badsleep"
        options = ActorOptions(sleep_grace_period=3.0)

        async def on_sleep(self, ctx: ActorContext) -> None:
            ctx.state["count"] += 1
            await ctx.save_state()
            if ctx.vars.get("hang"):
                await trio.sleep_forever()
            raise RuntimeError("on_sleep failed")

        @actorcore.action
        async def set_hang(self, ctx: ActorContext) -> None:
            ctx.vars["hang"] = True

    store = actorcore.MemoryStore()
    registry = await make_registry([BadSleep], store=store)
    handle = await registry.get_or_create("badsleep", "k")
    await handle.call("increment", 10)
    await registry.sleep(handle.actor_id)  # raising on_sleep
    assert await handle.call("get") == 11
    await handle.call("set_hang")
    start = trio.current_time()
    await registry.sleep(handle.actor_id)  # hanging on_sleep
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
    record = await store.get_by_id(handle.actor_id)
    assert record is not None and record.state == b'{"count":12}'


async def test_work_for_finalizing_or_asleep_actor_lands_on_next_generation(
    autojump_clock: Any,
    make_registry: Any,
) -> None:
    class SlowFinalize(Counter):
        name = "slowfin"

    store = actorcore.MemoryStore(write_delay=2.0)
    registry = await make_registry([SlowFinalize], store=store)
    handle = await registry.get_or_create("slowfin", "k")
    await handle.call("increment")  # a change, so finalize has a (slow) save to make
    results: list[Any] = []

    async def call_later() -> None:
        results.append(await handle.call("info"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.sleep, handle.actor_id)
        await wait_for_state(registry, handle.actor_id, S.SLEEP_FINALIZE)
        nursery.start_soon(call_later)
    assert results[0]["generation"] == 2
    assert results[0]["lifecycle"] == "started"
    assert registry.lifecycle(handle.actor_id) is S.STARTED, "woken for the held work"


async def test_work_for_destroying_actor_fails_with_actor_destroyed(
    autojump_clock: Any, make_registry: Any
) -> None:
    class SlowDestroy(Counter):
        name = "slowdestroy"

        async def on_destroy(self, ctx: ActorContext) -> None:
            await trio.sleep(5)

    registry = await make_registry([SlowDestroy])
    handle = await registry.get_or_create("slowdestroy", "k")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.destroy, handle.actor_id)
        await trio.sleep(1)
        assert registry.lifecycle(handle.actor_id) is S.DESTROY_GRACE
        with pytest.raises(actorcore.ActorDestroyed) as info:
            await handle.call("get")
        assert info.value.code == "actor.destroyed" and not info.value.retryable
        with pytest.raises(actorcore.ActorDestroyed):
            await registry.get_or_create("slowdestroy", "k")
    with pytest.raises(actorcore.ActorDestroyed):
        await handle.call("get")


async def test_ctx_sleep_and_destroy_from_an_action(
    autojump_clock: Any, make_registry: Any
) -> None:
    registry = await make_registry([Counter])
    handle = await registry.get_or_create("counter", "k")
    await handle.call("increment")
    await handle.call("go_to_sleep")
    await wait_for_state(registry, handle.actor_id, S.ASLEEP)
    assert await handle.call("increment") == 2
    await handle.call("self_destroy")
    await wait_for_state(registry, handle.actor_id, S.DESTROYED)


async def test_idle_sleep_and_rearm(autojump_clock: Any, make_registry: Any) -> None:
    registry = await make_registry([Counter])
    handle = await registry.get_or_create("counter", "k")
    for _ in range(5):
        await trio.sleep(20)
        await handle.call("increment")  # activity re-arms the 30 s timer
    assert registry.lifecycle(handle.actor_id) is S.STARTED
    await trio.sleep(29)
    assert registry.lifecycle(handle.actor_id) is S.STARTED
    await trio.sleep(2)
    assert registry.lifecycle(handle.actor_id) is S.ASLEEP
    assert Counter.log[-1] == "sleep:1"


async def test_keep_awake_blocks_idle_sleep_and_no_sleep_option(
    autojump_clock: Any, make_registry: Any
) -> None:
    class Holder(Counter):
        name = "holder"
        options = ActorOptions(action_timeout=1000)

        @actorcore.action
        async def hold(self, ctx: ActorContext, seconds: float) -> None:
            async with ctx.keep_awake():
                await trio.sleep(seconds)

    class Insomniac(Counter):
        name = "insomniac"
        options = ActorOptions(no_sleep=True)

    registry = await make_registry([Holder, Insomniac])
    holder = await registry.get_or_create("holder", "k")
    insomniac = await registry.get_or_create("insomniac", "k")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder.call, "hold", 100)
        await trio.sleep(99)
        assert registry.lifecycle(holder.actor_id) is S.STARTED
    await trio.sleep(31)
    assert registry.lifecycle(holder.actor_id) is S.ASLEEP
    assert registry.lifecycle(insomniac.actor_id) is S.STARTED
    await trio.sleep(3600 * 5)
    assert registry.lifecycle(insomniac.actor_id) is S.STARTED


async def test_action_error_is_contained(autojump_clock: Any, make_registry: Any) -> None:
    registry = await make_registry([Counter])
    handle = await registry.get_or_create("counter", "k")
    with pytest.raises(ValueError, match="boom"):
        await handle.call("boom")
    assert await handle.call("increment") == 1
    with pytest.raises(actorcore.ActionNotFound) as info:
        await handle.call("nope")
    assert info.value.code == "actor.action_not_found"


async def test_start_failure_reaches_every_waiter_and_next_request_retries(
    autojump_clock: Any,
    make_registry: Any,
) -> None:
    attempts: list[int] = []

    class Flaky(Counter):
        name = "flaky"

        async def on_wake(self, ctx: ActorContext) -> None:
            attempts.append(ctx.generation)
            await trio.sleep(1)
            if len(attempts) == 1:
                raise RuntimeError("first wake fails")

    registry = await make_registry([Flaky])
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await registry.get_or_create("flaky", "k")
        except actorcore.ActorStartFailed as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
    assert len(errors) == 3
    assert all(e.code == "actor.start_failed" and e.retryable for e in errors)
    handle = await registry.get_or_create("flaky", "k")
    assert await handle.call("increment") == 1
    assert attempts == [1, 2]


async def test_ready_timeout(autojump_clock: Any, make_registry: Any) -> None:
    class Sluggish(Counter):
        name = "sluggish"
        options = ActorOptions(ready_timeout=2.0, hook_timeout=100.0)

        async def on_wake(self, ctx: ActorContext) -> None:
            await trio.sleep(10)

    registry = await make_registry([Sluggish])
    with pytest.raises(actorcore.ActorReadyTimeout) as info:
        await registry.get_or_create("sluggish", "k")
    assert info.value.code == "actor.ready_timeout" and info.value.retryable


async def test_state_saved_at_interval_when_changed(
    autojump_clock: Any, make_registry: Any
) -> None:
    store = actorcore.MemoryStore()
    registry = await make_registry([Counter], store=store)
    handle = await registry.get_or_create("counter", "k")
    await handle.call("increment", 5)
    await trio.sleep(1.5)
    record = await store.get_by_id(handle.actor_id)
    assert record is not None and record.state == b'{"count":5}'
    writes = store.statistics().writes
    for _ in range(5):
        await handle.call("get")  # activity without change
        await trio.sleep(2)
    assert store.statistics().writes == writes, "unchanged state is not written again"


async def test_save_state_and_fencing(autojump_clock: Any, make_registry: Any) -> None:
    store = actorcore.MemoryStore()
    registry = await make_registry([Counter], store=store)
    handle = await registry.get_or_create("counter", "k")
    await registry.sleep(handle.actor_id)
    await handle.call("increment", 3)  # generation 2
    with pytest.raises(actorcore.StaleGeneration) as info:
        await store.save(handle.actor_id, 1, b'{"count":999}')
    assert info.value.code == "store.stale_generation"
    await registry.sleep(handle.actor_id)
    assert await handle.call("get") == 3


async def test_store_failure_keeps_in_memory_state(autojump_clock: Any, make_registry: Any) -> None:
    store = actorcore.MemoryStore()
    registry = await make_registry([Counter], store=store)
    handle = await registry.get_or_create("counter", "k")
    await handle.call("increment", 1)
    await trio.sleep(2)
    store.fail_writes = OSError("disk full")
    await handle.call("increment", 1)
    await trio.sleep(2)
    assert registry.statistics().save_errors >= 1
    assert await handle.call("get") == 2, "in-memory state kept"
    await registry.sleep(handle.actor_id)  # final save fails too: state kept in memory
    assert registry.statistics().save_errors >= 2
    store.fail_writes = None
    assert await handle.call("get") == 2, "the next generation starts from the unsaved state"
    await trio.sleep(0.1)
    record = await store.get_by_id(handle.actor_id)
    assert record is not None and record.state == b'{"count":2}', "persisted once it works"


async def test_explicit_save_state_surfaces_store_errors(
    autojump_clock: Any, make_registry: Any
) -> None:
    class Saver(Counter):
        name = "saver"

        @actorcore.action
        async def bump_and_save(self, ctx: ActorContext) -> None:
            ctx.state["count"] += 1
            await ctx.save_state()

    store = actorcore.MemoryStore()
    registry = await make_registry([Saver], store=store)
    handle = await registry.get_or_create("saver", "k")
    store.fail_writes = OSError("database is locked")
    with pytest.raises(actorcore.StoreError) as info:
        await handle.call("bump_and_save")
    assert info.value.retryable
    assert await handle.call("get") == 1


async def test_registry_survives_many_actors_and_statistics(
    autojump_clock: Any, make_registry: Any
) -> None:
    registry = await make_registry([Counter])
    handles = [await registry.get_or_create("counter", f"k{i}") for i in range(20)]
    for h in handles:
        await h.call("increment")
    stats = registry.statistics()
    assert stats.actors_by_state == {"started": 20}
    assert stats.calls == 20
    await trio.sleep(60)
    stats = registry.statistics()
    assert stats.actors_by_state == {}, "asleep actors leave memory"
    assert all(registry.lifecycle(h.actor_id) is S.ASLEEP for h in handles)


async def test_concurrent_get_or_create_makes_one_actor(
    autojump_clock: Any, make_registry: Any
) -> None:
    registry = await make_registry([Counter])
    ids: list[str] = []

    async def create() -> None:
        ids.append((await registry.get_or_create("counter", "same")).actor_id)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(create)
    assert len(set(ids)) == 1
    assert Counter.log.count("create:1") == 1


async def test_unknown_definition_and_bad_definitions(autojump_clock: Any) -> None:
    registry = actorcore.Registry([Counter])
    async with registry:
        with pytest.raises(actorcore.ActorNotFound):
            await registry.get_or_create("nope", "k")

    class NotAsync(actorcore.Actor):
        def on_wake(self, ctx: ActorContext) -> None:  # type: ignore[override]
            pass

    with pytest.raises(actorcore.DefinitionError, match="on_wake must be async"):
        actorcore.Registry([NotAsync])
    with pytest.raises(actorcore.DefinitionError, match="two actor definitions"):
        actorcore.Registry([Counter, Counter])
    with pytest.raises(ValueError, match="sleep_timeout"):
        ActorOptions(sleep_timeout=0)


async def test_lifecycle_logged(
    autojump_clock: Any, make_registry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actorcore")
    registry = await make_registry([Counter])
    handle = await registry.get_or_create("counter", "k")
    await registry.sleep(handle.actor_id)
    transitions = [
        (r.old_state, r.new_state, r.generation)  # type: ignore[attr-defined]
        for r in caplog.records
        if hasattr(r, "new_state")
    ]
    assert ("loading", "started", 1) in transitions
    assert ("started", "sleep_grace", 1) in transitions
    assert ("sleep_finalize", "asleep", 1) in transitions


async def test_lookups_of_asleep_actors_leave_nothing_in_memory(
    autojump_clock: Any, make_registry: Any
) -> None:
    registry = await make_registry([Counter])
    handle = await registry.get_or_create("counter", "k")
    await registry.sleep(handle.actor_id)
    assert registry.statistics().actors_by_state == {}
    await registry.get("counter", "k")
    await registry.get_by_id(handle.actor_id)
    await registry.sleep(handle.actor_id)  # already asleep: returns at once
    assert registry.statistics().actors_by_state == {}, "an asleep actor is only a store row"
    assert registry.lifecycle(handle.actor_id) is S.ASLEEP
    assert await handle.call("increment") == 1


# ---------------------------------------------------------------- the connect path's store work


def started_info(generation: int) -> dict[str, Any]:
    """What ``Counter.info`` answers in a started generation ``generation``."""
    return {
        "generation": generation,
        "lifecycle": "started",
        "started": True,
        "sleep_requested": False,
    }


async def test_a_new_actor_costs_one_write_and_an_asleep_one_one(
    autojump_clock: Any, make_registry: Any
) -> None:
    """A new actor is written once, after its creation hooks ran: created, initialized and
    at generation 1 (``create_initialized``). Not in memory, an existing actor is found and
    its generation begun in one write (``begin_or_create``)."""
    store = actorcore.MemoryStore()
    registry = await make_registry([Counter], store=store)
    before = store.statistics()
    handle = await registry.get_or_create("counter", "k", input={"start": 4})
    assert store.statistics().writes - before.writes == 1
    record = await store.get_by_id(handle.actor_id)
    assert record is not None
    assert (record.generation, record.initialized, record.state) == (1, True, b'{"count":4}')
    await registry.sleep(handle.actor_id)  # nothing changed: no final save
    before = store.statistics()
    again = await registry.get_or_create("counter", "k", input={"start": 99})
    assert again.actor_id == handle.actor_id
    assert store.statistics().writes - before.writes == 1
    assert await again.call("info") == started_info(2)
    assert await again.call("get") == 4, "an existing actor ignores the input"
    assert Counter.log == ["create:1", "wake:1", "sleep:1", "wake:2"]


async def test_failed_starts_leave_no_entries_behind(
    autojump_clock: Any, make_registry: Any
) -> None:
    """Once the last request waiting on a failed start has its error, the entry goes: a new
    actor whose creation failed never existed (no entry, no row), and an existing actor whose
    wake failed is again only its row. Failing creates of distinct keys do not pile up."""

    class Refuses(Counter):
        name = "refuses"
        fail = True

        async def on_create(self, ctx: ActorContext) -> None:
            if type(self).fail:
                raise RuntimeError("not today")

        async def on_wake(self, ctx: ActorContext) -> None:
            if type(self).fail:
                raise RuntimeError("not today")

    store = actorcore.MemoryStore()
    registry = await make_registry([Refuses], store=store)
    for i in range(20):
        with pytest.raises(actorcore.ActorStartFailed):
            await registry.get_or_create("refuses", f"new-{i}")
    assert host_of(registry).entries() == []
    assert store.statistics().actors == 0
    Refuses.fail = False
    try:
        handle = await registry.get_or_create("refuses", "old")
        await registry.sleep(handle.actor_id)
        Refuses.fail = True
        with pytest.raises(actorcore.ActorStartFailed):
            await handle.call("get")
        assert host_of(registry).entries() == []
        assert registry.lifecycle(handle.actor_id) is S.ASLEEP, "still its row in the store"
        Refuses.fail = False
        assert await handle.call("get") == 0
    finally:
        Refuses.fail = True


class _CannotTellStore(actorcore.MemoryStore):
    """A store that cannot answer ``key_exists_nowait`` (the Store default)."""

    def key_exists_nowait(self, name: str, key: str) -> bool | None:
        return None


async def test_a_store_that_cannot_tell_gets_the_create_then_save_path(
    autojump_clock: Any, make_registry: Any
) -> None:
    """Without ``key_exists_nowait`` the lookup creates the row and begins its generation in
    one write (``begin_or_create``) and the first start saves the created state: two writes,
    the same actor."""
    store = _CannotTellStore()
    registry = await make_registry([Counter], store=store)
    before = store.statistics()
    handle = await registry.get_or_create("counter", "k", input={"start": 4})
    assert store.statistics().writes - before.writes == 2
    record = await store.get_by_id(handle.actor_id)
    assert record is not None
    assert (record.generation, record.initialized, record.state) == (1, True, b'{"count":4}')
    assert record.input is None
    await registry.sleep(handle.actor_id)
    assert await (await registry.get_or_create("counter", "k")).call("get") == 4
    assert Counter.log == ["create:1", "wake:1", "sleep:1", "wake:2"]


async def test_create_and_wake_store_failures_are_failed_starts(
    autojump_clock: Any, make_registry: Any
) -> None:
    """A new actor that cannot be written fails its start (ActorStartFailed) and leaves no
    row: the next lookup creates it afresh (its creation hooks run again). A failed wake is a
    failed start too, as for an actor found in memory."""
    store = actorcore.MemoryStore()
    registry = await make_registry([Counter], store=store)
    asleep = await registry.get_or_create("counter", "asleep")
    await asleep.call("increment", 7)
    await registry.sleep(asleep.actor_id)
    store.fail_writes = OSError("disk full")
    with pytest.raises(actorcore.ActorStartFailed) as created:
        await registry.get_or_create("counter", "new")
    assert "disk full" in created.value.message
    with pytest.raises(actorcore.ActorStartFailed) as woken:
        await registry.get_or_create("counter", "asleep")
    assert "disk full" in woken.value.message
    store.fail_writes = None
    assert await store.get_by_key("counter", "new") is None, "no row was left"
    assert await (await registry.get_or_create("counter", "asleep")).call("get") == 7
    assert await (await registry.get_or_create("counter", "new")).call("get") == 0
    # "asleep" once; "new" at the failed start and again at the one that was written.
    assert Counter.log.count("create:1") == 3


async def test_lookup_by_id_during_a_lookup_by_key_shares_its_generation(
    autojump_clock: Any, make_registry: Any
) -> None:
    """A lookup by id that finds the actor while a lookup by key is beginning its generation
    waits for that lookup and uses its entry: one generation starts, and it is the store's
    current one (its saves are not fenced out)."""
    store = actorcore.MemoryStore()
    registry = await make_registry([Counter], store=store)
    handle = await registry.get_or_create("counter", "k")
    await registry.sleep(handle.actor_id)
    store.write_delay = 1.0  # the begin_or_create below is in flight for a second
    results: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.get_or_create, "counter", "k")
        await trio.sleep(0.1)
        nursery.start_soon(lambda: _append(results, registry.call(handle.actor_id, "increment")))
    store.write_delay = 0.0
    assert results == [1]
    assert Counter.log == ["create:1", "wake:1", "sleep:1", "wake:2"], "one generation began"
    record = await store.get_by_id(handle.actor_id)
    assert record is not None and record.generation == 2
    await registry.sleep(handle.actor_id)
    assert registry.statistics().save_errors == 0, "the generation was not fenced out"
    assert store.statistics().stale_writes == 0
    record = await store.get_by_id(handle.actor_id)
    assert record is not None and record.state == b'{"count":1}'


async def _append(results: list[int], call: Any) -> None:
    results.append(await call)


async def test_a_begun_generation_that_never_starts_is_dropped(
    autojump_clock: Any, make_registry: Any
) -> None:
    store = actorcore.MemoryStore()
    registry = await make_registry([Counter], store=store)
    first = await registry.get_or_create("counter", "k", input={"start": 3})
    await registry.sleep(first.actor_id)
    entry = await host_of(registry).find_entry_by_key("counter", "k", create=True, input=None)
    assert registry.lifecycle(entry.actor_id) is S.ASLEEP
    # Looked up again without waking: the entry leaves memory with its begun generation.
    handle = await registry.get("counter", "k")
    assert host_of(registry).entry(handle.actor_id) is None
    assert host_of(registry).take_begun(entry) is None
    assert await handle.call("info") == started_info(3)  # 2 began and was never used
    assert await handle.call("get") == 3
    assert Counter.log == ["create:1", "wake:1", "sleep:1", "wake:3"]


async def test_a_new_actor_is_written_at_its_first_start(
    autojump_clock: Any, make_registry: Any
) -> None:
    """A lookup that creates writes nothing: the actor is kept in memory (also through a
    lookup that does not wake it) until its first start writes it, with the input used."""
    store = actorcore.MemoryStore()
    registry = await make_registry([Counter], store=store)
    entry = await host_of(registry).find_entry_by_key(
        "counter", "k", create=True, input={"start": 3}
    )
    assert registry.lifecycle(entry.actor_id) is S.ASLEEP
    assert host_of(registry).is_unstored(entry)
    assert await store.get_by_key("counter", "k") is None
    handle = await registry.get("counter", "k")
    assert handle.actor_id == entry.actor_id
    assert host_of(registry).entry(handle.actor_id) is entry
    assert await handle.call("info") == started_info(1)
    assert await handle.call("get") == 3, "the creation input is used at the first start"
    assert not host_of(registry).is_unstored(entry)
    record = await store.get_by_key("counter", "k")
    assert record is not None
    assert (record.generation, record.initialized, record.input) == (1, True, None)
    assert Counter.log == ["create:1", "wake:1"]


async def test_store_io_of_a_start_is_bounded_apart_from_the_hooks(
    autojump_clock: Any, make_registry: Any
) -> None:
    """``hook_timeout`` bounds the start's hooks (together) and, separately, each store call
    of the start: a store that is slow but within the bound no longer fails the first start
    by eating the hooks' budget."""

    class Hooked(Counter):
        name = "hooked"
        options = ActorOptions(hook_timeout=2.0, ready_timeout=20.0, sleep_timeout=1000.0)
        hook_seconds = 0.8

        async def on_create(self, ctx: ActorContext) -> None:
            await trio.sleep(self.hook_seconds)

        async def on_wake(self, ctx: ActorContext) -> None:
            await trio.sleep(self.hook_seconds)

    store = actorcore.MemoryStore(write_delay=1.5)
    registry = await make_registry([Hooked], store=store)
    # Hooks 1.6 s and the creating write 1.5 s: each within 2 s (3.1 s together).
    started = trio.current_time()
    handle = await registry.get_or_create("hooked", "k")
    assert trio.current_time() - started == pytest.approx(0.8 + 1.5 + 0.8)
    assert await handle.call("get") == 0

    # A store slower than hook_timeout still fails the start, and says so.
    store.write_delay = 2.5
    with pytest.raises(actorcore.ActorStartFailed, match=r"store did not save.*hook_timeout=2"):
        await registry.get_or_create("hooked", "slow-store")
    await registry.sleep(handle.actor_id)  # the final save (2.5 s) is not a start's
    with pytest.raises(
        actorcore.ActorStartFailed, match=r"store did not begin a generation.*hook_timeout=2"
    ):
        await handle.call("get")  # found by id: the start begins the generation itself

    # The hooks still share one budget, however long the store took in between.
    store.write_delay = 1.0
    Hooked.hook_seconds = 1.2
    try:
        with pytest.raises(actorcore.ActorStartFailed, match="exceeded hook_timeout=2"):
            await registry.get_or_create("hooked", "slow-hooks")
    finally:
        Hooked.hook_seconds = 0.8
    store.write_delay = 0.0
    assert await handle.call("get") == 0


class _GcWatcher(actorcore.Actor):
    name = "gcwatcher"
    seen: list[bool] = []

    async def on_sleep(self, ctx: ActorContext) -> None:
        import gc

        self.seen.append(gc.isenabled())


@pytest.mark.parametrize("pause_gc", [True, False])
async def test_the_drain_pauses_the_collector_only_when_asked(
    autojump_clock: trio.testing.MockClock, pause_gc: bool
) -> None:
    import gc

    _GcWatcher.seen = []
    async with actorcore.Registry([_GcWatcher], pause_gc=pause_gc) as registry:
        await registry.get_or_create("gcwatcher", "k")
        assert gc.isenabled()
    assert _GcWatcher.seen == [not pause_gc], "on_sleep ran in the drain"
    assert gc.isenabled(), "restored after the drain"


def test_gc_pauses_nest_and_leave_the_applications_choice_alone() -> None:
    import gc

    from actorcore import gcpause

    assert gc.isenabled()
    with gcpause.paused():
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "the outer pause still holds"
    assert gc.isenabled()
    gc.disable()  # the application turned it off: a pause must not turn it on
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with gcpause.paused():
        gc.enable()  # the application turned it back on meanwhile: left alone
    assert gc.isenabled()


async def test_every_transition_goes_through_the_table(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lifecycle table is the only writer of lifecycle state: every transition the
    registry reports (sleep, wake, destroy, and a hard stop from outside) is the result of a
    ``Lifecycle.process_event`` call, the hard stop included (CANCELLED)."""
    from actorcore.lifecycle import Lifecycle, LifecycleEvent

    made: list[tuple[LifecycleState, LifecycleEvent, LifecycleState]] = []
    original = Lifecycle.process_event

    def recording(self: Lifecycle, event: LifecycleEvent) -> LifecycleState:
        before = self.state
        after = original(self, event)
        made.append((before, event, after))
        return after

    monkeypatch.setattr(Lifecycle, "process_event", recording)
    seen: list[tuple[LifecycleState, LifecycleState]] = []
    registry = actorcore.Registry([Counter])
    registry.watch_transitions(lambda _id, old, new: seen.append((old, new)))
    with trio.CancelScope() as outside:
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            a = await registry.get_or_create("counter", "a")
            await registry.sleep(a.actor_id)
            await a.call("increment")  # woken
            b = await registry.get_or_create("counter", "b")
            await registry.destroy(b.actor_id)
            outside.cancel()  # a hard stop while "a" is awake
    assert seen, "transitions were reported"
    assert seen == [(old, new) for old, _, new in made if old is not new]
    assert (S.STARTED, LifecycleEvent.CANCELLED, S.ASLEEP) in made


async def test_a_wake_after_leaving_memory_logs_the_generation_it_had(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with actorcore.Registry([Counter]) as registry:
        handle = await registry.get_or_create("counter", "k")
        await registry.sleep(handle.actor_id)
        await registry.get_or_create("counter", "k")
        await registry.sleep(handle.actor_id)
        assert host_of(registry).entry(handle.actor_id) is None, "left memory"
        with caplog.at_level(logging.INFO, logger="actorcore.lifecycle"):
            await handle.call("increment")
    wakes = [r.getMessage() for r in caplog.records if "asleep -> loading" in r.getMessage()]
    assert wakes and "gen=2 " in wakes[0], wakes


class FailsFirstWake(actorcore.Actor):
    """``on_wake`` fails while ``fail`` is set; a context captured on each start."""

    fail = True
    contexts: list[ActorContext] = []

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"n": 0}

    async def on_wake(self, ctx: ActorContext) -> None:
        type(self).contexts.append(ctx)
        if type(self).fail:
            raise RuntimeError("no wake today")

    @actorcore.action
    async def bump(self, ctx: ActorContext) -> int:
        ctx.state["n"] += 1
        return int(ctx.state["n"])


async def test_a_failed_start_is_recorded_when_its_generation_has_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """LOAD_FAILED is recorded at the end of the failed generation, never before: whenever the
    lifecycle says asleep, no generation runs, and a retry wakes the actor straight away."""
    FailsFirstWake.fail = True
    FailsFirstWake.contexts = []
    registry = actorcore.Registry([FailsFirstWake])
    events: list[tuple[LifecycleState, bool]] = []

    def watch(actor_id: str, old: LifecycleState, new: LifecycleState) -> None:
        entry = host_of(registry).entry(actor_id)
        events.append((new, entry is not None and entry.generation is not None))

    registry.watch_transitions(watch)
    async with registry:
        with pytest.raises(actorcore.ActorStartFailed, match="no wake today"):
            await registry.get_or_create("failsfirstwake", "k")
        assert events == [(S.LOADING, False), (S.ASLEEP, False)]
        (failed,) = FailsFirstWake.contexts
        assert failed.aborted, "an ended generation tells its work to wrap up"
        FailsFirstWake.fail = False
        handle = await registry.get_or_create("failsfirstwake", "k")
        assert await handle.call("bump") == 1
        live = FailsFirstWake.contexts[-1]
        assert not live.aborted
        await registry.sleep(handle.actor_id)
        assert live.aborted
    assert events[2:] == [
        (S.LOADING, False),  # reported before the new generation is attached
        (S.STARTED, True),
        (S.SLEEP_GRACE, True),
        (S.SLEEP_FINALIZE, True),
        (S.ASLEEP, False),
    ]
