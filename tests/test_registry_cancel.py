"""Hardening item 13: cancelling ``registry.run`` from outside still saves every awake
actor's state once (shielded, bounded by ``cancel_save_timeout``, no hooks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

import actorcore
from actorcore import ActorContext, MemoryStore, SQLiteStore, Store

HOOKS: list[str] = []


class Counter(actorcore.Actor):
    name = "counter"
    options = actorcore.ActorOptions(state_save_interval=60.0)

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"count": 0}

    @actorcore.action
    async def increment(self, ctx: ActorContext) -> int:
        ctx.state["count"] += 1
        return int(ctx.state["count"])

    async def on_sleep(self, ctx: ActorContext) -> None:
        HOOKS.append("on_sleep")


async def saved(store: Store, actor_id: str) -> Any:
    """The state ``store`` holds for ``actor_id`` (read through a registry that opens it)."""
    async with actorcore.Registry([Counter], store=store):
        record = await store.get_by_id(actor_id)
    assert record is not None and record.state is not None
    return json.loads(record.state)


def _store(kind: str, tmp_path: Path) -> Store:
    return MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "c.db")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_cancelling_run_saves_each_awake_actor_once(tmp_path: Path, kind: str) -> None:
    HOOKS.clear()
    store = _store(kind, tmp_path)
    registry = actorcore.Registry([Counter], store=store)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            handles = [await registry.get_or_create("counter", f"k{i}") for i in range(3)]
            for handle in handles:
                for _ in range(5):
                    await handle.call("increment")
            nursery.cancel_scope.cancel()  # no drain: cancelled from outside
    assert HOOKS == [], "no grace hooks on cancel"
    reopened = _store(kind, tmp_path) if kind == "sqlite" else store
    async with actorcore.Registry([Counter], store=reopened) as again:
        for handle in handles:
            record = await reopened.get_by_id(handle.actor_id)
            assert record is not None and record.state is not None
            assert json.loads(record.state) == {"count": 5}
            assert await (await again.get_or_create("counter", record.key)).call("increment") == 6


async def test_async_with_registry_still_drains_with_hooks() -> None:
    HOOKS.clear()
    store = MemoryStore()
    with trio.fail_after(20):
        async with actorcore.Registry([Counter], store=store) as registry:
            handle = await registry.get_or_create("counter", "k")
            await handle.call("increment")
    assert HOOKS == ["on_sleep"]
    assert await saved(store, handle.actor_id) == {"count": 1}


async def test_a_cancelled_async_with_block_drains_and_raises_its_cancel() -> None:
    store = MemoryStore()
    with trio.fail_after(20), trio.CancelScope() as outer:
        async with actorcore.Registry([Counter], store=store) as registry:
            handle = await registry.get_or_create("counter", "k")
            await handle.call("increment")
            outer.cancel()
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert await saved(store, handle.actor_id) == {"count": 1}
