"""actorcore's pytest plugin (loaded through the ``pytest11`` entry point when actorcore is
installed): a ``registry`` fixture that runs your actors for one test.

Override ``actorcore_actors`` (the actor classes) and, if you like, ``actorcore_store`` (a
fresh :class:`~actorcore.store.MemoryStore` by default) in your ``conftest.py``::

    @pytest.fixture
    def actorcore_actors():
        return [Counter, Chat]

    async def test_counter(registry, autojump_clock):
        counter = await registry.get_or_create("counter", "k")
        assert await counter.call("increment") == 1

The fixture is async: it needs pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio``).
The registry drains when the test ends, so state saves and hooks run as in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .actor import Actor
from .registry import Registry
from .store import MemoryStore, Store

__all__ = ["actorcore_actors", "actorcore_store", "registry"]


@pytest.fixture
def actorcore_actors() -> list[type[Actor]]:
    """The actor classes the ``registry`` fixture runs: override it in your conftest.py."""
    raise pytest.UsageError(
        "the registry fixture needs the actors to run: define an `actorcore_actors` fixture "
        "returning the actor classes (see actorcore.pytest_plugin)"
    )


@pytest.fixture
def actorcore_store() -> Store:
    """The store of the ``registry`` fixture: a fresh MemoryStore (override for SQLite)."""
    return MemoryStore()


@pytest.fixture
async def registry(
    actorcore_actors: list[type[Actor]], actorcore_store: Store
) -> AsyncIterator[Registry]:
    """A running :class:`~actorcore.Registry` of ``actorcore_actors`` on
    ``actorcore_store``, drained when the test ends."""
    async with Registry(actorcore_actors, actorcore_store) as running:
        yield running
