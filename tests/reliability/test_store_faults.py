"""Store faults: writes that raise (disk full, locked database, refused commit), slow writes, a
failure during finalize (save and delete), and state that cannot be encoded.

What must hold every time: the actor keeps its in-memory state, the error is logged and
surfaced (``save_errors``, a ``store.error`` frame, ``ActorStartFailed``), nothing already
saved is lost, and the next successful save persists the latest state.

MemoryStore tests run on the virtual clock (``autojump_clock``); SQLite ones on the real clock.
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

import actorcore
from actorcore import ActorContext, ActorOptions, LifecycleState, MemoryStore, SQLiteStore
from actorcore.store import open_store
from tests.store._faults import CommitFailingSQLiteStore

from ._support import call, close_code, receive_frame, serve_streams, tally

S = LifecycleState

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")
IO_ERROR = OSError(errno.EIO, "Input/output error")


class Counter(actorcore.Actor):
    name = "counter"
    options = ActorOptions(
        state_save_interval=1.0,
        sleep_timeout=1000.0,
        sleep_grace_period=2.0,
        close_timeout=0.5,
        hook_timeout=2.0,
        ready_timeout=5.0,
    )

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"n": 0, "pad": ""}

    @actorcore.action
    async def inc(self, ctx: ActorContext, by: int = 1, pad: int = 0) -> int:
        ctx.state["n"] += by
        if pad:
            ctx.state["pad"] = "x" * pad
        return int(ctx.state["n"])

    @actorcore.action
    async def get(self, ctx: ActorContext) -> int:
        return int(ctx.state["n"])

    @actorcore.action
    async def save(self, ctx: ActorContext) -> int:
        await ctx.save_state()
        return int(ctx.state["n"])


class Deep(actorcore.Actor):
    """An actor whose state or output can be made too deep for ``json.dumps``."""

    name = "deep"
    options = ActorOptions(state_save_interval=1.0, sleep_timeout=1000.0)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"x": None}

    @actorcore.action
    async def wrap(self, ctx: ActorContext, times: int) -> int:
        for _ in range(times):
            ctx.state["x"] = [ctx.state["x"]]
        return times

    @actorcore.action
    async def deep_output(self, ctx: ActorContext, depth: int) -> Any:
        value: Any = None
        for _ in range(depth):
            value = [value]
        return value

    @actorcore.action
    async def ping(self, ctx: ActorContext) -> str:
        return "pong"


async def stored(store: actorcore.Store, actor_id: str) -> Any:
    record = await store.get_by_id(actor_id)
    if record is None or record.state is None:
        return None
    return json.loads(record.state)


async def start(nursery: trio.Nursery, store: actorcore.Store) -> actorcore.Registry:
    registry = actorcore.Registry([Counter, Deep], store)
    await nursery.start(registry.run)
    return registry


# --------------------------------------------------------------------------- memory store


async def test_failing_interval_saves_keep_state_and_recover(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="actorcore")
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        registry = await start(nursery, store)
        handle = await registry.get_or_create("counter", "k")
        await handle.call("inc")
        await trio.sleep(2)
        assert (await stored(store, handle.actor_id))["n"] == 1

        store.fail_writes = DISK_FULL
        assert await handle.call("inc") == 2
        assert await handle.call("inc") == 3
        await trio.sleep(5)  # several interval saves fail
        errors = registry.statistics().save_errors
        tally("fault: memory store write raised", store.statistics().write_errors)
        assert errors >= 3
        assert (await stored(store, handle.actor_id))["n"] == 1, "what was saved is kept"
        assert await handle.call("get") == 3, "the actor kept its state in memory"
        assert any("state save failed" in r.getMessage() for r in caplog.records)
        assert any("No space left" in r.getMessage() for r in caplog.records)

        store.fail_writes = None
        await trio.sleep(2)
        assert (await stored(store, handle.actor_id))["n"] == 3, "next save persists the latest"
        assert registry.statistics().save_errors == errors, "no more errors once it recovered"
        registry.request_shutdown()


async def test_explicit_save_error_reaches_the_protocol_client(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    registry = actorcore.Registry([Counter], store)
    async with (
        serve_streams(registry) as server,
        server.connect("/actors/counter/k/connect") as ws,
    ):
        init = await receive_frame(ws)
        assert (await call(ws, 1, "inc", 5))["output"] == 5
        store.fail_writes = sqlite3.OperationalError("database is locked")
        reply = await call(ws, 2, "save")
        tally("fault: memory store write raised")
        assert reply["type"] == "error"
        assert reply["code"] == "store.error" and reply["retryable"] is True
        assert "database is locked" in reply["message"]
        # The connection is unaffected and the state is intact.
        assert (await call(ws, 3, "inc"))["output"] == 6
        store.fail_writes = None
        assert (await call(ws, 4, "save"))["output"] == 6
        assert (await stored(store, init["actor_id"]))["n"] == 6


async def test_failed_final_save_is_kept_for_the_next_generation(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="actorcore")
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        registry = await start(nursery, store)
        handle = await registry.get_or_create("counter", "k")
        assert await handle.call("inc", 10) == 10
        await trio.sleep(2)
        store.fail_writes = IO_ERROR
        assert await handle.call("inc", 5) == 15
        await registry.sleep(handle.actor_id)  # the final save fails
        assert registry.lifecycle(handle.actor_id) is S.ASLEEP
        assert any("final save failed" in r.getMessage() for r in caplog.records)
        assert (await stored(store, handle.actor_id))["n"] == 10, "the older save is kept"

        # Still failing: waking needs a write (begin_generation), so the start fails, typed.
        with pytest.raises(actorcore.ActorStartFailed):
            await handle.call("get")
        tally("fault: memory store write raised", store.statistics().write_errors)

        store.fail_writes = None
        assert await handle.call("get") == 15, "the next generation starts from the kept state"
        assert (await stored(store, handle.actor_id))["n"] == 15, "and persists it at once"
        registry.request_shutdown()


async def test_drain_persists_state_whose_final_save_failed(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        registry = await start(nursery, store)
        handle = await registry.get_or_create("counter", "k")
        await handle.call("inc", 3)
        store.fail_writes = DISK_FULL
        await registry.sleep(handle.actor_id)
        tally("fault: memory store write raised", store.statistics().write_errors)
        store.fail_writes = None
        registry.request_shutdown()  # the drain saves the kept state
    async with open_store(store):
        assert (await stored(store, handle.actor_id))["n"] == 3


async def test_slow_writes_do_not_hold_actions_and_the_latest_state_lands(
    autojump_clock: trio.abc.Clock,
) -> None:
    delay = 1.5  # slower than the save interval, within hook_timeout (start saves once)
    store = MemoryStore(write_delay=delay)
    async with trio.open_nursery() as nursery:
        registry = await start(nursery, store)
        handle = await registry.get_or_create("counter", "k")
        for i in range(1, 20):
            before = trio.current_time()
            assert await handle.call("inc") == i
            assert trio.current_time() - before < 0.01, "a slow background save holds nothing"
            await trio.sleep(0.5)
        tally("fault: memory store slow write", store.statistics().writes)
        before = trio.current_time()
        await registry.sleep(handle.actor_id)
        # At most one interval save in flight, then the final one.
        assert trio.current_time() - before <= 2 * delay + 0.1
        assert (await stored(store, handle.actor_id))["n"] == 19
        registry.request_shutdown()


async def test_store_slower_than_hook_timeout_fails_the_start_and_recovers(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The first save of a new actor runs within ``hook_timeout`` (with ``on_create`` and
    ``on_wake``): a store slower than that fails the start (typed, retryable); once the store
    is fast again the actor starts."""
    # begin_generation (2.5 s) + the first save cut at hook_timeout (2 s) < ready_timeout (5 s)
    store = MemoryStore(write_delay=2.5)
    async with trio.open_nursery() as nursery:
        registry = await start(nursery, store)
        with pytest.raises(actorcore.ActorStartFailed, match="hook_timeout"):
            await registry.get_or_create("counter", "k")
        tally("fault: memory store slow write", store.statistics().writes)
        store.write_delay = 0.0
        handle = await registry.get_or_create("counter", "k")
        assert await handle.call("inc") == 1
        registry.request_shutdown()


