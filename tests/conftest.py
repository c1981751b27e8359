"""Shared fixtures. Timing tests use ``autojump_clock`` with the in-memory store; SQLite tests
use the real clock (threads and a jumping clock do not mix)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import actorcore

pytest_plugins = ["pytester"]


@pytest.fixture
def make_registry(
    nursery: trio.Nursery,
) -> Callable[..., Any]:
    """Start a registry in the test's nursery: ``registry = await make_registry([Actor])``."""

    async def start(actors: list[type[actorcore.Actor]], **kwargs: Any) -> actorcore.Registry:
        registry = actorcore.Registry(actors, **kwargs)
        await nursery.start(registry.run)
        return registry

    return start


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A fresh SQLite file path."""
    return tmp_path / "actors.db"


@pytest.fixture
async def memory_store() -> AsyncIterator[actorcore.MemoryStore]:
    """A MemoryStore (not closed by a registry: reusable across registry restarts)."""
    yield actorcore.MemoryStore()
