"""Fault injection for the SQLite store, in a test subclass (the production class has no
fault hooks): commits refused by SQLite itself, the way a full disk refuses them."""

from __future__ import annotations

import sqlite3
import threading

from actorcore.store import SQLiteStore


def _deny_commit(action: int, arg1: str | None, *_: str | None) -> int:
    """An authorizer that makes SQLite refuse to prepare COMMIT."""
    if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class CommitFailingSQLiteStore(SQLiteStore):
    """An SQLiteStore whose next ``fail_commits`` commits SQLite refuses (through an
    authorizer): the same rollback path as a disk-full or locked database. ``on_writer(sql)``
    runs ``sql`` on the writer connection before the next batch (``PRAGMA max_page_count``:
    a full disk)."""

    fail_commits: int = 0
    _lock = threading.Lock()  # commits run in worker threads
    _writer_sql: list[str] | None = None

    def on_writer(self, sql: str) -> None:
        """Run ``sql`` on the writer connection before its next batch."""
        with self._lock:
            if self._writer_sql is None:
                self._writer_sql = []
            self._writer_sql.append(sql)

    def _before_batch(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            pending, self._writer_sql = self._writer_sql or [], None
        for sql in pending:
            conn.execute(sql)

    def _commit(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            deny = self.fail_commits > 0
            if deny:
                self.fail_commits -= 1
        if not deny:
            super()._commit(conn)
            return
        conn.set_authorizer(_deny_commit)
        try:
            super()._commit(conn)
        finally:
            conn.set_authorizer(None)
