"""EngineStore: actor state in the engine's KV, fenced by the generation this envoy holds.

The engine keeps a key-value space per actor. An actor's record is two keys, written together
in one put: ``actorcore/meta`` (JSON: name, key, generation, initialized, input) and
``actorcore/state`` (the state, UTF-8 JSON bytes as the registry encodes it). Destroying an
actor drops its whole space.

The fence. Engine KV carries no generation (its requests name the actor only), so the engine
cannot refuse a stale write itself. This store refuses it before it leaves the process: a
write is sent only for the generation the engine started here and has not stopped
(:meth:`hold` / :meth:`release`), and only while the link to the engine is up. The engine
gives the actor to another envoy only after this one reported the generation stopped (which
happens after its final save was answered) or after it declared this envoy lost; the link
stops local actors ``lost_margin`` seconds before that (``EnvoyLink.on_lost`` releases every
hold first). What remains is the window ``docs/distribution.md`` describes: a put already on
the wire when the link drops reaches the engine before it declares the envoy lost, or not
at all.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable
from typing import Any, ClassVar, Final, Protocol

import attrs
import trio

from ..errors import ActorError, ActorNotFound, ScheduleLimit, StaleGeneration, StoreError
from ..store.base import (
    ActorRecord,
    AlarmRecord,
    SaveItem,
    Store,
    StoreStatistics,
    due_order,
)
from .bare import Variant
from .messages_v8 import KvGetRequest, KvGetResponse, KvPutRequest

__all__ = ["EngineStore", "StartedActor"]

META_KEY: Final = b"actorcore/meta"
STATE_KEY: Final = b"actorcore/state"
ALARMS_KEY: Final = b"actorcore/alarms"
"""The actor's pending alarms (JSON), loaded with it when it starts on an envoy."""
CONNS_KEY: Final = b"actorcore/conns"
"""The actor's hibernating connections (id, params, state, subscriptions, gateway ids),
written with its saves (see :data:`CONN_RECORDS_INTERVAL`): the next generation takes them
back, wherever it runs."""


class KvClient(Protocol):
    """The part of :class:`~actorcore.engine.link.EnvoyLink` the store uses."""

    async def kv(self, actor_id: str, request: Variant) -> Variant:
        """One KV request; its response data."""
        ...


@attrs.frozen
class StartedActor:
    """An actor generation the engine started on this envoy."""

    actor_id: str
    name: str
    key: str
    generation: int
    input: bytes | None


#: The connection records of an actor are written with its saves at most this often (seconds),
#: besides the saves after its connections changed and those of a finalizing generation.
CONN_RECORDS_INTERVAL: Final = 1.0


