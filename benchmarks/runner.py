"""The driver: ``python -m benchmarks [NAME ...] [--quick] [--reps N] [--update-doc]``.

Each run of a workload gets a fresh server process (:mod:`benchmarks.server`, pinned to CPU 0;
``--quick``: one server per side for all runs of a workload, except where the run ends the
server); every workload has one load-generator process (:mod:`benchmarks.client` ``serve``,
pinned to CPU 1) that does all its runs. actorcore and its baseline alternate within each
repetition. Results: a table on stdout, ``benchmarks/results/latest.json`` and ``latest.md``;
``--update-doc`` pastes the Markdown into ``docs/benchmarks.md`` between its result markers.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

import attrs
import psutil

from .common import CLIENT_CPU, HARD_TIMEOUT, SERVER_CPU

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- BEGIN RESULTS (written by python -m benchmarks --update-doc) -->"
END = "<!-- END RESULTS -->"


@attrs.frozen
class Sizes:
    echo_n: int
    echo_warmup: int
    pipe_n: int
    action_n: int
    action_warmup: int
    connect_n: int
    tail_conns: int
    tail_actors: int
    tail_duration: float
    tail_warmup: float
    tail_rates: tuple[float, ...]
    finalize_ns: tuple[int, ...]
    drain_actors: int
    awake_n: int
    asleep_n: int
    conns_n: int
    alarms_pending_n: int
    alarms_due_n: int
    alarms_latency_n: int
    engine_rt_s: float
    engine_warmup: int
    engine_connect_n: int
    engine_asleep_n: int
    engine_agg_conns: int
    engine_agg_s: float


ISSUE_TAIL_RATE = 2.0
"""msgs/s per connection of the issue's tail row (the one with a target)."""
TAIL_RATES = (ISSUE_TAIL_RATE, 0.5)
"""The issue's load, saturating on this machine, and an unsaturated one (no target)."""

FULL = Sizes(
    echo_n=20_000,
    echo_warmup=500,
    pipe_n=100_000,
    action_n=12_000,
    action_warmup=300,
    connect_n=1_000,
    tail_conns=5_000,
    tail_actors=500,
    tail_duration=5.0,
    # Opening 5,000 connections leaves seconds of long gen-0/1/2 collections (10-400 ms) in
    # either server; a 1 s warm-up left them in the window, where they alone set p99 and max.
    tail_warmup=3.0,
    tail_rates=TAIL_RATES,
    finalize_ns=(1_000, 10_000),
    drain_actors=1_000,
    awake_n=10_000,
    asleep_n=1_000_000,
    conns_n=5_000,
    alarms_pending_n=100_000,
    alarms_due_n=10_000,
    alarms_latency_n=200,
    engine_rt_s=3.0,
    engine_warmup=100,
    engine_connect_n=10,
    engine_asleep_n=5,
    engine_agg_conns=8,
    engine_agg_s=3.0,
)
"""The issue's N for every workload that names one; message counts sized for this machine."""

QUICK = Sizes(
    echo_n=1_000,
    echo_warmup=200,
    pipe_n=5_000,
    action_n=500,
    action_warmup=100,
    connect_n=50,
    tail_conns=200,
    tail_actors=20,
    tail_duration=2.0,
    tail_warmup=0.5,
    tail_rates=TAIL_RATES,
    finalize_ns=(100, 500),
    drain_actors=30,
    awake_n=500,
    asleep_n=50_000,
    conns_n=300,
    alarms_pending_n=20_000,
    alarms_due_n=2_000,
    alarms_latency_n=50,
    engine_rt_s=1.0,
    engine_warmup=30,
    engine_connect_n=4,
    engine_asleep_n=3,
    engine_agg_conns=8,
    engine_agg_s=1.0,
)

WORKLOADS = (
    "echo",
    "oneway",
    "action",
    "connect",
    "tail",
    "finalize",
    "drain",
    "mem_awake",
    "mem_asleep",
    "mem_conn",
    "alarms",
    "engine",
)

ONLY_BY_NAME = ("engine",)
"""Workloads run only when named: ``engine`` needs node, npm and the Rivet engine (it installs
rivetkit and the engine into ~/.cache/actorcore when they are missing)."""


# ---------------------------------------------------------------------------- processes


def _pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and cpu < (os.cpu_count() or 1):
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def _reader(stream: IO[str], out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line.rstrip("\n"))
    out.put(None)


