"""EngineStore writes the connection records of an actor with its saves when they are due:
after its set of connections changed, in a finalizing generation, and otherwise at most every
``CONN_RECORDS_INTERVAL`` (with the output gate an actor saves with every answer). The KV
requests are captured where the envoy link would send them."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from actorcore.engine.bare import Variant
from actorcore.engine.store import CONN_RECORDS_INTERVAL, CONNS_KEY, EngineStore, StartedActor


@attrs.define
class Kv:
    """Answers every put; keeps the keys of each."""

    puts: list[list[bytes]] = attrs.field(factory=list)

    async def kv(self, actor_id: str, request: Variant) -> Variant:
        await trio.lowlevel.checkpoint()
        assert request.tag == "KvPutRequest"
        self.puts.append(list(request.val["keys"]))
        return Variant("KvPutResponse")


async def test_connection_records_are_written_when_due(autojump_clock: trio.abc.Clock) -> None:
    kv = Kv()
    store = EngineStore(kv)
    ids = {"a"}
    built: list[int] = []

    def records(actor_id: str) -> list[dict[str, Any]]:
        built.append(1)
        return [{"conn_id": i} for i in sorted(ids)]

    store.conn_records = records
    store.conn_ids = lambda actor_id: frozenset(ids)
    store.hold(StartedActor("x", "counter", "k", 1, None))

    async def save() -> bool:
        await store.save("x", 1, b"{}")
        return CONNS_KEY in kv.puts[-1]

    assert await save()  # the first save of the generation
    assert not await save()  # nothing changed, within the interval
    ids.add("b")
    assert await save()  # a connection came
    assert not await save()
    await trio.sleep(CONN_RECORDS_INTERVAL)
    assert await save()  # the interval passed
    assert not await save()
    store.finalizing.add("x")
    assert await save()  # the final saves write them whatever
    assert await save()
    assert len(built) == 5  # records are built only for the saves that write them
    store.release("x")
    assert not store.finalizing