async def test_create_and_wake_faults_close_with_documented_codes(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    registry = actorcore.Registry([Counter], store)
    async with (
        serve_streams(registry) as server,
        server.connect("/actors/counter/awake/connect") as awake,
    ):
        await receive_frame(awake)
        assert (await call(awake, 1, "inc"))["output"] == 1
        asleep = await registry.get_or_create("counter", "asleep")
        await asleep.call("inc", 7)
        await registry.sleep(asleep.actor_id)

        store.fail_writes = DISK_FULL
        # A new actor cannot be written: its start fails (1011 actor.start_failed).
        async with server.connect("/actors/counter/new/connect") as ws:
            assert await close_code(ws) == (1011, "actor.start_failed")
        # An asleep actor cannot begin a generation: 1011 actor.start_failed.
        async with server.connect("/actors/counter/asleep/connect") as ws:
            assert await close_code(ws) == (1011, "actor.start_failed")
        tally("fault: memory store write raised", store.statistics().write_errors)
        # The awake actor still serves its connection (its saves fail in the background).
        assert (await call(awake, 2, "inc"))["output"] == 2

        store.fail_writes = None
        async with server.connect("/actors/counter/asleep/connect") as ws:
            await receive_frame(ws)
            assert (await call(ws, 1, "get"))["output"] == 7, "nothing saved was lost"
        async with server.connect("/actors/counter/new/connect") as ws:
            await receive_frame(ws)
            assert (await call(ws, 1, "get"))["output"] == 0


async def destroy_with_a_failing_delete(
    nursery: trio.Nursery, store: MemoryStore
) -> tuple[actorcore.Registry, actorcore.ActorHandle]:
    """Start a registry, give counter/k some state, and destroy it while every write fails
    (the store is left failing): ``destroy()`` must raise StoreError."""
    registry = await start(nursery, store)
    handle = await registry.get_or_create("counter", "k")
    await handle.call("inc", 4)
    store.fail_writes = IO_ERROR
    with pytest.raises(actorcore.StoreError, match=r"failed to delete.*restart would bring"):
        await registry.destroy(handle.actor_id)
    return registry, handle


async def test_failed_delete_at_destroy_does_not_bring_the_actor_back(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: when the store failed to delete a destroyed actor, ``get_or_create`` with
    its key returned the *destroyed* actor (same id, old state) while ``lifecycle()`` said
    DESTROYED. Now the delete is finished first and a fresh actor is created."""
    caplog.set_level(logging.ERROR, logger="actorcore")
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        registry, handle = await destroy_with_a_failing_delete(nursery, store)
        tally("fault: memory store write raised", store.statistics().write_errors)
        assert registry.lifecycle(handle.actor_id) is S.DESTROYED
        assert any("delete failed" in r.getMessage() for r in caplog.records)
        assert registry.statistics().save_errors >= 1, "the failed delete is surfaced"

        store.fail_writes = None
        fresh = await registry.get_or_create("counter", "k")
        assert fresh.actor_id != handle.actor_id
        assert await fresh.call("get") == 0
        assert await store.get_by_id(handle.actor_id) is None, "the delete was finished"
        with pytest.raises(actorcore.ActorDestroyed):
            await handle.call("get")
        registry.request_shutdown()


async def test_a_failed_delete_raises_from_destroy_and_is_retried_in_the_background(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a destroy whose delete failed returned normally and the row stayed in the
    store until the key was looked up again or the registry drained, so a crash in between
    brought the destroyed actor back. Now ``destroy()`` raises and the registry retries the
    delete with backoff on its own."""
    caplog.set_level(logging.ERROR, logger="actorcore")
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        registry, handle = await destroy_with_a_failing_delete(nursery, store)
        assert registry.lifecycle(handle.actor_id) is S.DESTROYED
        await trio.sleep(5)  # retries at 0.5, 1.5 and 3.5 s fail: the store still fails
        assert await store.get_by_id(handle.actor_id) is not None
        failures = sum("delete failed again" in r.getMessage() for r in caplog.records)
        assert failures == 3, failures
        store.fail_writes = None
        await trio.sleep(8)  # the next retry (at 7.5 s) succeeds, with no lookup of the key
        assert await store.get_by_id(handle.actor_id) is None, "the row is gone"
        assert registry.statistics().save_errors == 1
        registry.request_shutdown()


async def test_state_too_deep_to_encode_is_a_state_error_not_a_crash(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: ``json.dumps`` raises RecursionError for state nested deeper than the
    interpreter allows; it escaped ``save_state`` and crashed the whole generation. Now the
    action that did it fails with StateError and the state is rolled back to its last
    saveable value, so later saves go on (hardening item 8)."""
    caplog.set_level(logging.WARNING, logger="actorcore")
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        registry = await start(nursery, store)
        handle = await registry.get_or_create("deep", "k")
        with pytest.raises(actorcore.StateError, match="'wrap' left the state unsaveable"):
            await handle.call("wrap", 5000)
        await trio.sleep(3)
        tally("fault: state too deep to encode")
        assert registry.lifecycle(handle.actor_id) is S.STARTED, "the generation runs on"
        assert not any("generation crashed" in r.getMessage() for r in caplog.records)
        assert any("left the state unsaveable" in r.getMessage() for r in caplog.records)
        assert await handle.call("ping") == "pong"
        await registry.sleep(handle.actor_id)
        assert registry.statistics().save_errors == 0, "nothing poisoned the later saves"
        assert (await stored(store, handle.actor_id)) == {"x": None}, "the rolled-back state"
        registry.request_shutdown()


async def test_output_too_deep_to_encode_is_an_error_frame(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Regression: an action output too deep for ``json.dumps`` crashed the connection's
    handler (close 1011) instead of becoming an ``actor.internal_error`` error frame."""
    registry = actorcore.Registry([Deep])
    async with serve_streams(registry) as server, server.connect("/actors/deep/k/connect") as ws:
        await receive_frame(ws)
        reply = await call(ws, 1, "deep_output", 5000)
        tally("fault: action output too deep to encode")
        assert reply["type"] == "error" and reply["code"] == "actor.internal_error"
        assert (await call(ws, 2, "ping"))["output"] == "pong", "the connection is unaffected"


# --------------------------------------------------------------------------- sqlite


async def sqlite_integrity(path: Path) -> str:
    def check() -> str:
        conn = sqlite3.connect(path)
        try:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            conn.close()

    return await trio.to_thread.run_sync(check)


async def test_sqlite_refused_commits_keep_state_and_recover(sqlite_path: Path) -> None:
    store = CommitFailingSQLiteStore(sqlite_path)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            registry = await start(nursery, store)
            handle = await registry.get_or_create("counter", "k")
            assert await handle.call("inc") == 1
            assert await handle.call("save") == 1
            store.fail_commits = 2
            assert await handle.call("inc") == 2
            for _ in range(2):
                with pytest.raises(actorcore.StoreError, match="commit"):
                    await handle.call("save")
            tally("fault: sqlite commit refused", 2)
            assert (await stored(store, handle.actor_id))["n"] == 1
            assert await handle.call("save") == 2
            assert (await stored(store, handle.actor_id))["n"] == 2
            assert store.statistics().write_errors == 2
            registry.request_shutdown()
    assert await sqlite_integrity(sqlite_path) == "ok"


async def test_sqlite_locked_database_during_interval_and_final_saves(sqlite_path: Path) -> None:
    store = SQLiteStore(sqlite_path, busy_timeout=0.05)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            registry = await start(nursery, store)
            handle = await registry.get_or_create("counter", "k")
            await handle.call("inc", 2)
            assert await handle.call("save") == 2

            # Another process holds the write lock.
            locker = sqlite3.connect(sqlite_path, isolation_level=None, check_same_thread=False)
            try:
                locker.execute("BEGIN EXCLUSIVE")
                await handle.call("inc", 3)
                with pytest.raises(actorcore.StoreError, match="locked"):
                    await handle.call("save")
                await registry.sleep(handle.actor_id)  # the final save fails too
                tally("fault: sqlite database locked", store.statistics().write_errors)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            assert (await stored(store, handle.actor_id))["n"] == 2
            assert await handle.call("get") == 5, "woken from the state kept in memory"
            assert (await stored(store, handle.actor_id))["n"] == 5
            registry.request_shutdown()
    assert await sqlite_integrity(sqlite_path) == "ok"


async def test_sqlite_disk_full_rolls_back_and_recovers(sqlite_path: Path) -> None:
    # The page limit is per connection: the test subclass sets it on the store's writer
    # connection, before its next batch.
    store = CommitFailingSQLiteStore(sqlite_path)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            registry = await start(nursery, store)
            handle = await registry.get_or_create("counter", "k")
            assert await handle.call("inc") == 1
            assert await handle.call("save") == 1
            pages = sqlite3.connect(sqlite_path)
            try:
                (page_count,) = pages.execute("PRAGMA page_count").fetchone()
            finally:
                pages.close()
            store.on_writer(f"PRAGMA max_page_count={page_count}")  # the disk is full
            assert await handle.call("inc", 1, 200_000) == 2  # a state that needs new pages
            with pytest.raises(actorcore.StoreError):
                await handle.call("save")
            tally("fault: sqlite disk full", store.statistics().write_errors)
            assert (await stored(store, handle.actor_id))["n"] == 1
            store.on_writer("PRAGMA max_page_count=1073741823")
            assert await handle.call("inc") == 3
            assert await handle.call("save") == 3
            registry.request_shutdown()
    assert await sqlite_integrity(sqlite_path) == "ok"
    async with open_store(SQLiteStore(sqlite_path)) as reopened:
        record = await reopened.get_by_key("counter", "k")
    assert record is not None and json.loads(record.state or b"")["n"] == 3
