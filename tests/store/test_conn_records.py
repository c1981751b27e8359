"""Connection records (issue 21): written with the state in one transaction, returned with a
generation that begins, fenced, pruned, batched by ``save_many``, and marked detached when an
SQLite file is opened again."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from actorcore import StaleGeneration
from actorcore.store import MemoryStore, SQLiteStore, open_store
from actorcore.store.base import ConnRecord, ConnWrites, SaveItem

TIMEOUT = 10.0

AnyStore = MemoryStore | SQLiteStore


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AnyStore]:
    instance: AnyStore = (
        MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "c.db")
    )
    async with open_store(instance):
        yield instance


def _conn(conn_id: str, actor_id: str = "a1", data: bytes = b"{}") -> ConnRecord:
    return ConnRecord(conn_id, actor_id, data, None)


async def _begun(store: AnyStore, actor_id: str = "a1", key: str = "k1") -> int:
    await store.create(actor_id, "counter", key, None)
    return (await store.begin_generation(actor_id)).generation


async def test_records_are_written_with_the_state_and_come_back_with_a_generation(
    store: AnyStore,
) -> None:
    with trio.fail_after(TIMEOUT):
        gen = await _begun(store)
        writes = ConnWrites((_conn("c1", data=b'{"x":1}'), _conn("c2")))
        await store.save_with_conns("a1", gen, b'{"n":1}', writes)
        record = await store.begin_generation("a1")
        assert record.state == b'{"n":1}' and record.initialized
        assert sorted((c.conn_id, c.data) for c in record.conns) == [
            ("c1", b'{"x":1}'),
            ("c2", b"{}"),
        ]
        # State None: unchanged; a delete and an update in the same write.
        writes = ConnWrites((_conn("c1", data=b'{"x":2}'),), deletes=("c2",))
        await store.save_with_conns("a1", record.generation, None, writes)
        record = await store.begin_generation("a1")
        assert record.state == b'{"n":1}'
        assert [(c.conn_id, c.data) for c in record.conns] == [("c1", b'{"x":2}')]


async def test_a_stale_generation_writes_no_record(store: AnyStore) -> None:
    with trio.fail_after(TIMEOUT):
        gen = await _begun(store)
        await store.begin_generation("a1")
        with pytest.raises(StaleGeneration):
            await store.save_with_conns("a1", gen, b"{}", ConnWrites((_conn("c1"),)))
        assert (await store.begin_generation("a1")).conns == ()


async def test_save_many_fences_each_item_on_its_own(store: AnyStore) -> None:
    with trio.fail_after(TIMEOUT):
        first = await _begun(store, "a1", "k1")
        second = await _begun(store, "a2", "k2")
        await store.begin_generation("a2")  # the item below for a2 is stale now
        errors = await store.save_many(
            [
                SaveItem("a1", first, b'{"n":5}', ConnWrites((_conn("c1"),))),
                SaveItem("a2", second, b'{"n":6}', ConnWrites((_conn("c2", "a2"),))),
            ]
        )
        assert errors[0] is None and isinstance(errors[1], StaleGeneration)
        one = await store.begin_generation("a1")
        two = await store.begin_generation("a2")
        assert one.state == b'{"n":5}' and [c.conn_id for c in one.conns] == ["c1"]
        assert two.state is None and two.conns == ()
        assert (await store.save_many([])) == []


async def test_prune_deletes_only_records_detached_long_enough(store: AnyStore) -> None:
    with trio.fail_after(TIMEOUT):
        gen = await _begun(store)
        now = time.time()
        writes = ConnWrites(
            (
                ConnRecord("old", "a1", b"{}", now - 600),
                ConnRecord("recent", "a1", b"{}", now - 10),
                ConnRecord("attached", "a1", b"{}", None),
            )
        )
        await store.save_with_conns("a1", gen, None, writes)
        assert await store.prune_conns(now - 300) == 1
        kept = (await store.begin_generation("a1")).conns
        assert sorted(c.conn_id for c in kept) == ["attached", "recent"]


async def test_deleting_the_actor_deletes_its_records(store: AnyStore) -> None:
    with trio.fail_after(TIMEOUT):
        gen = await _begun(store)
        await store.save_with_conns("a1", gen, None, ConnWrites((_conn("c1"),)))
        await store.delete("a1", gen)
        await store.create("a1", "counter", "k1", None)
        assert (await store.begin_generation("a1")).conns == ()


async def test_opening_an_sqlite_file_again_marks_attached_records_detached(
    tmp_path: Path,
) -> None:
    path = tmp_path / "again.db"
    with trio.fail_after(TIMEOUT):
        async with open_store(SQLiteStore(path)) as store:
            gen = await _begun(store)
            writes = ConnWrites((_conn("live"), ConnRecord("gone", "a1", b"{}", 5.0)))
            await store.save_with_conns("a1", gen, None, writes)
        before = time.time()
        async with open_store(SQLiteStore(path)) as store:
            conns = {c.conn_id: c for c in (await store.begin_generation("a1")).conns}
        live = conns["live"].detached_at
        assert live is not None and before - 1 <= live <= time.time()
        assert conns["gone"].detached_at == 5.0
