"""The lifecycle authority: who grants sleep, wake and destroy.

Every decision to sleep, wake or destroy an actor goes through one authority object. The local
authority grants each request at once. A multi-node deployment would plug in another one that
forwards requests to an external engine (the Rivet engine, for example) and applies the engine's
commands when they arrive; the registry does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .lifecycle import LifecycleEvent

__all__ = ["LifecycleAuthority", "LocalAuthority"]


class LifecycleAuthority(Protocol):
    """Grants lifecycle requests. ``apply`` performs the transition once granted."""

    def request(
        self, actor_id: str, generation: int, event: LifecycleEvent, apply: Callable[[], None]
    ) -> None:
        """Ask for ``event`` (SLEEP, DESTROY or WAKE) on an actor; call ``apply`` when granted."""
        ...


class LocalAuthority:
    """The single-process authority: every request is granted immediately."""

    __slots__ = ()

    def request(
        self, actor_id: str, generation: int, event: LifecycleEvent, apply: Callable[[], None]
    ) -> None:
        """Grant at once."""
        apply()
