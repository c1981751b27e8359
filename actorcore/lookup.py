"""``ctx.actors``: the registry's lookup of actors, from inside an actor.

An actor reaches another (or itself) the way in-process code does, with the same
:class:`~actorcore.ActorHandle`: ``counter = await ctx.actors.get_or_create("counter", "k")``
then ``await counter.call("increment")``. There is nothing module-level to import, so actors
of two registries in one process never reach each other by mistake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .registry import ActorHandle, Registry

__all__ = ["ActorLookup"]


class ActorLookup:
    """Finds actors of one registry (see the module docstring)."""

    __slots__ = ("_registry",)

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def get_or_create(self, name: str, key: str, input: Any = None) -> ActorHandle:
        """The actor ``name``/``key``, created (with ``input``) if it does not exist, and
        started (as :meth:`actorcore.Registry.get_or_create`)."""
        return await self._registry.get_or_create(name, key, input)

    async def get(self, name: str, key: str) -> ActorHandle:
        """The existing actor ``name``/``key`` (not woken); ActorNotFound if none."""
        return await self._registry.get(name, key)

    async def get_by_id(self, actor_id: str) -> ActorHandle:
        """The existing actor with this id (not woken); ActorNotFound if none."""
        return await self._registry.get_by_id(actor_id)
