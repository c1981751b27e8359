"""The alarm workloads' worker process: ``python -m benchmarks.alarms MODE ...``.

Each mode prints one JSON line. The runner (``python -m benchmarks alarms``) starts one process
per measurement, so RSS and timings are not polluted by earlier ones.

* ``populate --db F --n N [--alarms K] [--due-in S]``: N asleep actors in a fresh SQLite file,
  the first K with one pending alarm each, due ``S`` seconds from now (spread over 1 ms per
  1,000 alarms).
* ``memory --db F``: a registry on that file; RSS once the alarm timer has read its prefetch.
* ``restart --db F --n N``: a registry on a file whose N alarms are already due: runs them all
  and reports alarms/s, the delay from due (or from the registry's start, if later) to the
  start of each action, and whether any ran twice or was lost.
* ``calls --db F --n N``: the baseline of ``restart``: the same actors woken by plain calls of
  the same action, as many at once as the timer runs alarms.
* ``latency --db F --n N [--asleep]``: one actor arms an alarm 20 ms ahead, N times in a row;
  the delay from due to the start of its action (with ``--asleep`` it is armed 200 ms ahead and
  the actor is put to sleep before it is due, so every alarm also wakes it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import statistics
import sys
import time
import uuid
from typing import Any

import trio

import actorcore
from actorcore import ActorContext, ActorOptions, Registry, SQLiteStore
from actorcore.alarms import MAX_RUNNING
from actorcore.store import open_store

DELAY = 0.02
"""Seconds ahead each alarm of the latency mode is armed."""
DELAY_ASLEEP = 0.2
"""The same with ``--asleep``: enough for the actor to be asleep before it is due."""

SETTLE = 1.0
"""Seconds a registry runs before its RSS is read (the timer reads its prefetch at once)."""


class Alarmed(actorcore.Actor):
    """One alarm's target: ``fire`` records when it started and which alarm it was."""

    name = "alarmed"
    options = ActorOptions(sleep_timeout=60.0, sleep_grace_period=2.0)
    started: list[tuple[float, float, int]] = []
    """(time.time() at the start of ``fire``, its due time, its index)."""
    done = trio.Event()
    expected = 0

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"runs": 0}

    @actorcore.action
    async def fire(self, ctx: ActorContext, due: float, index: int) -> None:
        Alarmed.started.append((time.time(), due, index))
        ctx.state["runs"] += 1
        if len(Alarmed.started) >= Alarmed.expected:
            Alarmed.done.set()

    @actorcore.action
    async def arm(self, ctx: ActorContext, delay: float, index: int, then_sleep: bool) -> None:
        due = time.time() + delay
        await ctx.schedule.at(due, "fire", due, index)
        if then_sleep:
            ctx.sleep()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def populate(db: str, n: int, alarms: int, due_in: float) -> dict[str, Any]:
    async with open_store(SQLiteStore(db)):
        pass  # the schema, made by the store itself
    t0 = time.perf_counter()
    now = time.time()
    conn = sqlite3.connect(db)
    try:
        conn.execute("BEGIN")
        ids = [uuid.uuid4().hex for _ in range(n)]
        conn.executemany(
            "INSERT INTO actors (actor_id, name, key, generation, initialized, state, input, "
            "updated_at) VALUES (?, 'alarmed', ?, 1, 1, ?, NULL, ?)",
            ((actor_id, f"a-{i}", b'{"runs":0}', now) for i, actor_id in enumerate(ids)),
        )
        if alarms:
            rows = []
            for i, actor_id in enumerate(ids[:alarms]):
                due = now + due_in + i * 1e-6
                rows.append(
                    (uuid.uuid4().hex, actor_id, due, "fire", json.dumps([due, i]).encode(), 0)
                )
            conn.executemany(
                "INSERT INTO alarms (alarm_id, actor_id, due, action, args, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        conn.execute("COMMIT")
        # Into the database file: a registry must not start on a WAL of 100k rows.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {"actors": n, "alarms": alarms, "seconds": time.perf_counter() - t0}


async def memory(db: str) -> dict[str, Any]:
    async with Registry([Alarmed], SQLiteStore(db)) as registry:
        await trio.sleep(SETTLE)
        gc.collect()
        stats = registry.statistics()
        return {
            "rss": _rss(),
            "alarms_in_memory": stats.alarms.in_memory,
            "refills": stats.alarms.refills,
            "awake_actors": sum(stats.actors_by_state.values()),
        }


async def restart(db: str, n: int) -> dict[str, Any]:
    Alarmed.expected = n
    Alarmed.started = []
    Alarmed.done = trio.Event()
    async with Registry([Alarmed], SQLiteStore(db)) as registry:
        ready = time.time()
        with trio.move_on_after(300):
            await Alarmed.done.wait()
        with trio.move_on_after(30):
            while registry.statistics().alarms.running:  # noqa: ASYNC110 - the last removals
                await trio.sleep(0.01)
        left = await registry.store.next_alarms(10)
        stats = registry.statistics().alarms
    starts = [s for s, _, _ in Alarmed.started]
    delays = [s - max(due, ready) for s, due, _ in Alarmed.started]
    indexes = [i for _, _, i in Alarmed.started]
    return {
        "alarms": n,
        "ran": len(indexes),
        "ran_twice": len(indexes) - len(set(indexes)),
        "lost": n - len(set(indexes)),
        "left_in_store": len(left),
        "seconds": max(starts) - ready if starts else None,
        "alarms_per_s": n / (max(starts) - ready) if starts else None,
        "delay_p50_ms": _pct(delays, 0.5) * 1000 if delays else None,
        "delay_p99_ms": _pct(delays, 0.99) * 1000 if delays else None,
        "dropped": stats.dropped,
    }


async def calls(db: str, n: int, width: int) -> dict[str, Any]:
    """The baseline of ``restart``: the same N asleep actors woken by N plain calls of the
    same action (``width`` at once, the timer's default bound), no alarms involved."""
    conn = sqlite3.connect(db)
    try:
        ids = [row[0] for row in conn.execute("SELECT actor_id FROM actors ORDER BY key")]
    finally:
        conn.close()
    Alarmed.expected = n
    Alarmed.started = []
    Alarmed.done = trio.Event()
    async with Registry([Alarmed], SQLiteStore(db)) as registry:
        ready = time.time()
        queue = iter(enumerate(ids[:n]))

        async def worker() -> None:
            for i, actor_id in queue:
                await registry.call(actor_id, "fire", ready, i)

        with trio.fail_after(300):
            async with trio.open_nursery() as nursery:
                for _ in range(width):
                    nursery.start_soon(worker)
    starts = [s for s, _, _ in Alarmed.started]
    return {"calls": n, "calls_per_s": n / (max(starts) - ready)}


async def latency(db: str, n: int, asleep: bool) -> dict[str, Any]:
    Alarmed.started = []
    async with Registry([Alarmed], SQLiteStore(db)) as registry:
        handle = await registry.get_or_create("alarmed", "latency")
        for i in range(n):
            Alarmed.expected = i + 1
            Alarmed.done = trio.Event()
            await handle.call("arm", DELAY_ASLEEP if asleep else DELAY, i, asleep)
            with trio.fail_after(10):
                if asleep:
                    await registry.sleep(handle.actor_id)  # asleep well before it is due
                await Alarmed.done.wait()
    delays = [(s - due) * 1000 for s, due, _ in Alarmed.started]
    return {
        "alarms": n,
        "p50_ms": statistics.median(delays),
        "p99_ms": _pct(delays, 0.99),
        "max_ms": max(delays),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.alarms")
    parser.add_argument("mode", choices=["populate", "memory", "restart", "calls", "latency"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--alarms", type=int, default=0, help="actors given an alarm (populate)")
    parser.add_argument("--due-in", type=float, default=86_400.0)
    parser.add_argument("--asleep", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any]
    if args.mode == "populate":
        result = trio.run(populate, args.db, args.n, min(args.alarms, args.n), args.due_in)
    elif args.mode == "memory":
        result = trio.run(memory, args.db)
    elif args.mode == "restart":
        result = trio.run(restart, args.db, args.n)
    elif args.mode == "calls":
        result = trio.run(calls, args.db, args.n, MAX_RUNNING)
    else:
        result = trio.run(latency, args.db, args.n, args.asleep)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
