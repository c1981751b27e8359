"""Soak: thousands of connections across a thousand actors, with forced sleep/wake/destroy cycles.

Not part of the test run (pytest collects only ``test_*.py``). Run it from the checkout::

    python -m tests.soak.soak --minutes 2 --actors 1000 --connections 3000

The driver starts a server subprocess (``python -m tests.soak.soak serve``: a registry on a
SQLite store, served with ``registry.serve`` on 127.0.0.1 port 0) and, in its own trio run:

* opens ``--connections`` WebSocket connections, ramped up, spread over ``--actors`` actors of
  three kinds: ``counter`` (protocol ``/connect``, an ``add`` action, state persisted),
  ``hecho`` (raw ``/ws`` echo, hibernatable) and ``echo`` (raw ``/ws`` echo, not hibernatable);
* holds them; each sends one message at a time (an ``add`` action or an echo payload) and waits
  for its answer, paced so the whole load stays near ``--rate`` messages per second;
* forces lifecycle cycles through a ``control`` actor: every ``--cycle-interval`` seconds it
  asks a random actor to sleep (it wakes on its next message) and, more rarely, to be destroyed
  (a new actor is made under the same key by the next connection);
* reconnects after every close by the close-code table: 1001 at once, 1000 ``actor.destroyed``
  (a new actor for the key) and 1013/1011 after a short backoff, 1012 never (only at the end);
* samples, every ``--sample-interval`` seconds, the RSS and CPU of both processes, the server's
  live Python objects (``sys.getallocatedblocks()``), its event-loop lag and its registry
  statistics.

At the end it stops the load (the clients close), sends the server SIGTERM (the drain: every
connection gets 1012, every actor saves its state), reads the saved counters from the SQLite
file, and prints one JSON report: connections held, messages sent and answered, lost messages
(sent on a connection, never answered and no close explaining it: must be 0), messages whose
connection closed before the answer (by close code), counter conflicts (two answers with the
same count from one actor: a lost or repeated update; must be 0), counters saved below a count
they acknowledged (must be 0), sleeps/wakes/destroys (from the server's lifecycle log), closes by
code (seen by clients and sent by the server), errors, CPU and loop lag, and RSS over time with
its growth after warm-up (must be flat: under ``RSS_GROWTH_LIMIT``). The exit status is 1 when a
verdict fails.

Every loop is bounded by the run time; the server subprocess is killed if it does not exit.

Memory: "server RSS" is the server process's VmRSS. Every sample also splits it (anonymous and
file pages), and shows glibc's heap (bytes in use, bytes free inside it) and pymalloc's arenas
(``memprobe.memory``). ``--probe-interval`` adds probes (live objects by type, tracemalloc
growth by allocation site with ``--tracemalloc N``, glibc's free chunks by size) and ``--trim``
calls ``malloc_trim(0)`` in the server and reports the RSS before and after: RSS that comes
back was free memory the allocator held, not live data. ``--recv-size`` changes the server's
bytes per socket recv (an experiment on glibc heap
fragmentation: 64 KiB by default).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import random
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, Final

import trio

HOST: Final = "127.0.0.1"
ANSWER_TIMEOUT: Final = 30.0
"""A message unanswered this long on an open connection counts as lost."""
CONNECT_TIMEOUT: Final = 15.0
SHUTDOWN_TIMEOUT: Final = 60.0
MIN_RSS_SAMPLES: Final = 8
RSS_GROWTH_LIMIT: Final = 10.0
"""Server RSS growth (percent) from the first to the last quarter of the run after warm-up
that still counts as flat."""


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def rss_mb(pid: int) -> float:
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def kind_of(actor: int) -> str:
    """Actor i's kind: half counters, 30 % hibernatable echoes, 20 % plain echoes."""
    slot = actor % 10
    return "counter" if slot < 5 else "hecho" if slot < 8 else "echo"


def db_sizes_mb(db: str) -> dict[str, float]:
    """Sizes of the SQLite file, its WAL and its shared-memory index."""
    return {
        suffix or "db": round(os.path.getsize(db + suffix) / 2**20, 2)
        for suffix in ("", "-wal", "-shm")
        if os.path.exists(db + suffix)
    }


