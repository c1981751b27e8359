"""The SQLite :class:`~actorcore.store.base.Store`: one file, WAL mode, group commit.

Three connections, each used by one thread at a time:

* the **writer**. Every write is a request with an ``apply`` function; one function,
  ``_apply_batch``, applies a batch of them in ONE transaction, in ONE worker-thread call,
  holding the writer's ``trio.CapacityLimiter(1)`` (the connection is used by one party at a
  time). Who calls it is the only choice, and there are two:

  - the **writer task** (:meth:`SQLiteStore.run`): requests are queued on a bounded trio
    memory channel; the writer takes every request queued and applies them together (group
    commit), so many concurrent saves cost one fsync-free WAL commit (``synchronous=NORMAL``);
  - the **direct strategy** (``direct_writes=True``, the default): a write that finds the
    writer idle (nothing queued, the limiter free, no checkpoint due) makes that thread call
    from its own task, saving the two scheduling rounds of a trip to the writer task and back
    (most of a lone write's latency). In a burst only the first write can: the others find
    the limiter taken and queue, and are group-committed.

  Each request of a batch runs in its own savepoint and gets its own result or error; only a
  failed COMMIT fails the whole batch (it is rolled back and the next batch starts clean).
  SQLite's automatic WAL checkpoint is off (it would run inside a commit); the writer
  checkpoints in a worker thread, after about 4 MiB of writes. Nothing runs SQL on the event
  loop.
* the **reader** (``query_only``), for :meth:`~SQLiteStore.get_by_key`,
  :meth:`~SQLiteStore.get_by_id` and :meth:`~SQLiteStore.count`, in a worker thread serialized
  by its own ``trio.CapacityLimiter(1)``. In WAL mode it never blocks the writer and sees every
  committed write.
* the **probe** (``query_only``), for the synchronous :meth:`~SQLiteStore.exists_nowait`,
  guarded by a ``threading.Lock``.

Every ``sqlite3.Error`` becomes :class:`~actorcore.errors.StoreError` naming the operation.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Final, Generic, TypeVar, cast

import attrs
import outcome
import trio

from actorcore.errors import (
    ActorError,
    ActorNotFound,
    ScheduleLimit,
    StaleGeneration,
    StoreError,
)
from actorcore.store.base import (
    ActorRecord,
    AlarmRecord,
    ConnRecord,
    ConnWrites,
    SaveItem,
    Store,
    StoreStatistics,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 3
"""Version stored in the ``meta`` table. A version 1 file (no alarms table) or 2 (no conns
table) is upgraded in place when opened; a file with any other version is refused."""

_UPGRADABLE = frozenset({"1", "2"})
"""Schema versions that opening upgrades to :data:`SCHEMA_VERSION` (each added tables only,
which the ``CREATE ... IF NOT EXISTS`` of the schema makes)."""

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS actors (
    actor_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    generation INTEGER NOT NULL,
    initialized INTEGER NOT NULL,
    state BLOB,
    input BLOB,
    updated_at REAL,
    UNIQUE (name, key)
);
CREATE TABLE IF NOT EXISTS alarms (
    due REAL NOT NULL,
    alarm_id TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    action TEXT NOT NULL,
    args BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (due, alarm_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS alarms_by_id ON alarms (alarm_id);
CREATE INDEX IF NOT EXISTS alarms_by_actor ON alarms (actor_id);
CREATE TABLE IF NOT EXISTS conns (
    actor_id TEXT NOT NULL,
    conn_id TEXT NOT NULL,
    data BLOB NOT NULL,
    detached_at REAL,
    PRIMARY KEY (actor_id, conn_id)
) WITHOUT ROWID;
"""
# The alarms table is kept in due order (its primary key): the timer's read of the alarms due
# first is a sequential scan of a few pages, not a random read per alarm.

_ALARM_COLUMNS = "alarm_id, actor_id, due, action, args, attempts"

_COLUMNS = "actor_id, name, key, generation, initialized, state, input"

_PAGE = 4096
"""Estimated WAL growth of one write besides its payload (a page of the table or an index)."""

_CHECKPOINT_BYTES = 4 * 1024 * 1024
#: Payload bytes the writer puts in one background batch: a wake queued behind bulk saves
#: waits for one such batch at most (see ``SQLiteStore._submit``).
_BATCH_BYTES = 8 * 1024 * 1024
"""Checkpoint the WAL after about this much was written to it (SQLite's default automatic
checkpoint is at 1000 pages, 4 MiB; the writer turns that off and checkpoints in a worker
thread instead, because a checkpoint syncs the database file)."""

_Row = tuple[str, str, str, int, int, bytes | None, bytes | None]


