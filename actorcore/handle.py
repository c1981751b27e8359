"""ActorHandle: a reference to one actor, as in-process code and other actors hold it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .lifecycle import LifecycleState
    from .registry import Registry

__all__ = ["ActorHandle"]


@attrs.frozen
class ActorHandle:
    """A reference to one actor. Cheap to make; the actor wakes when work reaches it."""

    registry: Registry = attrs.field(repr=False)
    actor_id: str
    name: str
    key: str

    async def call(self, action: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``action`` on the actor and return its result (see :meth:`Registry.call`)."""
        return await self.registry.call(self.actor_id, action, *args, **kwargs)

    @property
    def lifecycle(self) -> LifecycleState | None:
        """The actor's current lifecycle state."""
        return self.registry.lifecycle(self.actor_id)
