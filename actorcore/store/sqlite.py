"""The SQLite :class:`~actorcore.store.base.Store`: one file, WAL mode, group commit.

Three connections, each used by one thread at a time:

* the **writer**, used only by the task running :meth:`SQLiteStore.run`. Writes are queued on a
  bounded trio memory channel; the writer takes every request currently queued and applies them
  in ONE worker-thread call and ONE transaction (group commit), so many concurrent saves cost
  one thread hop and one fsync-free WAL commit (``synchronous=NORMAL``). Each request runs in
  its own savepoint and gets its own result or error; only a failed COMMIT fails the whole
  batch (it is rolled back and the next batch starts clean).
* the **reader** (``query_only``), for :meth:`~SQLiteStore.get_by_key`,
  :meth:`~SQLiteStore.get_by_id` and :meth:`~SQLiteStore.count`, serialized by its own
  ``trio.CapacityLimiter(1)``. In WAL mode it never blocks the writer and sees every committed
  write.
* the **probe** (``query_only``), for the synchronous :meth:`~SQLiteStore.exists_nowait`,
  guarded by a ``threading.Lock``.

Every ``sqlite3.Error`` becomes :class:`~actorcore.errors.StoreError` naming the operation.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, cast

import attrs
import trio

from actorcore.errors import ActorError, ActorNotFound, StaleGeneration, StoreError
from actorcore.store.base import ActorRecord, Store, StoreStatistics

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 1
"""Version stored in the ``meta`` table; a file with another version is refused."""

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
"""

_COLUMNS = "actor_id, name, key, generation, initialized, state, input"

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


def _deny_commit(action: int, arg1: str | None, *_: str | None) -> int:
    """Authorizer that makes SQLite refuse to prepare COMMIT (the ``fail_commits`` hook)."""
    if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


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


