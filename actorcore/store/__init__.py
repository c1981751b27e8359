"""Stores: where actors and their state live while they sleep.

:class:`MemoryStore` keeps everything in the process, :class:`SQLiteStore` in one SQLite file.
Drive either with :func:`open_store`, or start ``store.run`` in a nursery you own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import trio

from actorcore.store.base import ActorRecord, AlarmRecord, Store, StoreStatistics
from actorcore.store.memory import MemoryStore
from actorcore.store.sqlite import SQLiteStore

__all__ = [
    "ActorRecord",
    "AlarmRecord",
    "MemoryStore",
    "SQLiteStore",
    "Store",
    "StoreStatistics",
    "open_store",
]

_S = TypeVar("_S", bound=Store)

_CLOSE_TIMEOUT = 30.0
"""Upper bound on ``aclose()`` when :func:`open_store` exits (stores bound their own flush)."""


@contextlib.asynccontextmanager
async def open_store(store: _S) -> AsyncIterator[_S]:
    """Run ``store`` for the duration of the block, then close it.

    Starts ``store.run`` in a nursery owned by this context manager when the store has one
    (otherwise awaits ``store.open()``), yields the store, and on exit awaits ``store.aclose()``
    (shielded, bounded) before cancelling whatever is left of ``run``. A single error, from
    opening the store or from the block, propagates unwrapped.
    """
    lone_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            run: Callable[..., Awaitable[object]] | None = getattr(store, "run", None)
            if run is not None:
                await nursery.start(run)
            else:
                await store.open()
            try:
                yield store
            finally:
                with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    await store.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery is an implementation detail: a lone error (from opening the store or
        # from the caller's block) propagates as itself, not wrapped in a group.
        if len(group.exceptions) != 1:
            raise
        lone_error = group.exceptions[0]
    if lone_error is not None:
        # Raised outside the handler so that its own context and traceback are kept.
        raise lone_error