class EngineStore(Store):
    """Actors of one envoy, stored in the engine (see the module docstring).

    Alarms: each actor's pending alarms are one KV value, written on every change and loaded
    when the engine starts the actor here; the store answers ``next_alarms`` from the alarms
    of the actors running on this envoy. While an actor sleeps, the engine holds its earliest
    alarm (``EventActorSetAlarm``, sent by the runtime) and starts it when that falls due.
    """

    keeps_alarms: ClassVar[bool] = True
    durable: ClassVar[bool] = True
    """A completed KV put is in the engine's storage (RocksDB, or PostgreSQL): with
    ``durable_outputs`` (the default), an answer leaves only once the state it follows is
    written there, so a SIGKILL of the envoy loses no answered change."""

    def __init__(self, link: KvClient) -> None:
        self._link = link
        self._held: dict[str, StartedActor] = {}
        """The generation the engine started here, per actor, until it is released."""
        self._known: dict[str, StartedActor] = {}
        """Every actor the engine started here (identity for lookups; kept after release)."""
        self.conn_records: Callable[[str], list[dict[str, Any]]] | None = None
        """Gives the records of an actor's hibernatable connections, saved with its state."""
        self.conn_ids: Callable[[str], frozenset[str]] | None = None
        """Gives the ids of those connections (cheap: decides whether the records are due)."""
        self.finalizing: set[str] = set()
        """Actors whose generation is finalizing here: their next save is the last, and
        writes the connection records whatever their age."""
        self._records_written: dict[str, tuple[float, frozenset[str]]] = {}
        """When the connection records of each actor were last written, and of which ids."""
        self.hibernated: dict[str, list[dict[str, Any]]] = {}
        self._alarms: dict[str, AlarmRecord] = {}
        self._alarms_of: dict[str, set[str]] = {}
        self.loaded_alarms: dict[str, list[AlarmRecord]] = {}
        """Alarms read when a generation began, until the timer is told of them."""
        self._read_alarms: dict[str, list[AlarmRecord]] = {}
        """Connection records read when a generation began, until they are taken back."""
        self.writes = 0
        self.write_errors = 0
        self.stale_writes = 0

    # ---------------------------------------------------------------- the fence

    def hold(self, started: StartedActor) -> None:
        """The engine started ``started.generation`` of the actor here: writes of that
        generation are accepted from now on."""
        self._held[started.actor_id] = started
        self._known[started.actor_id] = started

    def release(self, actor_id: str) -> None:
        """The generation ended here (or the link was lost): no more writes for it."""
        self._held.pop(actor_id, None)
        self._records_written.pop(actor_id, None)
        self.finalizing.discard(actor_id)

    def release_all(self) -> None:
        """Release every actor (the link to the engine is lost)."""
        self._held.clear()
        self._records_written.clear()
        self.finalizing.clear()

    def held(self, actor_id: str) -> StartedActor | None:
        """The generation held for the actor, if any."""
        return self._held.get(actor_id)

    def _fence(self, actor_id: str, generation: int) -> None:
        held = self._held.get(actor_id)
        if held is None or held.generation != generation:
            self.stale_writes += 1
            raise StaleGeneration(
                f"actor {actor_id}: generation {generation} is not the one the engine runs "
                "here; the write is refused"
            )

    def statistics(self) -> StoreStatistics:
        """Writes sent to the engine, and writes the fence refused."""
        return StoreStatistics(
            actors=len(self._known),
            writes=self.writes,
            commits=self.writes,
            write_errors=self.write_errors,
            stale_writes=self.stale_writes,
        )

    # ---------------------------------------------------------------- KV

    async def _kv(self, actor_id: str, request: Variant) -> Variant:
        from .link import EngineUnavailable

        try:
            answer = await self._link.kv(actor_id, request)
        except EngineUnavailable as exc:
            raise StoreError(f"engine KV of actor {actor_id}: {exc}") from exc
        if answer.tag == "KvErrorResponse":
            self.write_errors += 1
            raise StoreError(f"engine KV of actor {actor_id}: {answer.val['message']}")
        return answer

    async def _read(self, actor_id: str) -> tuple[dict[str, Any] | None, bytes | None]:
        get: KvGetRequest = {"keys": [META_KEY, STATE_KEY, CONNS_KEY, ALARMS_KEY]}
        answer = await self._kv(actor_id, Variant("KvGetRequest", get))
        found: KvGetResponse = answer.val
        values = dict(zip(found["keys"], found["values"], strict=True))
        raw_meta = values.get(META_KEY)
        meta = json.loads(raw_meta) if raw_meta is not None else None
        raw_conns = values.get(CONNS_KEY)
        self.hibernated[actor_id] = json.loads(raw_conns) if raw_conns else []
        raw_alarms = values.get(ALARMS_KEY)
        self._read_alarms[actor_id] = [
            AlarmRecord(
                alarm_id=a["id"],
                actor_id=actor_id,
                due=a["due"],
                action=a["action"],
                args=a["args"].encode(),
                attempts=a["attempts"],
            )
            for a in (json.loads(raw_alarms) if raw_alarms else [])
        ]
        return meta, values.get(STATE_KEY)

    def _record(
        self, actor_id: str, meta: dict[str, Any] | None, state: bytes | None
    ) -> ActorRecord | None:
        known = self._known.get(actor_id)
        if meta is None:
            if known is None:
                return None
            return ActorRecord(actor_id, known.name, known.key, 0, False, None, known.input)
        raw_input = meta.get("input")
        return ActorRecord(
            actor_id,
            meta["name"],
            meta["key"],
            int(meta["generation"]),
            bool(meta["initialized"]),
            state,
            raw_input.encode() if isinstance(raw_input, str) else None,
        )

    # ---------------------------------------------------------------- Store

    async def create(self, actor_id: str, name: str, key: str, input: bytes | None) -> ActorRecord:
        """Refused: under the engine, actors are created by the engine (through its gateway
        or its API), never by an envoy."""
        raise StoreError(
            f"actor {name}/{key}: under the Rivet engine, actors are created by the engine "
            "(its gateway or API), not by an envoy"
        )

    async def get_by_key(self, name: str, key: str) -> ActorRecord | None:
        """The actor ``name``/``key`` if the engine started it on this envoy."""
        for started in self._known.values():
            if started.name == name and started.key == key:
                return await self.get_by_id(started.actor_id)
        return None

    async def get_by_id(self, actor_id: str) -> ActorRecord | None:
        """The actor as the engine's KV holds it (or as the engine started it, before its
        first save); None for an actor this envoy does not know."""
        if actor_id not in self._known:
            return None
        meta, state = await self._read(actor_id)
        return self._record(actor_id, meta, state)

    def exists_nowait(self, actor_id: str) -> bool:
        """Whether the engine started this actor here."""
        return actor_id in self._known

    async def begin_generation(self, actor_id: str) -> ActorRecord:
        """The record of the generation the engine started here (its number is the
        engine's generation: nothing is written)."""
        held = self._held.get(actor_id)
        if held is None:
            raise ActorNotFound(f"actor {actor_id} is not started on this envoy by the engine")
        meta, state = await self._read(actor_id)
        record = self._record(actor_id, meta, state)
        assert record is not None
        self._unload_alarms(actor_id)
        loaded = self._read_alarms.pop(actor_id, [])
        for alarm in loaded:
            self._alarms[alarm.alarm_id] = alarm
            self._alarms_of.setdefault(actor_id, set()).add(alarm.alarm_id)
        self.loaded_alarms[actor_id] = loaded
        return attrs.evolve(record, generation=held.generation)

    async def begin_or_create(
        self, name: str, key: str, actor_id: str, input: bytes | None
    ) -> ActorRecord:
        """Only for an actor the engine started here (see :meth:`create`)."""
        record = await self.get_by_key(name, key)
        if record is None:
            await self.create(actor_id, name, key, input)
        assert record is not None
        return await self.begin_generation(record.actor_id)

    # ---------------------------------------------------------------- alarms

    def _unload_alarms(self, actor_id: str) -> list[AlarmRecord]:
        """Drop the actor's alarms from memory (it stops running here); returns them."""
        gone = [self._alarms.pop(a) for a in self._alarms_of.pop(actor_id, set())]
        return sorted(gone, key=due_order)

    def unload_alarms(self, actor_id: str) -> list[AlarmRecord]:
        """The actor's generation ended here: its alarms stay in the engine's KV and leave
        this envoy's memory; returns them (earliest first) for the engine's wake-up."""
        return self._unload_alarms(actor_id)

    def _alarms_in_order(self, actor_id: str) -> list[AlarmRecord]:
        return sorted((self._alarms[a] for a in self._alarms_of.get(actor_id, ())), key=due_order)

    async def _write_alarms(self, actor_id: str) -> None:
        alarms = self._alarms_in_order(actor_id)
        value = json.dumps(
            [
                {
                    "id": a.alarm_id,
                    "due": a.due,
                    "action": a.action,
                    "args": a.args.decode(),
                    "attempts": a.attempts,
                }
                for a in alarms
            ]
        ).encode()
        put: KvPutRequest = {"keys": [ALARMS_KEY], "values": [value]}
        await self._kv(actor_id, Variant("KvPutRequest", put))

    async def add_alarm(self, alarm: AlarmRecord, generation: int, max_alarms: int) -> None:
        """Store ``alarm`` with its actor's alarms (fenced by the generation held here)."""
        self._fence(alarm.actor_id, generation)
        mine = self._alarms_of.setdefault(alarm.actor_id, set())
        if len(mine) >= max_alarms:
            raise ScheduleLimit(f"actor {alarm.actor_id} already has {len(mine)} alarms")
        self._alarms[alarm.alarm_id] = alarm
        mine.add(alarm.alarm_id)
        try:
            await self._write_alarms(alarm.actor_id)
        except StoreError:
            mine.discard(alarm.alarm_id)
            del self._alarms[alarm.alarm_id]
            raise

    async def remove_alarm(self, actor_id: str, alarm_id: str) -> bool:
        """Remove the alarm; False if the actor (running here) has no such alarm."""
        alarm = self._alarms.get(alarm_id)
        if alarm is None or alarm.actor_id != actor_id:
            return False
        del self._alarms[alarm_id]
        self._alarms_of.get(actor_id, set()).discard(alarm_id)
        if self._held.get(actor_id) is not None:
            await self._write_alarms(actor_id)
        return True

    async def retry_alarm(self, alarm_id: str, due: float, attempts: int) -> bool:
        """Move the alarm to ``due`` with ``attempts``; False if it is gone."""
        alarm = self._alarms.get(alarm_id)
        if alarm is None:
            return False
        self._alarms[alarm_id] = attrs.evolve(alarm, due=due, attempts=attempts)
        if self._held.get(alarm.actor_id) is not None:
            await self._write_alarms(alarm.actor_id)
        return True

    async def list_alarms(self, actor_id: str) -> list[AlarmRecord]:
        """The alarms of an actor running here, earliest first."""
        await trio.lowlevel.checkpoint()
        return self._alarms_in_order(actor_id)

    async def next_alarms(self, limit: int) -> list[AlarmRecord]:
        """The ``limit`` alarms due first among the actors running here."""
        await trio.lowlevel.checkpoint()
        return heapq.nsmallest(limit, self._alarms.values(), key=due_order)

    async def save(self, actor_id: str, generation: int, state: bytes) -> None:
        """Write the state (and the record) of the generation held here."""
        self._fence(actor_id, generation)
        started = self._held[actor_id]
        meta = {
            "name": started.name,
            "key": started.key,
            "generation": generation,
            "initialized": True,
        }
        keys = [META_KEY, STATE_KEY]
        values = [json.dumps(meta).encode(), state]
        records = self._records_due(actor_id)
        if records is not None and self.conn_records is not None:
            keys.append(CONNS_KEY)
            values.append(json.dumps(self.conn_records(actor_id)).encode())
        put: KvPutRequest = {"keys": keys, "values": values}
        await self._kv(actor_id, Variant("KvPutRequest", put))
        self.writes += 1
        if records is not None:
            self._records_written[actor_id] = (trio.current_time(), records)

    def _records_due(self, actor_id: str) -> frozenset[str] | None:
        """The ids of the connections whose records this save writes, or None if they need
        not be written again: they are written when the set of connections changed, in a
        finalizing generation's saves, and otherwise at most every
        :data:`CONN_RECORDS_INTERVAL` (with the output gate, an actor saves with every answer
        it makes, and its records grow with its connections)."""
        if self.conn_records is None:
            return None
        ids = self.conn_ids(actor_id) if self.conn_ids is not None else frozenset()
        last = self._records_written.get(actor_id)
        if (
            last is None
            or actor_id in self.finalizing
            or last[1] != ids
            or trio.current_time() - last[0] >= CONN_RECORDS_INTERVAL
        ):
            return ids
        return None

    async def save_many(self, items: list[SaveItem]) -> list[ActorError | None]:
        """Save several actors at once (the output gate's batches): each actor's KV is its
        own in the engine, so the puts go concurrently, each fenced on its own."""
        errors: list[ActorError | None] = [None] * len(items)

        async def save_one(index: int, item: SaveItem) -> None:
            if item.state is None:
                await trio.lowlevel.checkpoint()  # no connection records here: nothing to write
                return
            try:
                await self.save(item.actor_id, item.generation, item.state)
            except ActorError as exc:
                errors[index] = exc

        async with trio.open_nursery() as nursery:
            for index, item in enumerate(items):
                nursery.start_soon(save_one, index, item)
        return errors

    async def delete(self, actor_id: str, generation: int) -> None:
        """Drop the actor's whole KV space (the engine destroys the actor itself)."""
        self._fence(actor_id, generation)
        await self._kv(actor_id, Variant("KvDropRequest"))
        self.writes += 1
        self._known.pop(actor_id, None)