def append_json_line(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# =========================================================================== server process


class LifecycleCounter(logging.Handler):
    """Counts lifecycle transitions from the ``actorcore.lifecycle`` records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        old = getattr(record, "old_state", None)
        new = getattr(record, "new_state", None)
        if new is None:
            return
        reason = str(getattr(record, "reason", ""))
        if new == "sleep_finalize":
            self.counts["sleeps"] += 1
        elif new == "sleep_grace":
            self.counts[f"sleep requests ({reason})"] += 1
        elif old == "loading" and new == "started":
            self.counts["wakes"] += 1
        elif new == "destroyed":
            self.counts["destroys"] += 1
        elif old == "loading" and new == "asleep":
            self.counts["failed starts"] += 1


class LagMonitor:
    """How late the server's event loop wakes a 0.1 s sleep: its scheduling lag."""

    def __init__(self) -> None:
        self.max_since_stats = 0.0
        self.max_overall = 0.0

    async def run(self) -> None:
        while True:
            start = trio.current_time()
            await trio.sleep(0.1)
            lag = trio.current_time() - start - 0.1
            self.max_since_stats = max(self.max_since_stats, lag)
            self.max_overall = max(self.max_overall, lag)

    def take(self) -> float:
        lag, self.max_since_stats = self.max_since_stats, 0.0
        return round(lag, 3)


async def drain_on_signal(registry: Any) -> None:
    """SIGTERM or SIGINT: drain (every connection gets 1012, every actor saves its state)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            registry.request_shutdown()
            return


async def serve(args: argparse.Namespace) -> None:
    import actorcore
    from actorcore import Actor, ActorContext, ActorOptions, Conn, action

    from . import memprobe

    probe = memprobe.Probe()

    counter = LifecycleCounter()
    lag = LagMonitor()
    lifecycle_log = logging.getLogger("actorcore.lifecycle")
    lifecycle_log.setLevel(logging.INFO)
    lifecycle_log.addHandler(counter)
    lifecycle_log.propagate = False
    # Warnings and errors go to stderr, which the driver keeps in a log file.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    common: dict[str, Any] = {
        "sleep_timeout": args.sleep_timeout,
        "sleep_grace_period": 2.0,
        "ready_timeout": 20.0,
        "state_save_interval": 5.0,
        "close_timeout": 2.0,
        "max_held_work": 10_000,
    }
    control_requests: collections.Counter[str] = collections.Counter()
    registry: actorcore.Registry

    class Counter(Actor):
        name = "counter"
        options = ActorOptions(**common)

        def create_state(self, ctx: ActorContext, input: Any) -> Any:
            return {"count": 0}

        @action
        async def add(self, ctx: ActorContext, n: int) -> int:
            ctx.state = {"count": ctx.state["count"] + n}
            return int(ctx.state["count"])

    class HEcho(Actor):
        name = "hecho"
        options = ActorOptions(**common, hibernatable_websockets=True)

        async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
            await conn.send(message)

    class Echo(HEcho):
        name = "echo"
        options = ActorOptions(**common)

    class Control(Actor):
        name = "control"
        options = ActorOptions(no_sleep=True, action_timeout=120.0, max_held_work=10_000)

        @action
        async def sleep(self, ctx: ActorContext, kind: str, key: str) -> bool:
            nursery.start_soon(lifecycle, "sleep", kind, key)
            return True

        @action
        async def destroy(self, ctx: ActorContext, kind: str, key: str) -> bool:
            nursery.start_soon(lifecycle, "destroy", kind, key)
            return True

        @action
        async def stats(self, ctx: ActorContext) -> dict[str, Any]:
            stats = registry.statistics()
            return {
                "rss_mb": rss_mb(os.getpid()),
                "connections": stats.connections,
                "hibernatable_connections": stats.hibernatable_connections,
                "actors_by_state": stats.actors_by_state,
                "running_generations": stats.running_generations,
                "messages_in": stats.messages_in,
                "messages_out": stats.messages_out,
                "save_errors": stats.save_errors,
                "lifecycle": dict(counter.counts),
                "control": dict(control_requests),
                "loop_lag_max_s": lag.take(),
                # Live Python objects (pymalloc blocks): flat when RSS growth is only the
                # allocator's high-water mark, growing with a leak.
                "allocated_blocks": sys.getallocatedblocks(),
                # Where the RSS is: anonymous/file pages, glibc heap in use and free, pymalloc
                # arenas (memprobe.memory); and the SQLite files.
                "memory": memprobe.memory(),
                "db_mb": db_sizes_mb(args.db),
            }

        @action
        async def probe(self, ctx: ActorContext, trim: bool) -> dict[str, Any]:
            # Blocks the event loop for a while (gc.get_objects, tracemalloc snapshots).
            return probe.run(trim=trim)

    async def lifecycle(what: str, kind: str, key: str) -> None:
        try:
            handle = await registry.get(kind, key)
            if what == "sleep":
                await registry.sleep(handle.actor_id)
            else:
                await registry.destroy(handle.actor_id)
            control_requests[f"{what} done"] += 1
        except actorcore.ActorError as exc:
            control_requests[f"{what} {exc.code}"] += 1
        except trio.TooSlowError:
            control_requests[f"{what} too slow"] += 1

    store = actorcore.SQLiteStore(args.db)
    # One load-generating address creates every actor: no creation budget.
    registry = actorcore.Registry([Counter, HEcho, Echo, Control], store=store, create_rate=None)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: registry.serve(
                HOST,
                0,
                max_connections=args.max_connections,
                # The load generator is one address: it may hold every connection.
                max_connections_per_client=args.max_connections,
                task_status=task_status,
            )
        )
        nursery.start_soon(drain_on_signal, registry)
        nursery.start_soon(lag.run)
        print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
        await registry.wait_stopped()
        stats = registry.statistics()
        print(
            json.dumps(
                {
                    "stopped": {
                        "lifecycle": dict(counter.counts),
                        "control": dict(control_requests),
                        "closes_by_code": {str(k): v for k, v in stats.closes_by_code.items()},
                        "messages_in": stats.messages_in,
                        "messages_out": stats.messages_out,
                        "save_errors": stats.save_errors,
                        "rss_mb": rss_mb(os.getpid()),
                        "loop_lag_max_s": round(lag.max_overall, 3),
                    }
                }
            ),
            flush=True,
        )
        nursery.cancel_scope.cancel()


# =========================================================================== driver


class Control:
    """Requests to the server's ``control`` actor over one protocol connection, reconnected
    when the server closes it (:meth:`Load.control_session`)."""

    def __init__(self) -> None:
        self.ws: Any = None
        self.next_id = 0
        self.pending: dict[int, trio.Event] = {}
        self.replies: dict[int, Any] = {}
        self.outcomes: collections.Counter[str] = collections.Counter()

    async def send(self, name: str, *args: Any) -> int:
        """Send a request without waiting for its reply; ConnectionClosed if not connected."""
        from trio_websocket import ConnectionClosed

        if self.ws is None:
            raise ConnectionClosed(None)
        self.next_id += 1
        action_id = self.next_id
        frame = {"type": "action", "id": action_id, "name": name, "args": list(args)}
        await self.ws.send_message(json.dumps(frame))
        return action_id

    async def call(self, name: str, *args: Any) -> Any:
        """Send a request and return its output (the caller bounds the wait)."""
        action_id = self.next_id + 1
        done = self.pending[action_id] = trio.Event()  # before the reply can arrive
        try:
            await self.send(name, *args)
            await done.wait()
        finally:
            self.pending.pop(action_id, None)
        frame = self.replies.pop(action_id)
        if frame["type"] != "action_result":
            raise RuntimeError(f"control {name}: {frame}")
        return frame["output"]

    def on_frame(self, frame: dict[str, Any]) -> None:
        self.outcomes[frame["type"]] += 1
        done = self.pending.get(frame.get("id", -1))
        if done is not None:
            self.replies[frame["id"]] = frame
            done.set()

    def lost(self) -> None:
        """The connection closed: every waiting call fails."""
        self.ws = None
        for action_id, done in list(self.pending.items()):
            self.replies[action_id] = {"type": "error", "code": "control connection closed"}
            done.set()


class Load:
    """The driver's bookkeeping and its tasks."""

    def __init__(self, args: argparse.Namespace, port: int, server_pid: int) -> None:
        self.args = args
        self.port = port
        self.server_pid = server_pid
        self.stop = trio.Event()
        self.held = 0
        self.held_samples: list[int] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[str] = collections.Counter()
        self.explained: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []
        self.counter_seen: dict[str, set[int]] = collections.defaultdict(set)
        self.counter_max: dict[str, int] = {}
        self.conflicts = 0
        self.samples: list[dict[str, Any]] = []
        self.probes: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.control_ready = trio.Event()
        self.final = trio.Event()
        """Set once the server is being shut down: the control connection is not reopened."""
        self.control_closes: collections.Counter[str] = collections.Counter()
        import psutil

        self.server_proc = psutil.Process(server_pid)
        self.driver_proc = psutil.Process(os.getpid())

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)

    # ------------------------------------------------------------ connections

    async def connection(self, index: int) -> None:
        """One client slot: connect, send/await one message at a time, reconnect on a close."""
        actor = index % self.args.actors
        kind = kind_of(actor)
        key = f"k{actor}"
        path = f"/actors/{kind}/{key}/{'connect' if kind == 'counter' else 'ws'}"
        interval = self.args.connections / self.args.rate
        rng = random.Random(index)
        backoff = 0.0
        while not self.stop.is_set():
            if backoff:
                with trio.move_on_after(backoff):
                    await self.stop.wait()
                if self.stop.is_set():
                    return
            backoff = await self.session(index, kind, key, path, interval, rng)

    async def session(
        self, index: int, kind: str, key: str, path: str, interval: float, rng: random.Random
    ) -> float:
        """One connection, until it closes; returns the delay before the next one."""
        from trio_websocket import ConnectionClosed, HandshakeError, wrap_client_stream

        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await trio.open_tcp_stream(HOST, self.port)
            except (OSError, trio.TooSlowError) as exc:
                self.errors[f"connect failed: {type(exc).__name__}"] += 1
                return 1.0 + rng.random()
            waiting = False
            phase = "handshake"
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    ws = await wrap_client_stream(nursery, stream, HOST, path)
                self.counts["connects"] += 1
                self.held += 1
                try:
                    actor_id = ""
                    phase = "init frame"
                    if kind == "counter":
                        with trio.fail_after(ANSWER_TIMEOUT):
                            actor_id = json.loads(await ws.get_message())["actor_id"]
                    phase = "traffic"
                    # Spread the load: the first message after a random part of the interval.
                    with trio.move_on_after(rng.random() * interval):
                        await self.stop.wait()
                    seq = 0
                    while not self.stop.is_set():
                        seq += 1
                        if kind == "counter":
                            payload = json.dumps(
                                {"type": "action", "id": seq, "name": "add", "args": [1]}
                            )
                        else:
                            payload = f"{index}:{seq}"
                        sent_at = time.monotonic()
                        await ws.send_message(payload)
                        waiting = True
                        self.counts["sent"] += 1
                        with trio.move_on_after(ANSWER_TIMEOUT) as timeout:
                            answer = await ws.get_message()
                        if timeout.cancelled_caught:
                            self.counts["lost"] += 1
                            self.errors["no answer on an open connection"] += 1
                            return 1.0
                        waiting = False
                        self.latencies.append(time.monotonic() - sent_at)
                        self.counts["answered"] += 1
                        self.check_answer(kind, key, actor_id, seq, payload, answer)
                        with trio.move_on_after(interval * (0.5 + rng.random())):
                            await self.stop.wait()
                    return 0.0
                finally:
                    self.held -= 1
                    with trio.move_on_after(3, shield=True):
                        await ws.aclose()
            except ConnectionClosed as exc:
                reason = exc.reason
                code = int(reason.code) if reason is not None else 1006
                text = (reason.reason or "") if reason is not None else ""
                label = f"{code} {text}".strip()
                self.closes[label] += 1
                if waiting:
                    self.explained[label] += 1
                return self.backoff_for(code, text, rng)
            except (HandshakeError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                self.errors[f"{phase} failed: {type(exc).__name__}"] += 1
                return 1.0 + rng.random()
            finally:
                with trio.move_on_after(3, shield=True):
                    # trio-websocket leaves the client's stream open after a server close.
                    await stream.aclose()

    def backoff_for(self, code: int, reason: str, rng: random.Random) -> float:
        """The reconnect delay the close-code table asks for."""
        if code == 1001:
            return 0.0  # actor.sleeping: reconnect at once
        if code == 1000 and reason == "actor.destroyed":
            return 0.2 + 0.3 * rng.random()  # a new actor under the same key
        if code == 1012:
            return 2.0 + rng.random()  # runtime.shutdown (only expected at the end)
        if code in (1011, 1013):
            self.errors[f"close {code} {reason}"] += 1
            return 1.0 + rng.random()
        self.errors[f"close {code} {reason}"] += 1
        return 1.0 + rng.random()

    def check_answer(
        self, kind: str, key: str, actor_id: str, seq: int, payload: str, answer: str | bytes
    ) -> None:
        if kind != "counter":
            if answer != payload:
                self.errors["echo mismatch"] += 1
            return
        frame = json.loads(answer)
        if frame.get("type") == "error" and frame.get("id") == seq:
            # An add that raced a destroy (actor.destroyed) or a sleep's grace deadline: a
            # documented answer, not applied.
            self.counts[f"answered with error {frame.get('code')}"] += 1
            return
        if frame.get("type") != "action_result" or frame.get("id") != seq:
            self.errors[f"bad answer {frame.get('type')} {frame.get('code', '')}".strip()] += 1
            return
        count = int(frame["output"])
        seen = self.counter_seen[actor_id]
        if count in seen:
            self.conflicts += 1  # two adds answered with one count: an update lost or repeated
        seen.add(count)
        self.counter_max[actor_id] = max(count, self.counter_max.get(actor_id, 0))

    # ------------------------------------------------------------ control

    async def control_session(self, control: Control) -> None:
        """Keep a control connection open until the end, reconnecting when it closes."""
        from trio_websocket import ConnectionClosed, HandshakeError, open_websocket

        path = "/actors/control/main/connect"
        while not self.final.is_set():
            try:
                async with open_websocket(HOST, self.port, path, use_ssl=False) as ws:
                    await ws.get_message()  # init
                    control.ws = ws
                    self.control_ready.set()
                    try:
                        while True:
                            control.on_frame(json.loads(await ws.get_message()))
                    finally:
                        control.lost()
            except (ConnectionClosed, HandshakeError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                self.control_closes[str(reason)] += 1
            with trio.move_on_after(0.5):
                await self.final.wait()

    async def cycles(self, control: Control) -> None:
        """Ask the server to sleep (or destroy) a random actor every ``cycle_interval``;
        the requests do not wait for each other."""
        from trio_websocket import ConnectionClosed

        rng = random.Random(1)
        while not self.stop.is_set():
            with trio.move_on_after(self.args.cycle_interval):
                await self.stop.wait()
            if self.stop.is_set():
                return
            actor = rng.randrange(self.args.actors)
            what = "destroy" if rng.random() < self.args.destroy_ratio else "sleep"
            try:
                await control.send(what, kind_of(actor), f"k{actor}")
            except ConnectionClosed:
                self.counts["requests skipped: control reconnecting"] += 1
                continue
            self.counts[f"{what} requests"] += 1

    async def sampler(self, control: Control) -> None:
        while True:
            stats: dict[str, Any] = {}
            with trio.move_on_after(self.args.sample_interval), contextlib.suppress(Exception):
                stats = await control.call("stats")
            sample = {
                "t": self.elapsed(),
                "server_rss_mb": rss_mb(self.server_pid),
                "driver_rss_mb": rss_mb(os.getpid()),
                "server_cpu_percent": self.server_proc.cpu_percent(),
                "driver_cpu_percent": self.driver_proc.cpu_percent(),
                "load_average_1m": os.getloadavg()[0],
                "held": self.held,
                "server_connections": stats.get("connections"),
                "actors_by_state": stats.get("actors_by_state"),
                "sent": self.counts["sent"],
                "answered": self.counts["answered"],
                "server_loop_lag_max_s": stats.get("loop_lag_max_s"),
                "server_allocated_blocks": stats.get("allocated_blocks"),
                **memory_fields(stats.get("memory")),
                "server_db_mb": stats.get("db_mb"),
                "errors": sum(self.errors.values()),
                "stopping": self.stop.is_set(),
            }
            self.samples.append(sample)
            self.held_samples.append(self.held)
            print(json.dumps(sample), file=sys.stderr, flush=True)
            if self.stop.is_set():
                return
            with trio.move_on_after(self.args.sample_interval):
                await self.stop.wait()

    async def probe(self, control: Control, *, trim: bool) -> None:
        """One memory probe of the server (see ``memprobe.Probe``), kept for the report."""
        record: dict[str, Any] = {"t": self.elapsed(), "trim": trim}
        for attempt in range(3):  # the control connection may be reconnecting
            try:
                with trio.fail_after(120):
                    record.update(await control.call("probe", trim))
                record.pop("error", None)
                break
            except Exception as exc:  # a failed probe is reported, not fatal
                record["error"] = repr(exc)
                await trio.sleep(1.0 + attempt)
        record["t_done"] = self.elapsed()
        self.probes.append(record)
        if self.args.probe_file:
            append_json_line(self.args.probe_file, record)
        print(json.dumps(probe_summary(record)), file=sys.stderr, flush=True)

    async def prober(self, control: Control) -> None:
        """A probe every ``--probe-interval`` seconds while the load runs."""
        while True:
            with trio.move_on_after(self.args.probe_interval):
                await self.stop.wait()
            if self.stop.is_set():
                return
            await self.probe(control, trim=self.args.trim == "probes")

    # ------------------------------------------------------------ run

    async def run(self, process: trio.Process) -> dict[str, Any]:
        args = self.args
        control = Control()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.control_session, control)
            with trio.fail_after(30):
                await self.control_ready.wait()
            async with trio.open_nursery() as load:
                load.start_soon(self.sampler, control)
                ramp = max(1.0, args.connections / args.ramp_rate)
                for index in range(args.connections):
                    load.start_soon(self.connection, index)
                    await trio.sleep(ramp / args.connections)
                self.counts["ramp seconds"] = int(self.elapsed())
                load.start_soon(self.cycles, control)
                if args.probe_interval:
                    load.start_soon(self.prober, control)
                with trio.move_on_after(max(0.0, args.minutes * 60 - self.elapsed())):
                    await trio.sleep_forever()
                if args.probe_interval or args.trim != "none":
                    # The last probe, under load (trimmed unless --trim none).
                    await self.probe(control, trim=args.trim != "none")
                self.stop.set()
            # Every connection closed by the client; the last statistics, then the drain.
            server_stats: dict[str, Any] = {}
            with trio.move_on_after(30), contextlib.suppress(Exception):
                server_stats = await control.call("stats")
            self.final.set()
            self.counts["control errors"] = control.outcomes["error"]
            process.send_signal(signal.SIGTERM)  # the server drains: every connection gets 1012
            nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_TIMEOUT
        return server_stats


def memory_fields(memory: dict[str, Any] | None) -> dict[str, Any]:
    """Sample fields from the server's ``memprobe.memory()`` (MB): RSS by kind of page, the
    glibc heap (in use / free inside it / mmapped), pymalloc arenas and their live blocks."""
    if not memory:
        return {}
    proc = memory.get("proc") or {}
    malloc = memory.get("malloc") or {}
    pym = memory.get("pymalloc") or {}
    return {
        "server_rss_anon_mb": proc.get("RssAnon"),
        "server_rss_file_mb": proc.get("RssFile"),
        "server_rss_shmem_mb": proc.get("RssShmem"),
        "server_threads": proc.get("Threads"),
        "server_malloc_in_use_mb": malloc.get("in_use"),
        "server_malloc_free_mb": malloc.get("free"),
        "server_malloc_mmapped_mb": malloc.get("mmapped"),
        "server_pymalloc_arenas_mb": pym.get("arenas_mb"),
        "server_pymalloc_blocks_mb": pym.get("allocated_blocks_mb"),
        "server_tracemalloc_mb": memory.get("tracemalloc_mb"),
    }


def probe_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The short form of a probe for the report and the progress log."""
    out: dict[str, Any] = {"probe_t": record.get("t")}
    if "error" in record:
        out["error"] = record["error"]
        return out
    out.update(memory_fields(record.get("before")))
    out["malloc_info"] = record.get("malloc_info")
    gc_info = record.get("gc") or {}
    out["gc_objects"] = gc_info.get("objects")
    out["gc_growth_since_first"] = gc_info.get("growth_since_first")
    tm = record.get("tracemalloc")
    if tm:
        out["tracemalloc_traced_mb"] = tm.get("traced_mb")
        out["tracemalloc_growth_since_first"] = tm.get("since_first_by_lineno", [])[:8]
    if "trim_rss_mb" in record:
        out["malloc_trim_rss_mb"] = record["trim_rss_mb"]
        after = record.get("after_trim") or {}
        out["after_trim"] = memory_fields(after)
        out["after_trim"]["malloc_info"] = after.get("malloc_info")
    return out


def _mean(values: Any) -> float | None:
    values = list(values)
    return round(statistics.mean(values), 1) if values else None


def report(load: Load, server_stats: dict[str, Any], stopped: dict[str, Any] | None) -> Any:
    args = load.args
    samples = load.samples
    warm = [
        s for s in samples if s["t"] >= load.counts["ramp seconds"] + 10 and not s["stopping"]
    ] or samples
    quarter = max(1, len(warm) // 4)
    first = statistics.median(s["server_rss_mb"] for s in warm[:quarter])
    last = statistics.median(s["server_rss_mb"] for s in warm[-quarter:])
    judged = len(warm) >= MIN_RSS_SAMPLES
    blocks = [s["server_allocated_blocks"] for s in warm if s["server_allocated_blocks"]]
    bq = max(1, len(blocks) // 4)
    blocks_first = statistics.median(blocks[:bq]) if blocks else None
    blocks_last = statistics.median(blocks[-bq:]) if blocks else None
    lat = sorted(load.latencies)
    after_ramp = [
        s["held"] for s in samples if s["t"] >= load.counts["ramp seconds"] and not s["stopping"]
    ]
    return {
        "command": "python -m tests.soak.soak " + " ".join(sys.argv[1:]),
        "minutes": args.minutes,
        "actors": args.actors,
        "connections_target": args.connections,
        "connections_held": {
            "min_after_ramp": min(after_ramp) if after_ramp else None,
            "max": max(load.held_samples) if load.held_samples else None,
            "mean_after_ramp": round(statistics.mean(after_ramp), 1) if after_ramp else None,
        },
        "connects": load.counts["connects"],
        "messages": {
            "sent": load.counts["sent"],
            "answered": load.counts["answered"],
            "lost": load.counts["lost"],
            "unanswered_explained_by_close": dict(load.explained),
            "latency_ms_p50": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
            "latency_ms_p99": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else None,
            "answered_with_an_error_frame": {
                k.removeprefix("answered with error "): v
                for k, v in load.counts.items()
                if k.startswith("answered with error ")
            },
        },
        "counter_conflicts": load.conflicts,
        "requests": {
            "sleep": load.counts["sleep requests"],
            "destroy": load.counts["destroy requests"],
        },
        "lifecycle_before_drain": server_stats.get("lifecycle"),
        "lifecycle_with_drain": (stopped or {}).get("lifecycle"),
        "control_outcomes": (stopped or server_stats).get("control"),
        "closes_seen_by_clients": dict(load.closes),
        "server_closes_by_code": (stopped or {}).get("closes_by_code"),
        "errors": dict(load.errors),
        "control": {
            "errors": load.counts["control errors"],
            "connection_closes": dict(load.control_closes),
            "requests_skipped_while_reconnecting": load.counts[
                "requests skipped: control reconnecting"
            ],
        },
        "server_save_errors": (stopped or server_stats).get("save_errors"),
        "rss": {
            "server_mb_after_warmup_first_quarter_median": first,
            "server_mb_last_quarter_median": last,
            "server_growth_percent": round(100 * (last - first) / first, 1)
            if first and judged
            else None,
            "server_allocated_blocks_first_quarter_median": blocks_first,
            "server_allocated_blocks_last_quarter_median": blocks_last,
            "samples": [
                {
                    k: s[k]
                    for k in (
                        "t",
                        "server_rss_mb",
                        "server_allocated_blocks",
                        "driver_rss_mb",
                        "held",
                    )
                }
                for s in samples
            ],
            "measures": "server_mb is the server process's VmRSS (psutil rss): anonymous + "
            "file-backed + shared pages; samples_detail splits it and shows glibc's heap "
            "(in use / free inside it) and pymalloc's arenas",
            "samples_detail": [
                {
                    k: v
                    for k, v in s.items()
                    if k == "t" or (k.startswith("server_") and k.endswith("_mb"))
                }
                for s in samples
            ],
            "probes": [probe_summary(p) for p in load.probes],
        },
        "cpu": {
            "server_percent_mean": _mean(s["server_cpu_percent"] for s in warm),
            "driver_percent_mean": _mean(s["driver_cpu_percent"] for s in warm),
            "machine_load_average_1m_mean": _mean(s["load_average_1m"] for s in warm),
            "server_loop_lag_max_s_by_sample": [s["server_loop_lag_max_s"] for s in samples],
        },
        "server_stopped": stopped,
    }


async def drive(
    args: argparse.Namespace, db: str, server_log: IO[bytes]
) -> tuple[dict[str, Any], Load]:
    """Start the server, run the load, shut the server down; return the report."""
    command = [
        sys.executable,
        "-m",
        "tests.soak.soak",
        "serve",
        "--db",
        db,
        "--sleep-timeout",
        str(args.sleep_timeout),
        "--max-connections",
        str(args.connections + 100),
        "--tracemalloc",
        str(args.tracemalloc),
        "--recv-size",
        str(args.recv_size),
    ]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=server_log)
    try:
        assert process.stdout is not None
        lines = _Lines(process.stdout)
        with trio.fail_after(30):
            hello = json.loads(await lines.next())
        load = Load(args, hello["port"], hello["pid"])
        server_stats = await load.run(process)
        stopped: dict[str, Any] | None = None
        with trio.move_on_after(SHUTDOWN_TIMEOUT):
            stopped = json.loads(await lines.next())["stopped"]
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(5):
                await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
    return report(load, server_stats, stopped), load


class _Lines:
    """Lines from a trio ReceiveStream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some()
            if not data:
                raise EOFError("the server closed its stdout")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def check_counters(db: str, load: Load) -> dict[str, int]:
    """After the drain: every counter's saved count is at least the highest count it
    acknowledged (an acknowledged add is never lost across sleeps, wakes and the drain)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT actor_id, state FROM actors WHERE name = 'counter'").fetchall()
    saved = {actor_id: json.loads(state)["count"] if state else 0 for actor_id, state in rows}
    behind = sum(1 for a, count in saved.items() if count < load.counter_max.get(a, 0))
    gone = sum(1 for a in load.counter_max if a not in saved)  # destroyed since
    return {
        "saved": len(saved),
        "acknowledged": len(load.counter_max),
        "destroyed_since": gone,
        "behind_an_acknowledged_count": behind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="drive", choices=["drive", "serve"])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--actors", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=500.0, help="messages per second, total")
    parser.add_argument("--ramp-rate", type=float, default=200.0, help="connects per second")
    parser.add_argument("--cycle-interval", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--destroy-ratio", type=float, default=0.05)
    parser.add_argument("--sleep-timeout", type=float, default=30.0, help="actor idle timeout")
    parser.add_argument("--sample-interval", type=float, default=5.0)
    parser.add_argument("--server-log", default=None)
    parser.add_argument("--db", default=None, help="(serve) SQLite file")
    parser.add_argument("--max-connections", type=int, default=10_000, help="(serve)")
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=0.0,
        help="seconds between memory probes of the server (gc types, tracemalloc diffs, "
        "malloc_trim); 0: none. Each probe stalls the server's loop for a moment",
    )
    parser.add_argument(
        "--trim",
        choices=["none", "probes", "end"],
        default="none",
        help="malloc_trim(0) in the server at every probe, or only at the last one (taken "
        "just before the load stops); the probe reports the RSS before and after",
    )
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        help="trace the server's allocations with this many frames (0: off; slows it down)",
    )
    parser.add_argument("--probe-file", default=None, help="JSON lines, one per probe")
    parser.add_argument(
        "--recv-size",
        type=int,
        default=0,
        help="experiment: the server's bytes per socket recv when trio-websocket asks for "
        "its default (trio's DEFAULT_RECEIVE_SIZE, 64 KiB); 0: unchanged",
    )
    args = parser.parse_args()
    if args.mode == "serve":
        raise_fd_limit()
        if args.tracemalloc:
            import tracemalloc

            tracemalloc.start(args.tracemalloc)
        if args.recv_size:
            # Experiment: the server asks trio-websocket for receive_some(None), i.e. trio's
            # DEFAULT_RECEIVE_SIZE (64 KiB) per recv; each idle connection then pins its last
            # recv's bytes (a 64 KiB malloc shrunk in place) in glibc's heap.
            import importlib

            highlevel_socket = importlib.import_module("trio._highlevel_socket")
            highlevel_socket.DEFAULT_RECEIVE_SIZE = args.recv_size  # type: ignore[attr-defined]
        trio.run(serve, args)
        return
    soft = raise_fd_limit()
    if soft < args.connections + 200:
        sys.exit(f"RLIMIT_NOFILE is {soft}: too low for {args.connections} connections")
    with tempfile.TemporaryDirectory(prefix="actorcore-soak-") as tmp:
        log_path = args.server_log or os.path.join(tmp, "server.log")
        db = os.path.join(tmp, "soak.db")
        with open(log_path, "wb") as server_log:
            result, load = trio.run(drive, args, db, server_log)
        result["counters"] = check_counters(db, load)
        with open(log_path, "rb") as f:
            log_lines = f.read().decode(errors="replace").splitlines()
    result["server_log_lines"] = len(log_lines)
    result["server_log_tail"] = log_lines[-10:]
    growth = result["rss"]["server_growth_percent"]
    result["verdict"] = {
        "no_lost_messages": result["messages"]["lost"] == 0,
        "no_counter_conflicts": result["counter_conflicts"] == 0,
        "no_counter_behind": result["counters"]["behind_an_acknowledged_count"] == 0,
        # None: too short a run to judge (fewer than MIN_RSS_SAMPLES samples after warm-up).
        "rss_flat": None if growth is None else growth < RSS_GROWTH_LIMIT,
    }
    print(json.dumps(result, indent=1))
    if False in result["verdict"].values():
        sys.exit(1)


if __name__ == "__main__":
    main()