@contextlib.contextmanager
def _map_sqlite_errors(operation: str) -> Iterator[None]:
    """Translate ``sqlite3.Error`` raised inside the block into StoreError naming ``operation``."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"{operation} failed: {exc}") from exc


def _record(row: _Row) -> ActorRecord:
    actor_id, name, key, generation, initialized, state, input = row
    return ActorRecord(actor_id, name, key, generation, bool(initialized), state, input)


def _alarm(row: tuple[str, str, float, str, bytes, int]) -> AlarmRecord:
    return AlarmRecord(*row)


# The statements of a save (one actor's in :func:`_apply_save`, a batch's in
# :func:`_apply_saves_at_once`).
_SAVE_STATE: Final = (
    "UPDATE actors SET state = ?, initialized = 1, input = NULL, updated_at = ? "
    "WHERE actor_id = ? AND generation = ?"
)
_TOUCH_ACTOR: Final = "UPDATE actors SET updated_at = ? WHERE actor_id = ? AND generation = ?"
_UPSERT_CONN: Final = (
    "INSERT OR REPLACE INTO conns (actor_id, conn_id, data, detached_at) VALUES (?, ?, ?, ?)"
)
_DELETE_CONN: Final = "DELETE FROM conns WHERE actor_id = ? AND conn_id = ?"


def _save_size(item: SaveItem) -> int:
    return len(item.state or b"") + sum(len(c.data) for c in item.conns.upserts)


def _apply_save(conn: sqlite3.Connection, operation: str, item: SaveItem) -> None:
    """Write one actor's state (unless None) and connection records, fenced by its
    generation."""
    actor_id, generation = item.actor_id, item.generation
    if item.state is None:
        cursor = conn.execute(_TOUCH_ACTOR, (time.time(), actor_id, generation))
    else:
        cursor = conn.execute(_SAVE_STATE, (item.state, time.time(), actor_id, generation))
    if cursor.rowcount == 0:
        _refuse_stale(conn, operation, actor_id, generation)
    _write_conns(conn, [item])


def _apply_saves_at_once(conn: sqlite3.Connection, items: list[SaveItem]) -> bool:
    """Every save of a batch in a handful of statements (the common case: each runs a few
    statements for all the items, so the worker thread takes the GIL a few times per batch,
    not a few times per item). False, with nothing applied, if some item's generation was
    not current: the caller then applies them one by one to tell which."""
    now = time.time()
    with_state = [(i.state, now, i.actor_id, i.generation) for i in items if i.state is not None]
    touched = [(now, i.actor_id, i.generation) for i in items if i.state is None]
    conn.execute("SAVEPOINT batch")
    updated = 0
    if with_state:
        updated += conn.executemany(_SAVE_STATE, with_state).rowcount
    if touched:
        updated += conn.executemany(_TOUCH_ACTOR, touched).rowcount
    if updated != len(items):
        conn.execute("ROLLBACK TO batch")
        conn.execute("RELEASE batch")
        return False
    _write_conns(conn, items)
    conn.execute("RELEASE batch")
    return True


def _write_conns(conn: sqlite3.Connection, items: list[SaveItem]) -> None:
    """The connection records of ``items``: upserts and deletes, a statement each."""
    upserts = [
        (c.actor_id, c.conn_id, c.data, c.detached_at) for i in items for c in i.conns.upserts
    ]
    if upserts:
        conn.executemany(_UPSERT_CONN, upserts)
    deletes = [(i.actor_id, conn_id) for i in items for conn_id in i.conns.deletes]
    if deletes:
        conn.executemany(_DELETE_CONN, deletes)


def _with_conns(conn: sqlite3.Connection, record: ActorRecord) -> ActorRecord:
    """``record`` with its connection records (a range read of the conns table's key, in the
    transaction that began the generation)."""
    rows = conn.execute(
        "SELECT conn_id, data, detached_at FROM conns WHERE actor_id = ?", (record.actor_id,)
    ).fetchall()
    if not rows:
        return record
    conns = tuple(ConnRecord(conn_id, record.actor_id, data, at) for conn_id, data, at in rows)
    return attrs.evolve(record, conns=conns)


def _current_generation(conn: sqlite3.Connection, operation: str, actor_id: str) -> int:
    row = conn.execute("SELECT generation FROM actors WHERE actor_id = ?", (actor_id,)).fetchone()
    if row is None:
        raise ActorNotFound(f"{operation} failed: no actor with id {actor_id!r}")
    return cast(int, row[0])


def _refuse_stale(conn: sqlite3.Connection, operation: str, actor_id: str, generation: int) -> None:
    """Raise the right error for a fenced write that matched no row."""
    current = _current_generation(conn, operation, actor_id)
    raise StaleGeneration(
        f"{operation} refused: actor {actor_id!r} is at generation {current}, not {generation}"
    )


async def _answer(request: _Request[_T]) -> _T:
    """Wait for the writer to settle a queued ``request``; a caller that leaves first marks
    it abandoned (skipped if the writer has not taken it yet)."""
    try:
        await request.done.wait()
    finally:
        if not request.done.is_set():
            request.abandoned = True
    return request.unwrap()


def _never_abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


async def _in_worker_thread(fn: Callable[[], _T], limiter: trio.CapacityLimiter) -> _T:
    """Run ``fn`` in one of trio's cached worker threads while holding ``limiter``.

    The same contract as ``trio.to_thread.run_sync(fn, limiter=limiter)``: a checkpoint before
    (cancellable while waiting for the limiter), and once ``fn`` started the caller waits for
    it even if cancelled. It skips what makes ``to_thread`` cost about twice as much per call
    (a copied context, ``from_thread`` plumbing, the limiter's extra scheduling round); for a
    point read or a small commit that overhead was most of the store's latency.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:
        await limiter.acquire()
    try:
        return await _in_thread_holding(fn)
    finally:
        limiter.release()


async def _in_thread_holding(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a cached worker thread and wait for it, uncancellably (the caller holds
    whatever limiter guards ``fn``'s connection)."""
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[_T]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(fn, deliver, name="actorcore sqlite")
    return cast(_T, await trio.lowlevel.wait_task_rescheduled(_never_abort))


@attrs.define(eq=False)
class _Request(Generic[_T]):
    """One queued write: a function run on the writer connection inside the batch transaction."""

    operation: str
    apply: Callable[[sqlite3.Connection], _T]
    actor_delta: int = 0
    """Change of the actor count once this write commits."""
    size: int = 0
    """Bytes of payload (state or input) the write carries."""
    done: trio.Event = attrs.Factory(trio.Event)
    abandoned: bool = False
    """The caller stopped waiting before the writer took the request: it is skipped."""
    value: _T | None = None
    error: ActorError | None = None

    def unwrap(self) -> _T:
        if self.error is not None:
            raise self.error
        return cast(_T, self.value)


@attrs.define(eq=False)
class SQLiteStore(Store):
    """A :class:`Store` in one SQLite file (WAL mode), writes group-committed by one task.

    Drive it with ``await nursery.start(store.run)`` (or :func:`actorcore.store.open_store`);
    :meth:`aclose` flushes queued writes and ends :meth:`run`. A store object runs once.

    A write whose caller is cancelled before the writer takes it is not applied; once taken,
    it completes (or fails) regardless. ``:memory:`` databases are not supported (the three
    connections must share one file).

    Statistics: ``writes`` counts committed write requests (a :meth:`create_many` call counts
    once), ``commits`` transactions committed, ``stale_writes`` fencing refusals, and
    ``write_errors`` every other :class:`StoreError` of a write (duplicate key, failed commit).
    A write refused with :class:`ActorNotFound` is in neither counter. ``actors`` is exact: it
    is counted once at open and then kept up to date by committed writes.
    """

    keeps_alarms: ClassVar[bool] = True
    keeps_conns: ClassVar[bool] = True
    durable: ClassVar[bool] = True

    _path: str | os.PathLike[str]
    _max_pending: int = attrs.field(default=1024, kw_only=True)
    """Capacity of the write queue; senders wait (backpressure) when it is full."""
    _busy_timeout: float = attrs.field(default=5.0, kw_only=True)
    """Seconds a connection waits for a lock held by another process."""
    _close_timeout: float = attrs.field(
        default=10.0, kw_only=True, validator=attrs.validators.gt(0)
    )
    """Seconds :meth:`aclose` (or cancellation of :meth:`run`) spends flushing queued writes."""

    _direct_writes: bool = attrs.field(default=True, kw_only=True)
    """The direct strategy (see the module docstring): a write that finds the writer idle is
    applied from its caller's task. False: every write goes through the writer task."""

    _writer: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _reader: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _probe: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _write_limiter: trio.CapacityLimiter = attrs.field(
        factory=lambda: trio.CapacityLimiter(1), init=False
    )
    _read_limiter: trio.CapacityLimiter = attrs.field(
        factory=lambda: trio.CapacityLimiter(1), init=False
    )
    _probe_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _send: trio.MemorySendChannel[_Request[Any]] | None = attrs.field(default=None, init=False)
    _urgent: collections.deque[_Request[Any]] = attrs.field(factory=collections.deque, init=False)
    """Writes of the wake path (a generation beginning, an actor created) that arrived while
    background writes were queued: the writer takes them before the next background batch."""
    _run_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _started: bool = attrs.field(default=False, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _stopped: trio.Event = attrs.field(factory=trio.Event, init=False)
    _actors: int = attrs.field(default=0, init=False)
    _wal_estimate: int = attrs.field(default=0, init=False)
    """Bytes written to the WAL since the last checkpoint, estimated."""
    _writes: int = attrs.field(default=0, init=False)
    _commits: int = attrs.field(default=0, init=False)
    _write_errors: int = attrs.field(default=0, init=False)
    _stale_writes: int = attrs.field(default=0, init=False)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the database, serve writes until :meth:`aclose` or cancellation, then close.

        ``task_status.started()`` is called once the schema is ready. On the way out, writes
        still queued are committed (bounded by ``close_timeout``, shielded); any left after
        that fail with StoreError. Raises StoreError if the database cannot be opened.
        """
        if self._started:
            raise StoreError("run failed: an SQLiteStore runs only once")
        self._started = True
        send, receive = trio.open_memory_channel[_Request[Any]](self._max_pending)
        try:
            with self._run_scope:
                # Not abandoned on cancel: the finally below must see every opened connection.
                await trio.to_thread.run_sync(self._connect_sync)
                if self._closing:
                    raise StoreError("run failed: the store was closed while opening")
                self._send = send
                task_status.started()
                async for first in receive:
                    await self._write_urgent()
                    await self._write_batch(self._take_batch(first, receive))
                    await self._write_urgent()
        finally:
            self._send = None
            send.close()
            # Each phase is shielded and bounded: flush what is queued, fail the rest, close.
            with trio.move_on_after(self._close_timeout, shield=True) as flush_scope:
                await self._write_urgent()
                while not flush_scope.cancel_called and (batch := self._take_batch(None, receive)):
                    await self._write_batch(batch)
            while batch := self._take_urgent() or self._take_batch(None, receive):
                self._fail_batch(batch, "the store closed before the write was committed")
                self._settle(batch)
            receive.close()
            with trio.move_on_after(self._close_timeout, shield=True):
                await self._disconnect()
            self._stopped.set()

    async def open(self) -> None:
        """Check that :meth:`run` is serving; an SQLiteStore is opened by running it."""
        await trio.lowlevel.checkpoint()
        if self._send is None:
            raise StoreError(
                "open failed: SQLiteStore needs its writer task; use "
                "`await nursery.start(store.run)` or `actorcore.store.open_store(store)`"
            )

    async def aclose(self) -> None:
        """Stop taking writes, commit the queued ones and wait for :meth:`run` to end.

        Idempotent. If flushing takes longer than ``close_timeout`` the writer is cancelled
        (its own cleanup is bounded too).
        """
        self._closing = True
        if not self._started:
            self._started = True  # a never-run store stays unusable
            self._stopped.set()
        if self._send is not None:
            self._send.close()
            self._send = None
        with trio.move_on_after(self._close_timeout):
            await self._stopped.wait()
        if not self._stopped.is_set():
            self._run_scope.cancel()
            await self._stopped.wait()

    def _connect_sync(self) -> None:
        writer = self._connect("open", query_only=False)
        self._writer = writer
        with _map_sqlite_errors("open"):
            (mode,) = writer.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"open failed: {os.fspath(self._path)!r} cannot use WAL mode (got {mode!r})"
                )
            writer.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run in a worker thread (see _write_batch), never inside a commit.
            writer.execute("PRAGMA wal_autocheckpoint=0")
            writer.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        writer.execute(statement)
                writer.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                (version,) = writer.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()
                if version in _UPGRADABLE:
                    writer.execute(
                        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                        (str(SCHEMA_VERSION),),
                    )
                elif version != str(SCHEMA_VERSION):
                    raise StoreError(
                        f"open failed: schema version {version} is not supported "
                        f"(expected {SCHEMA_VERSION})"
                    )
                (self._actors,) = writer.execute("SELECT count(*) FROM actors").fetchone()
                # Connections attached when the last process ended lost their sockets with it.
                writer.execute(
                    "UPDATE conns SET detached_at = ? WHERE detached_at IS NULL", (time.time(),)
                )
                writer.execute("COMMIT")
            except BaseException:
                self._rollback(writer)
                raise
        self._reader = self._connect("open", query_only=True)
        self._probe = self._connect("open", query_only=True)

    def _connect(self, operation: str, *, query_only: bool) -> sqlite3.Connection:
        with _map_sqlite_errors(operation):
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,  # autocommit: transactions are explicit BEGIN/COMMIT
                check_same_thread=False,  # each connection is serialized by its own guard
            )
            if query_only:
                try:
                    conn.execute("PRAGMA query_only=ON")
                except BaseException:
                    conn.close()
                    raise
            return conn

    async def _disconnect(self) -> None:
        """Close the three connections, each under its own guard (no use can be in flight).

        The writer goes last: closing the last connection checkpoints the WAL into the
        database file, which may take a while and so must happen in a worker thread.
        """
        with self._probe_lock:
            probe, self._probe = self._probe, None
        if probe is not None:
            probe.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            await trio.to_thread.run_sync(reader.close, limiter=self._read_limiter)
        writer, self._writer = self._writer, None
        if writer is not None:
            await trio.to_thread.run_sync(writer.close, limiter=self._write_limiter)

    # -- writes --------------------------------------------------------------------------------

    async def create(self, actor_id: str, name: str, key: str, input: bytes | None) -> ActorRecord:
        """Insert a new actor with generation 0. Raises StoreError if ``(name, key)`` exists."""
        record = ActorRecord(actor_id, name, key, 0, False, None, input)
        return await self._submit(self._insert("create", record), urgent=True)

    @staticmethod
    def _insert(operation: str, record: ActorRecord) -> _Request[ActorRecord]:
        """A write request inserting ``record`` (StoreError if its key or id exists)."""

        def apply(conn: sqlite3.Connection) -> ActorRecord:
            try:
                conn.execute(
                    "INSERT INTO actors (actor_id, name, key, generation, initialized, state, "
                    "input, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.actor_id,
                        record.name,
                        record.key,
                        record.generation,
                        int(record.initialized),
                        record.state,
                        record.input,
                        time.time(),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    f"{operation} failed: actor name={record.name!r} key={record.key!r} "
                    f"(id {record.actor_id!r}) already exists ({exc})"
                ) from exc
            return record

        size = len(record.state or b"") + len(record.input or b"")
        return _Request(operation, apply, actor_delta=1, size=size)

    async def create_many(self, rows: list[tuple[str, str, str, bytes | None]]) -> None:
        """Insert ``(actor_id, name, key, input)`` rows at generation 0, all or none."""
        now = time.time()

        def apply(conn: sqlite3.Connection) -> None:
            try:
                conn.executemany(
                    "INSERT INTO actors (actor_id, name, key, generation, initialized, state, "
                    "input, updated_at) VALUES (?, ?, ?, 0, 0, NULL, ?, ?)",
                    [(actor_id, name, key, input, now) for actor_id, name, key, input in rows],
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    f"create_many failed: an actor already exists ({exc}); no row was inserted"
                ) from exc

        size = sum(len(input or b"") + _PAGE for _, _, _, input in rows)
        await self._submit(_Request("create_many", apply, actor_delta=len(rows), size=size))

    async def begin_generation(self, actor_id: str) -> ActorRecord:
        """Atomically increment the actor's generation and return the updated record."""

        def apply(conn: sqlite3.Connection) -> ActorRecord:
            rows = conn.execute(
                "UPDATE actors SET generation = generation + 1, updated_at = ? "
                f"WHERE actor_id = ? RETURNING {_COLUMNS}",
                (time.time(), actor_id),
            ).fetchall()
            if not rows:
                raise ActorNotFound(f"begin_generation failed: no actor with id {actor_id!r}")
            return _with_conns(conn, _record(rows[0]))

        return await self._submit(_Request("begin_generation", apply), urgent=True)

    async def begin_or_create(
        self, name: str, key: str, actor_id: str, input: bytes | None
    ) -> ActorRecord:
        """Begin the next generation of the actor ``(name, key)``, inserting it first (as
        ``actor_id`` with ``input``, at generation 1) if there is none: one write request, one
        transaction (usually applied on the event loop: no thread hop)."""

        def apply(conn: sqlite3.Connection) -> ActorRecord:
            now = time.time()
            rows = conn.execute(
                "UPDATE actors SET generation = generation + 1, updated_at = ? "
                f"WHERE name = ? AND key = ? RETURNING {_COLUMNS}",
                (now, name, key),
            ).fetchall()
            if rows:
                return _with_conns(conn, _record(rows[0]))
            try:
                conn.execute(
                    "INSERT INTO actors (actor_id, name, key, generation, initialized, state, "
                    "input, updated_at) VALUES (?, ?, ?, 1, 0, NULL, ?, ?)",
                    (actor_id, name, key, input, now),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    f"begin_or_create failed: actor name={name!r} key={key!r} could not be "
                    f"created as id {actor_id!r} ({exc})"
                ) from exc
            request.actor_delta = 1  # read once the batch has committed
            return ActorRecord(actor_id, name, key, 1, False, None, input)

        request = _Request("begin_or_create", apply, size=len(input or b""))
        return await self._submit(request, urgent=True)

    async def create_initialized(
        self, actor_id: str, name: str, key: str, state: bytes
    ) -> ActorRecord:
        """Insert a new actor at generation 1, initialized with ``state``: one write request,
        one transaction."""
        record = ActorRecord(actor_id, name, key, 1, True, state, None)
        return await self._submit(self._insert("create_initialized", record), urgent=True)

    async def save(self, actor_id: str, generation: int, state: bytes) -> None:
        """Store ``state``, mark the actor initialized and drop its creation input. Fenced."""

        def apply(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(_SAVE_STATE, (state, time.time(), actor_id, generation))
            if cursor.rowcount == 0:
                _refuse_stale(conn, "save", actor_id, generation)

        await self._submit(_Request("save", apply, size=len(state)))

    async def save_with_conns(
        self, actor_id: str, generation: int, state: bytes | None, conns: ConnWrites
    ) -> None:
        """Store ``state`` (None: unchanged) and write ``conns``, in one transaction (group
        committed with the other writes queued at the time). Fenced."""
        item = SaveItem(actor_id, generation, state, conns)

        def apply(conn: sqlite3.Connection) -> None:
            _apply_save(conn, "save_with_conns", item)

        await self._submit(_Request("save_with_conns", apply, size=_save_size(item)))

    async def save_many(self, items: list[SaveItem]) -> list[ActorError | None]:
        """Save every item in ONE write request (one transaction, one worker-thread call),
        each in a savepoint of its own: a fenced or failed item does not undo the others."""

        def apply(conn: sqlite3.Connection) -> list[ActorError | None]:
            if _apply_saves_at_once(conn, items):
                return [None] * len(items)
            errors: list[ActorError | None] = []
            for item in items:
                conn.execute("SAVEPOINT item")
                try:
                    _apply_save(conn, "save_many", item)
                except Exception as exc:
                    conn.execute("ROLLBACK TO item")
                    if isinstance(exc, ActorError):
                        errors.append(exc)
                    else:
                        error = StoreError(f"save_many failed for {item.actor_id!r}: {exc}")
                        error.__cause__ = exc
                        errors.append(error)
                else:
                    errors.append(None)
                conn.execute("RELEASE item")
            return errors

        size = sum(_save_size(item) for item in items)
        request = _Request("save_many", apply, size=size)
        try:
            errors = await self._submit(request)
        except StoreError as exc:
            return [exc] * len(items)
        # Counted per item (the request counts once when it commits).
        self._writes += sum(error is None for error in errors) - 1
        self._stale_writes += sum(isinstance(error, StaleGeneration) for error in errors)
        return errors

    async def prune_conns(self, detached_before: float) -> int:
        """Delete the connection records detached before ``detached_before``."""

        def apply(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM conns WHERE detached_at IS NOT NULL AND detached_at < ?",
                (detached_before,),
            )
            return cursor.rowcount

        return await self._submit(_Request("prune_conns", apply))

    async def delete(self, actor_id: str, generation: int) -> None:
        """Remove the actor and free its key. Fenced like :meth:`save`."""

        def apply(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "DELETE FROM actors WHERE actor_id = ? AND generation = ?", (actor_id, generation)
            )
            if cursor.rowcount == 0:
                _refuse_stale(conn, "delete", actor_id, generation)
            conn.execute("DELETE FROM alarms WHERE actor_id = ?", (actor_id,))
            conn.execute("DELETE FROM conns WHERE actor_id = ?", (actor_id,))

        await self._submit(_Request("delete", apply, actor_delta=-1))

    async def add_alarm(self, alarm: AlarmRecord, generation: int, max_alarms: int) -> None:
        """Store ``alarm``, fenced by ``generation``; ScheduleLimit past ``max_alarms``. The
        count and the insert are one transaction."""

        def apply(conn: sqlite3.Connection) -> None:
            if _current_generation(conn, "add_alarm", alarm.actor_id) != generation:
                _refuse_stale(conn, "add_alarm", alarm.actor_id, generation)
            (held,) = conn.execute(
                "SELECT count(*) FROM alarms WHERE actor_id = ?", (alarm.actor_id,)
            ).fetchone()
            if held >= max_alarms:
                raise ScheduleLimit(
                    f"actor {alarm.actor_id} already has {held} pending alarms "
                    f"(max_alarms={max_alarms})"
                )
            try:
                conn.execute(
                    f"INSERT INTO alarms ({_ALARM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        alarm.alarm_id,
                        alarm.actor_id,
                        alarm.due,
                        alarm.action,
                        alarm.args,
                        alarm.attempts,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    f"add_alarm failed: alarm {alarm.alarm_id!r} already exists"
                ) from exc

        await self._submit(_Request("add_alarm", apply, size=len(alarm.args) + _PAGE))

    async def remove_alarm(self, actor_id: str, alarm_id: str) -> bool:
        """Remove the alarm; False if ``actor_id`` has no alarm ``alarm_id``."""

        def apply(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM alarms WHERE alarm_id = ? AND actor_id = ?", (alarm_id, actor_id)
            )
            return cursor.rowcount > 0

        return await self._submit(_Request("remove_alarm", apply))

    async def retry_alarm(self, alarm_id: str, due: float, attempts: int) -> bool:
        """Move the alarm to ``due`` with ``attempts``; False if it is gone."""

        def apply(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE alarms SET due = ?, attempts = ? WHERE alarm_id = ?",
                (due, attempts, alarm_id),
            )
            return cursor.rowcount > 0

        return await self._submit(_Request("retry_alarm", apply))

    async def _submit(self, request: _Request[_T], *, urgent: bool = False) -> _T:
        """Apply ``request`` through the writer. ``urgent`` (the wake path): if background
        writes are queued, it goes ahead of them, after the batch in flight (whose size is
        bounded by ``_BATCH_BYTES``), so a wake never waits behind a queue of bulk saves."""
        send = self._send
        if send is None:
            raise StoreError(f"{request.operation} failed: the store is not running")
        if self._direct_writes:
            await trio.lowlevel.checkpoint_if_cancelled()
            if await self._write_directly(request, send):
                return request.unwrap()
        if urgent and send.statistics().current_buffer_used:
            # The writer is busy with the queue and checks this before each next batch.
            self._urgent.append(request)
            return await _answer(request)
        try:
            # Queued at once (no scheduling round) unless the queue is full; the wait below is
            # the checkpoint: a caller cancelled before the writer takes its request is skipped.
            try:
                send.send_nowait(request)
            except trio.WouldBlock:
                await send.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StoreError(f"{request.operation} failed: the store is closed") from None
        return await _answer(request)

    async def _write_directly(
        self, request: _Request[Any], send: trio.MemorySendChannel[_Request[Any]]
    ) -> bool:
        """The direct strategy: if the writer is idle (nothing queued, its limiter free, no
        checkpoint due), apply ``request`` from this task in one worker-thread call, holding
        the writer's limiter. False if the writer was not idle (the caller queues it)."""
        if self._wal_estimate >= _CHECKPOINT_BYTES or send.statistics().current_buffer_used:
            return False
        try:
            self._write_limiter.acquire_nowait()
        except trio.WouldBlock:
            return False  # the writer (or another direct write) has the connection
        batch = [request]
        try:
            with self._answered_if_it_crashes(batch):
                committed = await _in_thread_holding(functools.partial(self._apply_batch, batch))
        finally:
            self._write_limiter.release()
        self._batch_done(batch, committed)
        return True

    @contextlib.contextmanager
    def _answered_if_it_crashes(self, batch: list[_Request[Any]]) -> Iterator[None]:
        """A bug in the batch code itself: its callers are still answered, then it surfaces."""
        try:
            yield
        except BaseException:
            self._fail_batch(batch, "the writer failed unexpectedly")
            self._settle(batch)
            raise

    def _batch_done(self, batch: list[_Request[Any]], committed: bool) -> None:
        """Count a finished batch and wake its callers (no checkpoint: nothing can interrupt
        it, so no caller is left waiting)."""
        if committed:
            self._commits += 1
            self._wal_estimate += sum(request.size for request in batch) + _PAGE * len(batch)
        self._settle(batch)

    def _take_batch(
        self, first: _Request[Any] | None, receive: trio.MemoryReceiveChannel[_Request[Any]]
    ) -> list[_Request[Any]]:
        """``first`` plus the requests queued right now, minus those whose caller left, up to
        ``_BATCH_BYTES`` of payload (the rest waits for the next batch: an urgent write then
        waits for one bounded batch at most)."""
        batch = [] if first is None or first.abandoned else [first]
        size = first.size if first is not None else 0
        while size < _BATCH_BYTES:
            try:
                request = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return batch
            if not request.abandoned:
                batch.append(request)
                size += request.size
        return batch

    def _take_urgent(self) -> list[_Request[Any]]:
        urgent = [request for request in self._urgent if not request.abandoned]
        self._urgent.clear()
        return urgent

    async def _write_urgent(self) -> None:
        while self._urgent:
            await self._write_batch(self._take_urgent())

    async def _write_batch(self, batch: list[_Request[Any]]) -> None:
        """The writer task's part: apply ``batch`` (one thread call), then wake every caller."""
        if not batch:
            return
        # Shielded: once taken from the queue, a batch is always applied and settled (the
        # thread call itself cannot be abandoned; this also covers its entry checkpoint).
        with self._answered_if_it_crashes(batch), trio.CancelScope(shield=True):
            committed = await _in_worker_thread(
                functools.partial(self._apply_batch, batch), self._write_limiter
            )
        # No checkpoint from here on: a cancellation cannot leave callers waiting forever.
        self._batch_done(batch, committed)
        if self._wal_estimate >= _CHECKPOINT_BYTES:
            self._wal_estimate = 0
            with trio.CancelScope(shield=True):
                await _in_worker_thread(self._checkpoint_sync, self._write_limiter)

    def _checkpoint_sync(self) -> None:
        """Copy the WAL into the database file (PASSIVE: never waits for readers). Runs in a
        worker thread: it writes and syncs the database file. Its failure is not an error of
        any write (SQLite retries at the next checkpoint)."""
        conn = self._writer
        if conn is None:
            return
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _apply_batch(self, batch: list[_Request[Any]]) -> bool:
        """THE apply function: ``batch`` in one transaction on the writer connection. Runs in
        a worker thread, holding the writer's limiter. Returns whether it committed; every
        request has its value or error afterwards."""
        conn = self._writer
        if conn is None:
            self._fail_batch(batch, "the store is closed")
            return False
        self._before_batch(conn)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_batch(batch, f"could not begin a transaction: {exc}", exc)
            return False
        # A lone request needs no savepoint: if it fails, the whole transaction is rolled back.
        savepoints = len(batch) > 1
        for request in batch:
            self._apply_one(conn, request, savepoints)
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (SQLITE_FULL, IOERR ...).
                self._fail_batch(batch, "the transaction was rolled back by SQLite")
                return False
        if all(request.error is not None for request in batch):
            self._rollback(conn)
            return False
        try:
            self._commit(conn)
        except sqlite3.Error as exc:
            self._rollback(conn)
            self._fail_batch(
                batch, f"the commit of a batch of {len(batch)} writes failed: {exc}", exc
            )
            return False
        return True

    def _before_batch(self, conn: sqlite3.Connection) -> None:
        """Called before each batch's transaction, in the worker thread that applies it. The
        seam for fault injection: a test subclass changes the writer connection here (a page
        limit, as a full disk)."""

    def _commit(self, conn: sqlite3.Connection) -> None:
        """COMMIT the batch's transaction. The seam for fault injection: a test subclass
        overrides it to make commits fail the way a full disk does (see
        ``tests/store/_faults.py``)."""
        conn.execute("COMMIT")

    @staticmethod
    def _apply_one(conn: sqlite3.Connection, request: _Request[Any], savepoint: bool) -> None:
        """Run one request, in its own savepoint if ``savepoint``: its failure undoes only its
        own changes (without one, the caller rolls the transaction back)."""
        try:
            if savepoint:
                conn.execute("SAVEPOINT request")
            request.value = request.apply(conn)
            if savepoint:
                conn.execute("RELEASE request")
        except Exception as exc:
            if isinstance(exc, ActorError):
                request.error = exc
            else:
                request.error = StoreError(f"{request.operation} failed: {exc}")
                request.error.__cause__ = exc
            if savepoint and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO request")
                    conn.execute("RELEASE request")

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    @staticmethod
    def _fail_batch(
        batch: list[_Request[Any]], reason: str, cause: BaseException | None = None
    ) -> None:
        for request in batch:
            request.value = None
            request.error = StoreError(f"{request.operation} failed: {reason}")
            request.error.__cause__ = cause

    def _settle(self, batch: list[_Request[Any]]) -> None:
        """Count the outcome of every request of a finished batch and wake its caller."""
        for request in batch:
            if request.error is None:
                self._writes += 1
                self._actors += request.actor_delta
            elif isinstance(request.error, StaleGeneration):
                self._stale_writes += 1
            elif isinstance(request.error, StoreError):
                self._write_errors += 1
            request.done.set()

    # -- reads ---------------------------------------------------------------------------------

    async def get_by_key(self, name: str, key: str) -> ActorRecord | None:
        """The actor with this name and key, or None."""

        def query(conn: sqlite3.Connection) -> ActorRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM actors WHERE name = ? AND key = ?", (name, key)
            ).fetchone()
            return None if row is None else _record(row)

        return await self._read("get_by_key", query)

    async def get_by_id(self, actor_id: str) -> ActorRecord | None:
        """The actor with this id, or None."""

        def query(conn: sqlite3.Connection) -> ActorRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM actors WHERE actor_id = ?", (actor_id,)
            ).fetchone()
            return None if row is None else _record(row)

        return await self._read("get_by_id", query)

    async def list_alarms(self, actor_id: str) -> list[AlarmRecord]:
        """The actor's alarms, earliest first."""

        def query(conn: sqlite3.Connection) -> list[AlarmRecord]:
            rows = conn.execute(
                f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE actor_id = ? ORDER BY due, alarm_id",
                (actor_id,),
            ).fetchall()
            return [_alarm(row) for row in rows]

        return await self._read("list_alarms", query)

    async def next_alarms(self, limit: int) -> list[AlarmRecord]:
        """The ``limit`` alarms due first (an index range scan), earliest first."""

        def query(conn: sqlite3.Connection) -> list[AlarmRecord]:
            rows = conn.execute(
                f"SELECT {_ALARM_COLUMNS} FROM alarms ORDER BY due, alarm_id LIMIT ?", (limit,)
            ).fetchall()
            return [_alarm(row) for row in rows]

        return await self._read("next_alarms", query)

    async def list_actors(
        self, search: str = "", offset: int = 0, limit: int = 50
    ) -> tuple[int, list[ActorRecord]]:
        """A page of the actors in the database, ordered by name and key (the ``(name, key)``
        index; see ``Store.list_actors``). A search is a scan: for an operator's view."""
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = (
            " WHERE name LIKE ?1 ESCAPE '\\' OR key LIKE ?1 ESCAPE '\\'"
            " OR actor_id LIKE ?1 ESCAPE '\\'"
            if search
            else ""
        )
        args: tuple[Any, ...] = (pattern,) if search else ()

        def query(conn: sqlite3.Connection) -> tuple[int, list[ActorRecord]]:
            total = cast(
                int, conn.execute(f"SELECT count(*) FROM actors{where}", args).fetchone()[0]
            )
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM actors{where} ORDER BY name, key LIMIT ?{len(args) + 1}"
                f" OFFSET ?{len(args) + 2}",
                (*args, max(0, limit), max(0, offset)),
            ).fetchall()
            return total, [_record(row) for row in rows]

        return await self._read("list_actors", query)

    async def count(self) -> int:
        """Number of actors in the database (an exact ``count(*)``)."""

        def query(conn: sqlite3.Connection) -> int:
            return cast(int, conn.execute("SELECT count(*) FROM actors").fetchone()[0])

        return await self._read("count", query)

    def exists_nowait(self, actor_id: str) -> bool:
        """Whether the actor exists: a primary-key point read on the probe connection."""
        return self._probe_exists(
            "exists_nowait", "SELECT 1 FROM actors WHERE actor_id = ?", (actor_id,)
        )

    def key_exists_nowait(self, name: str, key: str) -> bool:
        """Whether an actor ``(name, key)`` exists: a unique-index point read on the probe
        connection."""
        return self._probe_exists(
            "key_exists_nowait", "SELECT 1 FROM actors WHERE name = ? AND key = ?", (name, key)
        )

    def _probe_exists(self, operation: str, query: str, params: tuple[str, ...]) -> bool:
        """Whether ``query`` finds a row, read synchronously on the probe connection."""
        with self._probe_lock, _map_sqlite_errors(operation):
            if self._probe is None:
                raise StoreError(f"{operation} failed: the store is not running")
            return self._probe.execute(query, params).fetchone() is not None

    async def _read(self, operation: str, query: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._reader
        if conn is None:
            raise StoreError(f"{operation} failed: the store is not running")

        def run_query() -> _T:
            with _map_sqlite_errors(operation):
                return query(conn)

        return await _in_worker_thread(run_query, self._read_limiter)

    def statistics(self) -> StoreStatistics:
        """Counters for observability (see the class docstring)."""
        return StoreStatistics(
            actors=self._actors,
            writes=self._writes,
            commits=self._commits,
            write_errors=self._write_errors,
            stale_writes=self._stale_writes,
        )
