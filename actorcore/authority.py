"""The lifecycle authority: who grants sleep, wake and destroy, and who may command them.

Every decision to sleep, wake or destroy an actor goes through one authority object, as a
:class:`LifecycleRequest` that says which actor (id, name, key), which of its generations, what
and why. The local authority grants each request at once. A multi-node deployment plugs in
another one that forwards requests to an external engine (the Rivet engine, for example) and
applies the engine's decisions when they arrive; the registry does not change.

An authority can also **command**: when the registry starts it calls the authority's
``attach(commands)`` (if it has one) with a :class:`LifecycleCommands`, through which the
authority puts an actor to sleep, destroys it, wakes it or moves it away, without being asked.

Grants are re-checked when they arrive: a sleep granted for a generation that has already
ended is dropped, and an idle sleep granted after the actor became busy again is dropped too
(the idle request is re-issued after the next ``sleep_timeout`` of idleness).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs

from .lifecycle import LifecycleEvent

__all__ = ["LifecycleAuthority", "LifecycleCommands", "LifecycleRequest", "LocalAuthority"]


@attrs.frozen
class LifecycleRequest:
    """What the registry asks its authority for."""

    actor_id: str
    name: str
    """The actor definition's route name."""
    key: str
    generation: int
    """The actor's last generation when the request was made (0: never started here)."""
    event: LifecycleEvent
    """SLEEP, DESTROY or WAKE."""
    reason: str
    """Why: ``"idle"``, ``"ctx.sleep"``, ``"ctx.destroy"``, ``"registry.sleep"``,
    ``"registry.destroy"``, ``"drain"``, ``"work arrived"``, ``"work was waiting"`` ..."""


class LifecycleCommands(Protocol):
    """What an authority may command (``attach`` receives the registry's). Each returns once
    the command is applied (the transition has begun), not when it has finished."""

    async def sleep(self, actor_id: str, reason: str) -> None:
        """Put the actor to sleep (a no-op if it is not awake)."""
        ...

    async def destroy(self, actor_id: str, reason: str) -> None:
        """Destroy the actor (waking it so that ``on_destroy`` runs)."""
        ...

    async def wake(self, actor_id: str, reason: str) -> None:
        """Start a generation of the actor if it is asleep (it then idles as usual)."""
        ...

    async def move_away(self, actor_id: str, reason: str) -> None:
        """Put the actor to sleep here because it is to run elsewhere: like :meth:`sleep`,
        logged as a move (its connections get 1001 ``actor.sleeping`` and reconnect)."""
        ...


class LifecycleAuthority(Protocol):
    """Grants lifecycle requests. ``apply`` performs the transition once granted.

    An authority that commands also has ``attach(commands: LifecycleCommands) -> None``,
    called once when the registry starts.
    """

    def request(self, request: LifecycleRequest, apply: Callable[[], None]) -> None:
        """Ask for ``request.event`` on an actor; call ``apply`` (once) when granted. Never
        granted: nothing happens (an idle sleep is asked again later)."""
        ...


class LocalAuthority:
    """The single-process authority: every request is granted immediately."""

    __slots__ = ()

    def request(self, request: LifecycleRequest, apply: Callable[[], None]) -> None:
        """Grant at once."""
        apply()
