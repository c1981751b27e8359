"""Deadlines whose expiry is an actorcore error: the one place ``trio.TooSlowError`` is turned
into the typed error a caller sees (``ActorReadyTimeout``, ``ActorStopping``, ...)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import trio

from .errors import ActorError

__all__ = ["fail_after", "fail_at"]


@contextlib.contextmanager
def fail_at(deadline: float, error: Callable[[], ActorError]) -> Iterator[None]:
    """``trio.fail_at(deadline)``, raising ``error()`` instead of ``trio.TooSlowError``."""
    try:
        with trio.fail_at(deadline):
            yield
    except trio.TooSlowError:
        raise error() from None


def fail_after(
    seconds: float, error: Callable[[], ActorError]
) -> contextlib.AbstractContextManager[None]:
    """``trio.fail_after(seconds)``, raising ``error()`` instead of ``trio.TooSlowError``."""
    return fail_at(trio.current_time() + seconds, error)