class Proc:
    """A child process with its stdout lines on a queue and stderr in a log file."""

    def __init__(
        self,
        argv: list[str],
        cpu: int | None,
        log: Path,
        *,
        program: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``program`` (default: this Python) runs ``argv``; pinned to ``cpu`` unless None."""
        self.log = log.open("w")
        cmd = [*(program or [sys.executable]), *argv]
        self.p = subprocess.Popen(
            cmd if cpu is None else _pinned(cpu, cmd),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.p.stdout is not None
        threading.Thread(target=_reader, args=(self.p.stdout, self.lines), daemon=True).start()

    def line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"no output within {timeout}s; see {self.log.name}") from None
        if line is None:
            self.p.wait(5)
            raise RuntimeError(f"process exited ({self.p.returncode}); see {self.log.name}")
        return line

    def send(self, text: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def stop(self) -> None:
        if self.p.stdin is not None:
            with contextlib.suppress(OSError):
                self.p.stdin.close()  # a load generator in serve mode exits at end of input
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.log.close()


class Bench:
    def __init__(self, sizes: Sizes, reps: int, logdir: Path, *, shared: bool) -> None:
        self.shared = shared
        """Quick mode: one server per workload and side, reused by every run (where the run
        does not end it); the full run starts a fresh server for every run."""
        self.sizes = sizes
        self.reps = reps
        self.logdir = logdir
        self.count = 0
        self.workload = "client"
        self.loadgen: Proc | None = None
        """The load generator of the current workload (``benchmarks.client serve``)."""
        self.t0 = time.perf_counter()
        self.timeline = (logdir / "timeline.log").open("a")
        """One line per server start and load-generator run: where the wall time goes, and
        for a run the CPU seconds of its server and load generator (on a busy machine the
        larger of the two is about what the run's wall time would be on a quiet one)."""
        self.pids: dict[int, int] = {}
        """Server pid by port."""

    def mark(self, what: str, since: float) -> None:
        now = time.perf_counter()
        self.timeline.write(f"{since - self.t0:8.2f} {now - since:7.2f} s  {what}\n")
        self.timeline.flush()

    def _log(self, what: str) -> Path:
        self.count += 1
        return self.logdir / f"{self.count:03d}-{what}.log"

    @contextlib.contextmanager
    def session(self, workload: str) -> Iterator[None]:
        """One workload: its load generator lives until the end of it."""
        self.workload = workload
        try:
            yield
        finally:
            self.stop_loadgen()

    def start_loadgen(self) -> Proc:
        """The workload's load generator, started if it is not running (it starts while a
        server starts: they are on different CPUs)."""
        if self.loadgen is None or self.loadgen.p.poll() is not None:
            self.stop_loadgen()
            self.loadgen = Proc(
                ["-m", "benchmarks.client", "serve"],
                CLIENT_CPU,
                self._log(f"client-{self.workload}"),
            )
        return self.loadgen

    def stop_loadgen(self) -> None:
        if self.loadgen is not None:
            self.loadgen.stop()
            self.loadgen = None

    @contextlib.contextmanager
    def server(self, kind: str, *extra: str) -> Iterator[tuple[int, int, Proc]]:
        proc = Proc(
            ["-m", "benchmarks.server", kind, "--port", "0", *extra],
            SERVER_CPU,
            self._log(f"server-{kind}"),
        )
        try:
            t = time.perf_counter()
            self.start_loadgen()
            info = json.loads(proc.line(30))
            self.mark(f"{self.workload}: server {kind} {' '.join(extra)} up", t)
            self.pids[info["port"]] = info["pid"]
            yield info["port"], info["pid"], proc
        finally:
            proc.stop()

    def client(
        self,
        workload: str,
        port: int,
        *args: Any,
        on_ready: Callable[[str], None] | None = None,
        timeout: float = HARD_TIMEOUT,
    ) -> dict[str, Any]:
        """One run of ``workload`` on the load generator; its result. A run that does not
        answer within ``timeout`` takes the load generator down (the next run starts one)."""
        argv = [workload, "--port", str(port), *map(str, args)]
        proc = self.start_loadgen()
        ok = False
        t = time.perf_counter()
        server_cpu0 = _cpu(self.pids.get(port))
        client_cpu: float | None = None
        try:
            proc.send(json.dumps(argv) + "\n")
            deadline = time.monotonic() + timeout
            while True:
                line = proc.line(max(1.0, deadline - time.monotonic()))
                if line.startswith("READY "):
                    if on_ready is not None:
                        on_ready(line[6:])
                    proc.send("\n")
                elif line.startswith("{"):
                    answer = json.loads(line)
                    ok = True
                    client_cpu = answer.get("cpu_s")
                    if "error" in answer:
                        raise RuntimeError(f"{workload} failed: {answer['error']}")
                    result: dict[str, Any] = answer["result"]
                    return result
        finally:
            server_cpu1 = _cpu(self.pids.get(port))
            server_cpu = None
            if server_cpu0 is not None and server_cpu1 is not None:
                server_cpu = server_cpu1 - server_cpu0
            cpu = ["?" if x is None else f"{x:.2f}" for x in (server_cpu, client_cpu)]
            self.mark(
                f"{self.workload}: client {' '.join(argv[:1] + argv[3:])}"
                f"  [cpu: server {cpu[0]} s, load generator {cpu[1]} s]",
                t,
            )
            if not ok or "--abort" in argv:  # an --abort run ends its load generator
                self.stop_loadgen()

    def runs(
        self, kinds: tuple[str, ...], fn: Callable[[str, int, int], Any]
    ) -> dict[str, list[Any]]:
        """``fn(kind, port, rep)`` for every run of every side, sides alternating per run."""
        res: dict[str, list[Any]] = {k: [] for k in kinds}
        if self.shared:
            with contextlib.ExitStack() as stack:
                ports = {k: stack.enter_context(self.server(k))[0] for k in kinds}
                for rep in range(self.reps):
                    for kind in kinds:
                        res[kind].append(fn(kind, ports[kind], rep))
        else:
            for rep in range(self.reps):
                for kind in kinds:
                    with self.server(kind) as (port, _, _):
                        res[kind].append(fn(kind, port, rep))
        return res

    def paired_runs(self, fn: Callable[[int, int], dict[str, Any]]) -> list[dict[str, Any]]:
        """``fn(actorcore_port, baseline_port)`` once per repetition, both servers up (fresh
        ones per repetition unless shared): a client run that interleaves its load on the two
        (``client.paired``, ``client.connect_paired``). Returns the runs' results."""
        out: list[dict[str, Any]] = []
        for _ in range(1 if self.shared else self.reps):
            with contextlib.ExitStack() as stack:
                ports = [stack.enter_context(self.server(kind))[0] for kind in BOTH]
                out.extend(fn(*ports) for _ in range(self.reps if self.shared else 1))
        return out


BOTH = ("actorcore", "baseline")


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (None if it is gone)."""
    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


RSS_POLL = 0.05
RSS_SETTLE_MAX = 2.0


def settled_rss(pid: int) -> int:
    """The server's RSS once two reads RSS_POLL s apart agree (at most RSS_SETTLE_MAX s):
    the load generator only says READY when the server reports its work done, so this
    replaces a fixed sleep before the read."""
    deadline = time.monotonic() + RSS_SETTLE_MAX
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(RSS_POLL)
        now = rss(pid)
        if now == last:
            break
        last = now
    return last


# ---------------------------------------------------------------------------- statistics


def summary(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "runs": values,
    }


def row(
    workload: str,
    metric: str,
    unit: str,
    ours: list[float],
    base: list[float] | None,
    target: str,
    check: Callable[[float, float | None], bool] | None,
    *,
    extra: dict[str, Any] | None = None,
    ratio_kind: str = "x",
) -> dict[str, Any]:
    a = summary(ours)
    b = summary(base) if base is not None else None
    ratio = None
    if b is not None and a["median"] is not None and b["median"]:
        ratio = a["median"] / b["median"]
    met = None
    if check is not None and a["median"] is not None:
        met = bool(check(a["median"], b["median"] if b is not None else None))
    return {
        "workload": workload,
        "metric": metric,
        "unit": unit,
        "actorcore": a,
        "baseline": b,
        "ratio": ratio,
        "target": target,
        "met": met,
        "extra": extra or {},
    }


# ---------------------------------------------------------------------------- workloads


def _paired_row(
    b: Bench,
    workload: str,
    metric: str,
    unit: str,
    target: str,
    check: Callable[[float, float | None], bool] | None,
    client_args: list[Any],
) -> dict[str, Any]:
    """A throughput row measured with both servers up and the load interleaved on them
    (``client.paired``): each repetition yields both sides' rates from the same seconds."""
    res = b.paired_runs(
        lambda port, pair: b.client(*client_args[:1], port, "--pair-port", pair, *client_args[1:])
    )
    return row(
        workload,
        metric,
        unit,
        [r["msgs_per_s"] for r in res],
        [r["baseline_msgs_per_s"] for r in res],
        target,
        check,
        extra={"chunk_ratios": [r["chunk_ratios"] for r in res]},
    )


def w_echo(b: Bench) -> list[dict[str, Any]]:
    s = b.sizes
    return [
        _paired_row(
            b,
            "echo round trip, 32 B, one connection",
            "msgs/s",
            "msgs/s",
            ">= 0.95 x baseline",
            lambda a, base: base is not None and a >= 0.95 * base,
            ["rtt", "--n", s.echo_n, "--warmup", s.echo_warmup],
        )
    ]


def w_oneway(b: Bench) -> list[dict[str, Any]]:
    s = b.sizes
    return [
        _paired_row(
            b,
            "one-way throughput, 32 B, pipelined",
            "msgs/s",
            "msgs/s",
            ">= 0.95 x baseline",
            lambda a, base: base is not None and a >= 0.95 * base,
            ["pipe", "--path", "/actors/sink/s/ws", "--n", s.pipe_n, "--warmup", 500],
        )
    ]


_ACTION_VARIANT = {
    "counter": ", output gate",
    "counter-ungated": "",
    "counter-serial": ", serial, output gate",
}


def w_action(b: Bench) -> list[dict[str, Any]]:
    """``increment`` (no await in its body: it runs inline in the read loop) is the target
    row; ``increment_awaiting`` (the same after one checkpoint: its own task) is shown
    beside it, against the same plain echo."""
    s = b.sizes
    variants: list[tuple[str, str, str, Callable[[float, float | None], bool] | None]] = [
        # Issue 21: the output gate (the default on SQLite) holds every answer until its
        # state is committed; the target of the dispatcher's own cost is on the ungated row.
        (
            "counter-ungated",
            "increment",
            ">= 0.90 x plain echo",
            lambda a, base: base is not None and a >= 0.9 * base,
        ),
        ("counter", "increment", "-", None),
        ("counter", "increment_awaiting", "-", None),
        # Issue 18: the cost of serial=True (every action takes a turn; none runs inline).
        ("counter-serial", "increment", "-", None),
    ]
    return [
        _paired_row(
            b,
            f"action round trip over /connect ({name}{_ACTION_VARIANT[actor]})",
            "round trips/s",
            "rt/s",
            target,
            check,
            [
                "action",
                "--path",
                f"/actors/{actor}/c/connect",
                "--action",
                name,
                "--n",
                s.action_n,
                "--warmup",
                s.action_warmup,
            ],
        )
        for actor, name, target, check in variants
    ]


def w_connect(b: Bench) -> list[dict[str, Any]]:
    s = b.sizes
    ours: dict[str, dict[str, list[float]]] = {
        k: {"p50": [], "p99": []} for k in ("awake", "new", "asleep")
    }
    base: dict[str, list[float]] = {"p50": [], "p99": []}

    tags = itertools.count()  # keys unique per run: a shared server keeps its actors
    runs = b.paired_runs(
        lambda port, pair: b.client(
            "connect", port, "--pair-port", pair, "--n", s.connect_n, "--tag", next(tags)
        )
    )
    for r in runs:
        for q in ("p50", "p99"):
            base[q].append(r["baseline"][q])
            for k in ours:
                ours[k][q].append(r[k][q])
    rows = []
    labels = {
        "awake": ("connect + first reply, awake actor", "p50 <= 1.1 x baseline p50"),
        "new": ("connect + first reply, new actor (create, SQLite)", "p50 <= baseline + 0.5 ms"),
        "asleep": (
            "connect + first reply, asleep actor (wake from SQLite)",
            "p50 <= baseline + 0.5 ms",
        ),
    }
    for k, (label, target) in labels.items():
        check: Callable[[float, float | None], bool]
        if k == "awake":
            check = lambda a, bb: bb is not None and a <= 1.1 * bb  # noqa: E731
        else:
            check = lambda a, bb: bb is not None and a <= bb + 0.5  # noqa: E731
        rows.append(row(label, "p50", "ms", ours[k]["p50"], base["p50"], target, check))
        rows.append(row(label, "p99", "ms", ours[k]["p99"], base["p99"], "-", None))
    return rows


def w_tail(b: Bench) -> list[dict[str, Any]]:
    """The issue's load (2 msgs/s per connection) and a lighter one (0.5 msgs/s, no target).
    On this machine the issue's load is more than either server answers on one core, so its
    rows time a saturated server; the lighter one shows the latency of an unsaturated one.
    A row of messages answered per second goes with the saturated load."""
    s = b.sizes
    rows = []
    for rate in s.tail_rates:
        rows += _tail_rows(b, rate)
    return rows


def _tail_rows(b: Bench, rate: float) -> list[dict[str, Any]]:
    s = b.sizes
    res: dict[str, dict[str, list[float]]] = {
        k: {"p50": [], "p99": [], "max": [], "skipped_late": [], "sent": [], "unfinished": []}
        for k in ("actorcore", "baseline")
    }

    def one(kind: str, port: int, rep: int) -> None:
        r = b.client(
            "tail",
            port,
            "--n",
            s.tail_conns,
            "--actors",
            s.tail_actors,
            "--rate",
            rate,
            "--duration",
            s.tail_duration,
            "--warmup",
            s.tail_warmup,
            *([] if b.shared else ["--abort"]),  # the server is stopped after the run
        )
        for q in res[kind]:
            res[kind][q].append(r[q])

    b.runs(BOTH, one)
    issue_load = rate == ISSUE_TAIL_RATE
    label = (
        f"tail latency: {s.tail_conns:,} conns on {s.tail_actors:,} actors, {rate:g} msgs/s each"
    )
    rows = []
    for q in ("p50", "p99", "max"):
        check = None
        target = "-"
        if q == "p99" and issue_load:
            target = "p99 <= 1.2 x baseline p99"
            check = lambda a, bb: bb is not None and a <= 1.2 * bb  # noqa: E731
        extra = {}
        if q == "p50":
            extra = {
                "sent": {k: res[k]["sent"] for k in res},
                "skipped_late": {k: res[k]["skipped_late"] for k in res},
                "unfinished": {k: res[k]["unfinished"] for k in res},
            }
        rows.append(
            row(label, q, "ms", res["actorcore"][q], res["baseline"][q], target, check, extra=extra)
        )
    if issue_load:
        seconds = s.tail_warmup + s.tail_duration
        answered = {
            k: [
                (n - left) / seconds
                for n, left in zip(res[k]["sent"], res[k]["unfinished"], strict=True)
            ]
            for k in res
        }
        offered = s.tail_conns * rate
        rows.append(
            row(
                label,
                f"msgs/s answered (of {offered:,.0f} offered)",
                "msgs/s",
                answered["actorcore"],
                answered["baseline"],
                "-",
                None,
            )
        )
    return rows


def w_finalize(b: Bench) -> list[dict[str, Any]]:
    res: dict[tuple[str, int], dict[str, list[Any]]] = {
        (kind, n): collections.defaultdict(list) for kind in BOTH for n in b.sizes.finalize_ns
    }
    fields = (
        "seconds",
        "abnormal",
        "server_seconds",
        "codes",
        "open_s",
        "live_before",
        "phases",
        "close_arrivals_s",
    )

    def one(kind: str, port: int, n: int, rep: int) -> None:
        r = b.client(
            "finalize",
            port,
            "--n",
            n,
            "--timeout",
            30,
            "--tag",
            f"-{rep}",
            *(["--baseline"] if kind == "baseline" else []),
            *([] if b.shared else ["--abort"]),  # the server is stopped after the run
        )
        out = res[(kind, n)]
        for f in fields:
            out[f].append(r[f])
        if kind == "actorcore":
            out["actor_after"].append(r["actor_after"])
        if r.get("sleep_error"):
            out["sleep_errors"].append(r["sleep_error"])

    if b.shared:  # one server per side for every run (a new actor key per run)
        with contextlib.ExitStack() as stack:
            ports = {k: stack.enter_context(b.server(k))[0] for k in BOTH}
            for n in b.sizes.finalize_ns:
                for rep in range(b.reps):
                    for kind in BOTH:
                        one(kind, ports[kind], n, rep)
    else:
        for n in b.sizes.finalize_ns:
            for rep in range(b.reps):
                for kind in BOTH:
                    with b.server(kind) as (port, _, _):
                        one(kind, port, n, rep)
    rows = []
    for n in b.sizes.finalize_ns:
        ours, base = res[("actorcore", n)], res[("baseline", n)]
        label = f"finalize: sleep an actor holding {n:,} connections"
        total_abnormal = sum(ours["abnormal"])
        if n >= 10_000:
            target = "<= 1 s, 0 abnormal"
            check = lambda a, _b, t=total_abnormal: a <= 1.0 and t == 0  # noqa: E731
        else:
            target = "0 abnormal (time: no target)"
            check = lambda a, _b, t=total_abnormal: t == 0  # noqa: E731
        extra: dict[str, Any] = {
            "server_seconds": ours["server_seconds"],
            "actor_after": ours["actor_after"],
            "codes": ours["codes"],
            "abnormal_closes": ours["abnormal"],
            "live_before": [x["live"] for x in ours["live_before"]],
            "open_s": ours["open_s"],
            "baseline_server_seconds": base["server_seconds"],
            "baseline_codes": base["codes"],
            "baseline_abnormal": base["abnormal"],
            "baseline_live_before": [x["live"] for x in base["live_before"]],
            "baseline_open_s": base["open_s"],
            "phases_s": ours["phases"],
            "baseline_phases_s": base["phases"],
            "close_arrivals_s": ours["close_arrivals_s"],
            "baseline_close_arrivals_s": base["close_arrivals_s"],
        }
        if ours.get("sleep_errors"):
            extra["sleep_errors"] = ours["sleep_errors"]
        rows.append(
            row(
                label,
                "s until every client has 1001",
                "s",
                ours["seconds"],
                base["seconds"],
                target,
                check,
                extra=extra,
            )
        )
    return rows


def w_drain(b: Bench) -> list[dict[str, Any]]:
    actors = b.sizes.drain_actors
    res: dict[str, dict[str, list[Any]]] = {k: collections.defaultdict(list) for k in BOTH}
    for _ in range(b.reps):
        for kind in BOTH:  # the run ends the server: always a fresh one
            with b.server(kind) as (port, _, proc):
                r = b.client(
                    "drain", port, "--actors", actors, "--per", 10, "--timeout", 30, "--abort"
                )
                stopped = json.loads(proc.line(60))["stopped"]
                out = res[kind]
                out["client_last_close_s"].append(r["seconds"])
                out["server_drain_s"].append(stopped["drain_s"])
                out["total"].append(max(r["seconds"], stopped["drain_s"]))
                out["not_1012"].append(r["not_1012"])
                out["codes"].append(r["codes"])
                out["live_before"].append(r["live_before"]["live"])
                out["open_s"].append(r["open_s"])
                out["phases_s"].append(r["phases"])
                out["close_arrivals_s"].append(r["close_arrivals_s"])
                if stopped["drainers"] is not None:
                    saved_ok = stopped["drainers"]["saved_n"].get("10", 0)
                    out["lost"].append(actors - saved_ok)
    ours, base = res["actorcore"], res["baseline"]
    bad = sum(ours["lost"]) + sum(ours["not_1012"])
    extra: dict[str, Any] = {
        k: ours[k]
        for k in (
            "server_drain_s",
            "client_last_close_s",
            "not_1012",
            "lost",
            "codes",
            "live_before",
            "open_s",
            "phases_s",
            "close_arrivals_s",
        )
    }
    extra.update(
        {
            f"baseline_{k}": base[k]
            for k in (
                "server_drain_s",
                "client_last_close_s",
                "not_1012",
                "codes",
                "live_before",
                "open_s",
                "phases_s",
                "close_arrivals_s",
            )
        }
    )
    return [
        row(
            f"drain: registry shutdown, {actors:,} awake actors x 10 connections",
            "s until all closed (1012) and state saved",
            "s",
            ours["total"],
            base["total"],
            "<= 2 s, 0 lost",
            lambda a, _b: a <= 2.0 and bad == 0,
            extra=extra,
        )
    ]


def w_mem_awake(b: Bench) -> list[dict[str, Any]]:
    n = b.sizes.awake_n
    per: list[float] = []
    extra: dict[str, Any] = {"rss_before_mb": [], "rss_after_mb": [], "wake_s": []}
    for _ in range(b.reps):
        with b.server("actorcore") as (port, pid, _):
            seen: dict[str, int] = {}

            def on_ready(tag: str, pid: int = pid, seen: dict[str, int] = seen) -> None:
                seen[tag] = settled_rss(pid)

            r = b.client("awake_mem", port, "--n", n, on_ready=on_ready)
            per.append((seen["after"] - seen["before"]) / n)
            extra["rss_before_mb"].append(seen["before"] / 2**20)
            extra["rss_after_mb"].append(seen["after"] / 2**20)
            extra["wake_s"].append(r["wake_s"])
    return [
        row(
            f"memory per awake idle actor ({n:,} actors)",
            "RSS delta / actor",
            "B",
            per,
            None,
            "<= 2 KiB",
            lambda a, _b: a <= 2048,
            extra=extra,
        )
    ]


def w_mem_asleep(b: Bench) -> list[dict[str, Any]]:
    n = b.sizes.asleep_n
    with tempfile.TemporaryDirectory(prefix="actorcore-bench-") as tmp:
        db = os.path.join(tmp, "asleep.db")
        t = time.perf_counter()
        pop = Proc(
            ["-m", "benchmarks.server", "populate", "--db", db, "--n", str(n)],
            SERVER_CPU,
            b._log("populate"),
        )
        try:
            info = json.loads(pop.line(600))
        finally:
            pop.stop()
        b.mark(f"mem_asleep: populate {n}", t)
        db_mb = os.path.getsize(db) / 2**20
        full: list[float] = []
        empty: list[float] = []
        for rep in range(b.reps):
            for kind, dest in (("populated", full), ("empty", empty)):
                path = db if kind == "populated" else os.path.join(tmp, f"empty-{rep}.db")
                with b.server("actorcore", "--db", path) as (port, pid, _):
                    b.client("rtt", port, "--n", 200, "--warmup", 0)
                    dest.append(settled_rss(pid))
    per = [(f - e) / n for f, e in zip(full, empty, strict=True)]
    return [
        row(
            f"memory per asleep actor ({n:,} actors in SQLite)",
            "RSS delta / actor (vs. empty store)",
            "B",
            per,
            None,
            "<= 100 B",
            lambda a, _b: a <= 100,
            extra={
                "rss_populated_mb": [x / 2**20 for x in full],
                "rss_empty_mb": [x / 2**20 for x in empty],
                "db_mb": db_mb,
                "populate_s": info["seconds"],
            },
        )
    ]


def w_mem_conn(b: Bench) -> list[dict[str, Any]]:
    n = b.sizes.conns_n
    res: dict[str, list[float]] = {"actorcore": [], "baseline": []}
    for _ in range(b.reps):
        for kind in res:
            with b.server(kind) as (port, pid, _):
                path = "/actors/echo/idle/ws"
                seen: dict[str, int] = {}

                def on_ready(tag: str, pid: int = pid, seen: dict[str, int] = seen) -> None:
                    seen[tag] = settled_rss(pid)

                # READY before: after 200 warm-up round trips (connection closed again);
                # READY held: once the server reports all n connections live.
                b.client(
                    "hold",
                    port,
                    *("--path", path, "--n", n, "--warmup", 200, "--abort"),
                    on_ready=on_ready,
                )
                res[kind].append((seen["held"] - seen["before"]) / n)
    return [
        row(
            f"memory per idle connection ({n:,} connections)",
            "RSS delta / connection",
            "B",
            res["actorcore"],
            res["baseline"],
            "<= 1.1 x baseline",
            lambda a, base: base is not None and a <= 1.1 * base,
        )
    ]


def _alarms_proc(b: Bench, *args: Any, timeout: float = 600) -> dict[str, Any]:
    """One run of ``benchmarks.alarms`` in a process of its own, on the server's CPU."""
    argv = ["-m", "benchmarks.alarms", *(str(a) for a in args)]
    proc = Proc(argv, SERVER_CPU, b._log(f"alarms-{args[0]}"))
    try:
        return cast(dict[str, Any], json.loads(proc.line(timeout)))
    finally:
        proc.stop()


def w_alarms(b: Bench) -> list[dict[str, Any]]:
    """Issue 16's scale rows: memory of pending alarms, a restart with alarms due, latency."""
    sizes = b.sizes
    n, due_n, lat_n = sizes.alarms_pending_n, sizes.alarms_due_n, sizes.alarms_latency_n
    with tempfile.TemporaryDirectory(prefix="actorcore-bench-") as tmp:
        with_alarms, without = os.path.join(tmp, "alarms.db"), os.path.join(tmp, "none.db")
        t = time.perf_counter()
        _alarms_proc(b, "populate", "--db", with_alarms, "--n", n, "--alarms", n)
        _alarms_proc(b, "populate", "--db", without, "--n", n)
        b.mark(f"alarms: populate 2 x {n}", t)
        per: list[float] = []
        held: list[int] = []
        for _ in range(b.reps):
            full = _alarms_proc(b, "memory", "--db", with_alarms)
            empty = _alarms_proc(b, "memory", "--db", without)
            per.append((full["rss"] - empty["rss"]) / n)
            held.append(full["alarms_in_memory"])
        rates: list[float] = []
        base_rates: list[float] = []
        runs: list[dict[str, Any]] = []
        for rep_ in range(b.reps):
            due_db = os.path.join(tmp, f"due-{rep_}.db")
            calls_db = os.path.join(tmp, f"calls-{rep_}.db")
            _alarms_proc(b, "populate", "--db", due_db, "--n", due_n, "--alarms", due_n,
                         "--due-in", -5)  # fmt: skip
            _alarms_proc(b, "populate", "--db", calls_db, "--n", due_n)
            run = _alarms_proc(b, "restart", "--db", due_db, "--n", due_n)
            runs.append(run)
            rates.append(run["alarms_per_s"])
            base = _alarms_proc(b, "calls", "--db", calls_db, "--n", due_n)
            base_rates.append(base["calls_per_s"])
        awake: list[dict[str, Any]] = []
        asleep: list[dict[str, Any]] = []
        for rep_ in range(b.reps):
            awake.append(
                _alarms_proc(b, "latency", "--db", os.path.join(tmp, f"l{rep_}.db"), "--n", lat_n)
            )
            asleep.append(
                _alarms_proc(
                    b, "latency", "--db", os.path.join(tmp, f"s{rep_}.db"), "--n", lat_n, "--asleep"
                )
            )
    return [
        row(
            f"memory per pending alarm ({n:,} asleep actors, one alarm each, SQLite)",
            "RSS delta / alarm (vs. no alarms)",
            "B",
            per,
            None,
            "0 beyond a bounded prefetch (<= 8 B)",
            lambda a, _b: a <= 8,
            extra={"alarms_in_memory": held},
        ),
        row(
            f"restart with {due_n:,} alarms due (each wakes its actor)",
            "alarms/s (base: the same wakes by calls)",
            "alarms/s",
            rates,
            base_rates,
            "all run once, none lost",
            lambda _a, _b: all(r["ran_twice"] == 0 and r["lost"] == 0 for r in runs),
            extra={
                "delay_p50_ms": [r["delay_p50_ms"] for r in runs],
                "delay_p99_ms": [r["delay_p99_ms"] for r in runs],
                "ran_twice": [r["ran_twice"] for r in runs],
                "lost": [r["lost"] for r in runs],
                "left_in_store": [r["left_in_store"] for r in runs],
            },
        ),
        row(
            f"alarm latency, idle registry ({lat_n} alarms, actor awake)",
            "due-to-start p50",
            "ms",
            [r["p50_ms"] for r in awake],
            None,
            "p50 <= 5 ms",
            lambda a, _b: a <= 5,
            extra={"p99_ms": [r["p99_ms"] for r in awake]},
        ),
        row(
            f"alarm latency, idle registry ({lat_n} alarms, each wakes its actor)",
            "due-to-start p50",
            "ms",
            [r["p50_ms"] for r in asleep],
            None,
            "-",
            None,
            extra={"p99_ms": [r["p99_ms"] for r in asleep]},
        ),
    ]


# ---------------------------------------------------------------------------- engine (issue 19)

ENGINE_SIDES = ("actorcore", "rivetkit")
"""actorcore's envoy, and rivetkit's own runtime as the baseline (``benchmarks.engine``)."""

NODELAY = "rivetkit_nodelay"
"""rivetkit again, with TCP_NODELAY forced on its sockets (``engine_peer/nodelay.c``): a
second baseline for the echo and action rows (no target)."""

UNGATED = "actorcore_ungated"
"""actorcore's envoy again, its counter with ``durable_outputs=False``: the action row's
answers then leave without waiting for their save to the engine (no target)."""

FLOOR = "floor"
"""The floor: an envoy that echoes at the link level, with no registry, actor or dispatcher
(``benchmarks.engine floor``), the baseline of the floor rows (echo only, no target)."""

RT_FIELDS = ("p50_ms", "p99_ms", "runtime_cpu_ms_per_rt", "engine_cpu_ms_per_rt")
"""Details of the round-trip rows: latency, and CPU of the runtime and of the engine."""

ENGINE_RUN_TIMEOUT = 120.0
"""Bound on one client run through the engine."""


@attrs.define
class EngineRig:
    """A running engine with, each in its own pool: one actorcore envoy (``actorcore``), two
    actorcore envoys sharing a pool (``two``), the floor envoy (``floor``), rivetkit's runtime
    (``rivetkit``) and the same with TCP_NODELAY forced (``rivetkit_nodelay``)."""

    port: int
    engine_pid: int
    pools: dict[str, str] = attrs.field(factory=dict)
    pids: dict[str, list[int]] = attrs.field(factory=dict)
    rivetkit_error: str | None = None
    nodelay_error: str | None = None


@contextlib.contextmanager
def engine_rig(b: Bench) -> Iterator[EngineRig]:
    """Start the engine (temporary RocksDB folder, free loopback ports) and the runtimes;
    stop the runtimes (SIGTERM: they drain), then the engine. Nothing is pinned: the engine
    is multi-threaded and shares the machine's CPUs with the runtimes and the client."""
    from . import engine as eng

    t = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="actorcore-bench-engine-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        rivetkit_dir: Path | None = None
        rivetkit_error = None
        try:
            rivetkit_dir = eng.ensure_rivetkit()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            rivetkit_error = repr(exc)
        engine = eng.start_engine(Path(tmp), b._log("engine"))
        stack.callback(eng.stop_process, engine.process)  # last: after the runtimes
        rig = EngineRig(engine.port, engine.process.pid, rivetkit_error=rivetkit_error)
        started: list[tuple[str, Proc]] = []

        def start(side: str, pool: str, proc: Proc) -> None:
            stack.callback(proc.stop)
            rig.pools[side] = pool
            started.append((side, proc))

        def envoy(side: str, pool: str, command: str = "envoy") -> None:
            argv = ["-m", "benchmarks.engine", command, "--url", engine.url, "--pool", pool]
            start(side, pool, Proc(argv, None, b._log(f"{command}-{pool}")))

        envoy("actorcore", "ac1")
        envoy("two", "ac2")
        envoy("two", "ac2")
        envoy(FLOOR, "fl", "floor")
        if rivetkit_dir is not None:

            def peer(side: str, pool: str, **extra: str) -> None:
                env = dict(os.environ, ENGINE_URL=engine.url, POOL=pool, **extra)
                env["RIVETKIT_DIR"] = str(rivetkit_dir)
                log = b._log(f"rivetkit-{pool}")
                start(
                    side, pool, Proc([str(eng.PEER_SCRIPT)], None, log, program=["node"], env=env)
                )

            peer("rivetkit", "rk")
            try:
                peer(NODELAY, "rkn", LD_PRELOAD=str(eng.ensure_nodelay_shim()))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                rig.nodelay_error = repr(exc)
        for side, proc in started:
            try:
                info = json.loads(proc.line(eng.RUNTIME_START_TIMEOUT))
            except RuntimeError as exc:
                if side == "rivetkit":
                    rig.rivetkit_error = f"rivetkit did not start: {exc}"
                elif side == NODELAY:
                    rig.nodelay_error = f"rivetkit (TCP_NODELAY) did not start: {exc}"
                else:
                    raise
                rig.pools.pop(side, None)
                continue
            rig.pids.setdefault(side, []).append(int(info["pid"]))
        rig.pools[UNGATED] = rig.pools["actorcore"]  # the same envoy, another actor
        rig.pids[UNGATED] = rig.pids["actorcore"]
        b.mark("engine: engine and runtimes up", t)
        yield rig


def _engine_client(b: Bench, rig: EngineRig, measure: str, side: str, *args: Any) -> dict[str, Any]:
    """One measurement (``benchmarks.engine client``) in a process of its own; its result with
    the CPU seconds the runtime(s) of ``side`` and the engine spent meanwhile."""
    # The floor is reached like actorcore's envoy: the actor echo, its raw route /ws.
    runtime = {"two": "actorcore", FLOOR: "actorcore", NODELAY: "rivetkit", UNGATED: "actorcore"}
    argv = ["-m", "benchmarks.engine", "client", measure, "--port", str(rig.port),
            "--side", runtime.get(side, side), "--pool", rig.pools[side],
            "--timeout", str(ENGINE_RUN_TIMEOUT), *map(str, args)]  # fmt: skip
    if side == UNGATED:
        from .engine import UNGATED_COUNTER

        argv += ["--counter", UNGATED_COUNTER]
    pids = [*rig.pids[side], rig.engine_pid]
    before = [_cpu(pid) for pid in pids]
    proc = Proc(argv, None, b._log(f"client-{measure}-{side}"))
    t = time.perf_counter()
    try:
        result: dict[str, Any] = json.loads(proc.line(ENGINE_RUN_TIMEOUT + 15))
    finally:
        proc.stop()
        after = [_cpu(pid) for pid in pids]
        cpu = [
            None if x is None or y is None else y - x for x, y in zip(before, after, strict=True)
        ]
        shown = [None if c is None else round(c, 2) for c in cpu]
        b.mark(
            f"engine: {measure} {side} [cpu: runtime(s) {shown[:-1]} s, engine {shown[-1]} s]", t
        )
    result["runtime_cpu_s"], result["engine_cpu_s"] = cpu[:-1], cpu[-1]
    known = [c for c in cpu if c is not None]
    if "calls" in result and len(known) == len(cpu):
        # CPU per round trip, warm-up and connection setup included.
        result["runtime_cpu_ms_per_rt"] = 1000 * sum(known[:-1]) / result["calls"]
        result["engine_cpu_ms_per_rt"] = 1000 * known[-1] / result["calls"]
    return result


def w_engine(b: Bench) -> list[dict[str, Any]]:
    """Issue 19: through one real Rivet engine and the same Python client, actorcore's envoy
    against rivetkit's own runtime (node), and one actorcore envoy against two; the echo of
    both against the floor (an envoy link echoing without an actor)."""
    s = b.sizes
    measures: dict[str, list[Any]] = {
        "echo": ["--duration", s.engine_rt_s, "--warmup", s.engine_warmup],
        "action": ["--duration", s.engine_rt_s, "--warmup", s.engine_warmup],
        "connect_new": ["--n", s.engine_connect_n],
        "connect_asleep": ["--n", s.engine_asleep_n],
        "aggregate": ["--n", s.engine_agg_conns, "--duration", s.engine_agg_s],
    }
    res: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    with engine_rig(b) as rig:
        sides = [k for k in ENGINE_SIDES if k in rig.pools]
        for rep in range(b.reps):
            order = sides if rep % 2 == 0 else sides[::-1]
            for measure, args in measures.items():
                runs = list(order)
                if measure == "aggregate":
                    runs.append("two")
                if measure in ("echo", "action") and NODELAY in rig.pools:
                    runs.append(NODELAY)
                if measure == "echo":
                    runs.append(FLOOR)
                if measure == "action" and UNGATED in rig.pools:
                    runs.append(UNGATED)
                for side in runs:
                    # The aggregate's actors are made once and used by every repetition.
                    tag = side if measure == "aggregate" else f"{side}-{rep}"
                    res[(measure, side)].append(
                        _engine_client(b, rig, measure, side, *args, "--tag", tag)
                    )
    missing = rig.rivetkit_error
    nodelay_missing = rig.nodelay_error

    def col(measure: str, side: str, field: str) -> list[Any] | None:
        runs = res.get((measure, side))
        return None if runs is None else [r.get(field) for r in runs]

    def details(measure: str, *fields: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side in (*ENGINE_SIDES, NODELAY, UNGATED, FLOOR, "two"):
            for f in (*fields, "runtime_cpu_s", "engine_cpu_s"):
                values = col(measure, side, f)
                if values is not None and any(v not in (None, []) for v in values):
                    out[f"{side}_{f}"] = values
        if missing:
            out["rivetkit_not_run"] = missing
        if nodelay_missing and measure in ("echo", "action"):
            out["rivetkit_nodelay_not_run"] = nodelay_missing
        return out

    def twice(a: float, base: float | None) -> bool:
        return base is not None and a >= 2 * base

    base_label = "baseline: rivetkit 2.3.19's runtime"
    rows = [
        row(
            f"engine: echo round trip, 32 B, one raw WebSocket ({base_label})",
            "msgs/s",
            "msgs/s",
            col("echo", "actorcore", "per_s") or [],
            col("echo", "rivetkit", "per_s"),
            ">= 2 x rivetkit",
            twice,
            extra=details("echo", *RT_FIELDS),
        ),
        row(
            f"engine: action round trip, increment over /connect ({base_label})",
            "round trips/s",
            "rt/s",
            col("action", "actorcore", "per_s") or [],
            col("action", "rivetkit", "per_s"),
            ">= 2 x rivetkit",
            twice,
            extra=details("action", *RT_FIELDS),
        ),
    ]
    nodelay_label = "baseline: rivetkit with TCP_NODELAY forced by an LD_PRELOAD shim"
    for measure, what, unit in (
        ("echo", "echo round trip, 32 B, one raw WebSocket", "msgs/s"),
        ("action", "action round trip, increment over /connect", "rt/s"),
    ):
        rows.append(
            row(
                f"engine: {what} ({nodelay_label})",
                "msgs/s" if measure == "echo" else "round trips/s",
                unit,
                col(measure, "actorcore", "per_s") or [],
                col(measure, NODELAY, "per_s"),
                "-",
                None,
                extra={
                    k: v for k, v in details(measure, *RT_FIELDS).items() if k.startswith(NODELAY)
                },
            )
        )
    ungated_action = col("action", UNGATED, "per_s")
    if ungated_action is not None:
        rows.append(
            row(
                "engine: action round trip, increment over /connect, actorcore with "
                f"durable_outputs=False ({base_label})",
                "round trips/s",
                "rt/s",
                ungated_action,
                col("action", "rivetkit", "per_s"),
                "-",
                None,
                extra={
                    k: v for k, v in details("action", *RT_FIELDS).items() if k.startswith(UNGATED)
                },
            )
        )
    floor_label = "baseline: the floor: the envoy link echoing without an actor"
    floor_details = {k: v for k, v in details("echo", *RT_FIELDS).items() if k.startswith(FLOOR)}
    rows.append(
        row(
            f"engine: echo round trip, 32 B ({floor_label})",
            "msgs/s",
            "msgs/s",
            col("echo", "actorcore", "per_s") or [],
            col("echo", FLOOR, "per_s"),
            "-",
            None,
            extra=floor_details,
        )
    )
    rivetkit_echo = col("echo", "rivetkit", "per_s")
    if rivetkit_echo is not None:
        rows.append(
            row(
                f"engine: echo round trip, 32 B, rivetkit's runtime in the actorcore column "
                f"({floor_label})",
                "msgs/s",
                "msgs/s",
                rivetkit_echo,
                col("echo", FLOOR, "per_s"),
                "-",
                None,
            )
        )
    rows.extend(
        row(
            f"engine: connect + first echo, {what} ({base_label})",
            q,
            "ms",
            col(measure, "actorcore", f"{q}_ms") or [],
            col(measure, "rivetkit", f"{q}_ms"),
            "-",
            None,
            extra=details(measure, "asleep_after_s", "failed", "setup_failed", "setup_refused")
            if q == "p50"
            else {},
        )
        for measure, what in (("connect_new", "a new actor"), ("connect_asleep", "an asleep actor"))
        for q in ("p50", "p99")
    )
    conns = s.engine_agg_conns
    rows.append(
        row(
            f"engine: aggregate echo, {conns} clients on {conns} actors, one runtime "
            f"({base_label})",
            "msgs/s",
            "msgs/s",
            col("aggregate", "actorcore", "per_s") or [],
            col("aggregate", "rivetkit", "per_s"),
            "-",
            None,
            extra=details("aggregate"),
        )
    )
    rows.append(
        row(
            f"engine: aggregate echo, {conns} clients on {conns} actors, two actorcore envoys "
            "in one pool (baseline: one envoy)",
            "msgs/s",
            "msgs/s",
            col("aggregate", "two", "per_s") or [],
            col("aggregate", "actorcore", "per_s"),
            "-",
            None,
            extra={"per_conn": col("aggregate", "two", "per_conn")},
        )
    )
    return rows


RUNNERS: dict[str, Callable[[Bench], list[dict[str, Any]]]] = {
    "echo": w_echo,
    "oneway": w_oneway,
    "action": w_action,
    "connect": w_connect,
    "tail": w_tail,
    "finalize": w_finalize,
    "drain": w_drain,
    "mem_awake": w_mem_awake,
    "mem_asleep": w_mem_asleep,
    "mem_conn": w_mem_conn,
    "alarms": w_alarms,
    "engine": w_engine,
}


# ---------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    import trio
    import trio_websocket
    import wsproto

    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "trio_websocket": trio_websocket.__version__,
        "wsproto": wsproto.__version__,
        "kernel": platform.release(),
        "taskset": shutil.which("taskset") is not None,
    }


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("msgs/s", "rt/s", "alarms/s"):
        return f"{v:,.0f}"
    if unit == "B":
        return f"{v:.1f} B" if abs(v) < 100 else f"{v:,.0f} B"
    if unit == "ms":
        return f"{v:.2f} ms"
    if unit == "s":
        return f"{v:.3f} s"
    return f"{v:.3g}"


def cell(s: dict[str, Any] | None, unit: str) -> str:
    if s is None or s["median"] is None:
        return "-"
    return f"{fmt(s['median'], unit)} [{fmt(s['min'], unit)} - {fmt(s['max'], unit)}]"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        f"Command: `{meta['command']}` ({meta['mode']}, {meta['reps']} runs per cell, "
        f"median [min - max]); {meta['started']}, {meta['elapsed_s']:.0f} s"
        f"{'' if meta.get('complete', True) else ' (INCOMPLETE: still running or cut short)'}.",
        *(
            [
                f"Rows of other workloads are from `{meta['merged_from']['command']}` "
                f"({meta['merged_from']['started']}, {meta['merged_from']['elapsed_s']:.0f} s).",
            ]
            if meta.get("merged_from")
            else []
        ),
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, "
        f"Python {m['python']}, trio {m['trio']}, trio-websocket {m['trio_websocket']}, "
        f"wsproto {m['wsproto']}; server pinned to CPU {SERVER_CPU}, load generator to "
        f"CPU {CLIENT_CPU} (taskset: {'yes' if m['taskset'] else 'no'}); load average "
        f"before/after: {meta['loadavg_before']} / {meta['loadavg_after']}.",
        *(
            [
                "",
                "Wall time per workload: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in meta["workload_s"].items())
                + ".",
            ]
            if meta.get("workload_s")
            else []
        ),
        "",
        "| workload | metric | actorcore | baseline (same run) | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['ratio']:.2f} x" if r["ratio"] is not None else "-"
        result = {True: "**met**", False: "**missed**", None: "-"}[r["met"]]
        if r.get("not_run"):
            result = "not run"
        lines.append(
            f"| {r['workload']} | {r['metric']} | {cell(r['actorcore'], r['unit'])} | "
            f"{cell(r['baseline'], r['unit'])} | {ratio} | {r['target']} | {result} |"
        )
    notes = [r for r in rows if r["extra"]]
    if notes:
        lines += ["", "Details per run:", ""]
        for r in notes:
            lines.append(f"- {r['workload']} ({r['metric']}): `{json.dumps(_short(r['extra']))}`")
    return "\n".join(lines) + "\n"


def _short(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _short(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_short(v) for v in x]
    return x


def update_doc(md: str) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} has no result markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n\n{md}\n{END}{tail}")


def write_results(
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    failures: dict[str, str],
    elapsed: float,
    *,
    done: bool,
) -> str:
    """Write latest.json and latest.md (after every workload, so a cut-short run keeps what
    it measured); returns the Markdown."""
    meta = {**meta, "elapsed_s": elapsed, "complete": done, "failures": failures}
    meta["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = list(rows)
    for name, err in failures.items():
        rows.append(
            {
                "workload": name,
                "metric": "not run (failed)",
                "unit": "",
                "actorcore": None,
                "baseline": None,
                "ratio": None,
                "target": "-",
                "met": None,
                "not_run": True,
                "extra": {"error": err},
            }
        )
    md = markdown(rows, meta)
    (RESULTS / "latest.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "latest.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"any of {', '.join(WORKLOADS)} (default: all but {', '.join(ONLY_BY_NAME)})",
    )
    parser.add_argument("--quick", action="store_true", help="smaller N, shorter runs")
    parser.add_argument("--reps", type=int, default=3, help="runs per cell (>= 3)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other workloads' rows of the previous latest.json (re-run some only)",
    )
    parser.add_argument(
        "--update-doc", action="store_true", help="paste the table into docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in RUNNERS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    names = args.names or [n for n in WORKLOADS if n not in ONLY_BY_NAME]
    sizes = QUICK if args.quick else FULL
    RESULTS.mkdir(parents=True, exist_ok=True)
    logdir = RESULTS / "logs" / time.strftime("%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(sizes, max(1, args.reps), logdir, shared=args.quick)
    meta: dict[str, Any] = {
        "command": "python -m benchmarks" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "mode": "quick" if args.quick else "full",
        "reps": bench.reps,
        "sizes": attrs.asdict(sizes),
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if args.merge and (RESULTS / "latest.json").exists():
        previous = json.loads((RESULTS / "latest.json").read_text())
        rows = [r for r in previous["rows"] if r.get("key") not in names and not r.get("not_run")]
        meta["merged_from"] = previous["meta"].get("merged_from") or {
            k: previous["meta"][k] for k in ("command", "started", "elapsed_s")
        }
    failures: dict[str, str] = {}
    for name in names:
        t = time.perf_counter()
        print(f"== {name} ...", flush=True)
        try:
            with bench.session(name):
                new = RUNNERS[name](bench)
            bench.mark(f"{name}: total", t)
        except Exception as exc:  # one broken workload must not lose the others
            failures[name] = repr(exc)
            print(f"   FAILED: {exc!r}", flush=True)
            continue
        for r in new:
            r["key"] = name
        rows += new
        for r in new:
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            met = {True: "met", False: "MISSED", None: "-"}[r["met"]]
            print(
                f"   {r['workload'][:60]:60s} {r['metric'][:14]:14s} "
                f"{cell(r['actorcore'], r['unit']):40s} base {cell(r['baseline'], r['unit']):40s}"
                f" {ratio:7s} {met}",
                flush=True,
            )
        print(f"   ({time.perf_counter() - t:.1f} s)", flush=True)
        meta.setdefault("workload_s", {})[name] = round(time.perf_counter() - t, 1)
        write_results(rows, meta, failures, time.perf_counter() - t0, done=False)
    bench.timeline.close()
    md = write_results(rows, meta, failures, time.perf_counter() - t0, done=True)
    print()
    print(md)
    print(f"wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.md'}")
    if args.update_doc:
        update_doc(md)
        print(f"updated {DOC}")
    return 1 if failures else 0