@attrs.define(eq=False)
class _Request(Generic[_T]):
    """One queued write: a function run on the writer connection inside the batch transaction."""

    operation: str
    apply: Callable[[sqlite3.Connection], _T]
    actor_delta: int = 0
    """Change of the actor count once this write commits."""
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

    _path: str | os.PathLike[str]
    _max_pending: int = attrs.field(default=1024, kw_only=True)
    """Capacity of the write queue; senders wait (backpressure) when it is full."""
    _busy_timeout: float = attrs.field(default=5.0, kw_only=True)
    """Seconds a connection waits for a lock held by another process."""
    _close_timeout: float = attrs.field(
        default=10.0, kw_only=True, validator=attrs.validators.gt(0)
    )
    """Seconds :meth:`aclose` (or cancellation of :meth:`run`) spends flushing queued writes."""

    fail_commits: int = attrs.field(default=0, kw_only=True)
    """Fault hook: the next ``fail_commits`` batches have their COMMIT refused by SQLite (through
    an authorizer), exercising the same rollback path as a disk-full or locked database."""

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
    _run_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _started: bool = attrs.field(default=False, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _stopped: trio.Event = attrs.field(factory=trio.Event, init=False)
    _actors: int = attrs.field(default=0, init=False)
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
                    await self._write_batch(self._take_batch(first, receive))
        finally:
            self._send = None
            send.close()
            # Each phase is shielded and bounded: flush what is queued, fail the rest, close.
            with trio.move_on_after(self._close_timeout, shield=True) as flush_scope:
                while not flush_scope.cancel_called and (batch := self._take_batch(None, receive)):
                    await self._write_batch(batch)
            while batch := self._take_batch(None, receive):
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
                if version != str(SCHEMA_VERSION):
                    raise StoreError(
                        f"open failed: schema version {version} is not supported "
                        f"(expected {SCHEMA_VERSION})"
                    )
                (self._actors,) = writer.execute("SELECT count(*) FROM actors").fetchone()
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

        def apply(conn: sqlite3.Connection) -> ActorRecord:
            try:
                conn.execute(
                    "INSERT INTO actors (actor_id, name, key, generation, initialized, state, "
                    "input, updated_at) VALUES (?, ?, ?, 0, 0, NULL, ?, ?)",
                    (actor_id, name, key, input, time.time()),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    f"create failed: actor name={name!r} key={key!r} (id {actor_id!r}) "
                    f"already exists ({exc})"
                ) from exc
            return ActorRecord(actor_id, name, key, 0, False, None, input)

        return await self._submit(_Request("create", apply, actor_delta=1))

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

        await self._submit(_Request("create_many", apply, actor_delta=len(rows)))

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
            return _record(rows[0])

        return await self._submit(_Request("begin_generation", apply))

    async def save(self, actor_id: str, generation: int, state: bytes) -> None:
        """Store ``state``, mark the actor initialized and drop its creation input. Fenced."""

        def apply(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE actors SET state = ?, initialized = 1, input = NULL, updated_at = ? "
                "WHERE actor_id = ? AND generation = ?",
                (state, time.time(), actor_id, generation),
            )
            if cursor.rowcount == 0:
                _refuse_stale(conn, "save", actor_id, generation)

        await self._submit(_Request("save", apply))

    async def delete(self, actor_id: str, generation: int) -> None:
        """Remove the actor and free its key. Fenced like :meth:`save`."""

        def apply(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "DELETE FROM actors WHERE actor_id = ? AND generation = ?", (actor_id, generation)
            )
            if cursor.rowcount == 0:
                _refuse_stale(conn, "delete", actor_id, generation)

        await self._submit(_Request("delete", apply, actor_delta=-1))

    async def _submit(self, request: _Request[_T]) -> _T:
        send = self._send
        if send is None:
            raise StoreError(f"{request.operation} failed: the store is not running")
        try:
            await send.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StoreError(f"{request.operation} failed: the store is closed") from None
        try:
            await request.done.wait()
        finally:
            if not request.done.is_set():
                request.abandoned = True
        return request.unwrap()

    def _take_batch(
        self, first: _Request[Any] | None, receive: trio.MemoryReceiveChannel[_Request[Any]]
    ) -> list[_Request[Any]]:
        """``first`` plus every request queued right now, minus those whose caller left."""
        batch = [] if first is None or first.abandoned else [first]
        while True:
            try:
                request = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return batch
            if not request.abandoned:
                batch.append(request)

    async def _write_batch(self, batch: list[_Request[Any]]) -> None:
        """Apply ``batch`` in one thread hop and one transaction, then wake every caller."""
        if not batch:
            return
        deny_commit = self.fail_commits > 0
        if deny_commit:
            self.fail_commits -= 1
        # Shielded: once taken from the queue, a batch is always applied and settled (the
        # thread call itself cannot be abandoned; this also covers its entry checkpoint).
        try:
            with trio.CancelScope(shield=True):
                committed = await trio.to_thread.run_sync(
                    self._write_batch_sync, batch, deny_commit, limiter=self._write_limiter
                )
        except BaseException:
            # A bug in the batch code itself: callers must still be answered, then it surfaces.
            self._fail_batch(batch, "the writer failed unexpectedly")
            self._settle(batch)
            raise
        # No checkpoint from here on: a cancellation cannot leave callers waiting forever.
        if committed:
            self._commits += 1
        self._settle(batch)

    def _write_batch_sync(self, batch: list[_Request[Any]], deny_commit: bool) -> bool:
        """Runs in a worker thread holding the write limiter. Returns whether it committed."""
        conn = self._writer
        if conn is None:
            self._fail_batch(batch, "the store is closed")
            return False
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_batch(batch, f"could not begin a transaction: {exc}", exc)
            return False
        for request in batch:
            self._apply_one(conn, request)
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (SQLITE_FULL, IOERR ...).
                self._fail_batch(batch, "the transaction was rolled back by SQLite")
                return False
        if all(request.error is not None for request in batch):
            self._rollback(conn)
            return False
        try:
            if deny_commit:
                conn.set_authorizer(_deny_commit)
            try:
                conn.execute("COMMIT")
            finally:
                if deny_commit:
                    conn.set_authorizer(None)
        except sqlite3.Error as exc:
            self._rollback(conn)
            self._fail_batch(
                batch, f"the commit of a batch of {len(batch)} writes failed: {exc}", exc
            )
            return False
        return True

    @staticmethod
    def _apply_one(conn: sqlite3.Connection, request: _Request[Any]) -> None:
        """Run one request in its own savepoint: its failure undoes only its own changes."""
        try:
            conn.execute("SAVEPOINT request")
            request.value = request.apply(conn)
            conn.execute("RELEASE request")
        except Exception as exc:
            if isinstance(exc, ActorError):
                request.error = exc
            else:
                request.error = StoreError(f"{request.operation} failed: {exc}")
                request.error.__cause__ = exc
            if conn.in_transaction:
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

    async def count(self) -> int:
        """Number of actors in the database (an exact ``count(*)``)."""

        def query(conn: sqlite3.Connection) -> int:
            return cast(int, conn.execute("SELECT count(*) FROM actors").fetchone()[0])

        return await self._read("count", query)

    def exists_nowait(self, actor_id: str) -> bool:
        """Whether the actor exists: a primary-key point read on the probe connection."""
        with self._probe_lock, _map_sqlite_errors("exists_nowait"):
            if self._probe is None:
                raise StoreError("exists_nowait failed: the store is not running")
            row = self._probe.execute(
                "SELECT 1 FROM actors WHERE actor_id = ?", (actor_id,)
            ).fetchone()
            return row is not None

    async def _read(self, operation: str, query: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._reader
        if conn is None:
            raise StoreError(f"{operation} failed: the store is not running")

        def run_query() -> _T:
            with _map_sqlite_errors(operation):
                return query(conn)

        return await trio.to_thread.run_sync(run_query, limiter=self._read_limiter)

    def statistics(self) -> StoreStatistics:
        """Counters for observability (see the class docstring)."""
        return StoreStatistics(
            actors=self._actors,
            writes=self._writes,
            commits=self._commits,
            write_errors=self._write_errors,
            stale_writes=self._stale_writes,
        )
