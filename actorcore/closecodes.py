"""The close-code table: every close frame actorcore sends, in one place.

Reasons are ASCII machine codes of at most 123 bytes, the same strings as the ``code`` of the
matching :class:`~actorcore.ActorError`, so a client can branch on either. The reconnect contract
each code carries is documented in ``docs/close-codes.md`` and followed by
:mod:`actorcore.client`.
"""

from __future__ import annotations

from typing import Final

import attrs

from .errors import (
    ActorDestroyed,
    ActorError,
    ActorNotFound,
    ActorOverloaded,
    ActorReadyTimeout,
    ActorStartFailed,
    ActorStopping,
    Forbidden,
    InvalidMessage,
    MessageTooLarge,
    ResumeRefused,
    RuntimeShutdown,
)

__all__ = [
    "ACTOR_DESTROYED",
    "ACTOR_SLEEPING",
    "FORBIDDEN",
    "INTERNAL_ERROR",
    "INVALID_MESSAGE",
    "MESSAGE_INCOMPLETE",
    "MESSAGE_TOO_LARGE",
    "NORMAL",
    "NOT_FOUND",
    "OVERLOADED",
    "READY_TIMEOUT",
    "RESUME_REFUSED",
    "RESUME_TAKEN_OVER",
    "RUNTIME_SHUTDOWN",
    "START_FAILED",
    "CloseCode",
    "for_error",
]


@attrs.frozen
class CloseCode:
    """A close frame: WebSocket status code and ASCII reason."""

    code: int
    reason: str

    def __attrs_post_init__(self) -> None:
        if not self.reason.isascii() or len(self.reason.encode()) > 123:
            raise ValueError(f"close reason must be ASCII and <= 123 bytes: {self.reason!r}")


NORMAL: Final = CloseCode(1000, "")
"""An ordinary close (the actor or the client chose to close)."""
ACTOR_SLEEPING: Final = CloseCode(1001, "actor.sleeping")
"""The actor's sleep finalized; a non-hibernatable connection ends. Reconnect at once."""
ACTOR_DESTROYED: Final = CloseCode(1000, "actor.destroyed")
"""The actor was destroyed, or a connect reached a destroying/destroyed actor. Do not reconnect."""
NOT_FOUND: Final = CloseCode(1008, "actor.not_found")
"""Unknown actor name or id, or a malformed route. Do not reconnect."""
FORBIDDEN: Final = CloseCode(1008, "auth.forbidden")
"""``on_before_connect`` raised Forbidden (its message may replace the reason)."""
READY_TIMEOUT: Final = CloseCode(1013, "actor.ready_timeout")
"""The actor was not ready within ``ready_timeout``. Reconnect with backoff."""
START_FAILED: Final = CloseCode(1011, "actor.start_failed")
"""``on_wake``/``on_create`` raised."""
RUNTIME_SHUTDOWN: Final = CloseCode(1012, "runtime.shutdown")
"""The registry is draining (process shutdown). Reconnect with jittered backoff."""
INTERNAL_ERROR: Final = CloseCode(1011, "actor.internal_error")
"""A hook raised for this connection."""
MESSAGE_TOO_LARGE: Final = CloseCode(1009, "message.too_large")
"""A message was larger than ``max_message_size``."""
INVALID_MESSAGE: Final = CloseCode(1008, "protocol.invalid_message")
"""A malformed protocol frame (or params)."""
MESSAGE_INCOMPLETE: Final = CloseCode(1008, "message.incomplete")
"""A fragmented message did not finish within the server's ``fragment_timeout``."""
OVERLOADED: Final = CloseCode(1013, "actor.overloaded")
"""The hibernation buffer (or another bounded queue) is full. Reconnect with backoff."""

RESUME_REFUSED: Final = CloseCode(4001, "resume.not_found")
"""A ``?resume=TOKEN`` connect was refused; the reason is the :class:`ResumeRefused` code
(``resume.invalid``, ``resume.wrong_actor``, ``resume.not_found``, ``resume.expired``).
Connect again without ``resume``."""
RESUME_TAKEN_OVER: Final = CloseCode(4002, "resume.taken_over")
"""Another socket resumed this connection (this one was probably half-open). Do not
reconnect."""

#: Close codes after which a resumable connection ends for good (its client does not come
#: back); after any other close it is detached and may be resumed.
FINAL_CODES: Final = frozenset({1000, 1001, 1008, 1009, 1011, 4002})

_BY_ERROR: Final[dict[type[ActorError], CloseCode]] = {
    ActorDestroyed: ACTOR_DESTROYED,
    ActorStopping: ACTOR_SLEEPING,
    ActorNotFound: NOT_FOUND,
    ActorReadyTimeout: READY_TIMEOUT,
    ActorStartFailed: START_FAILED,
    RuntimeShutdown: RUNTIME_SHUTDOWN,
    MessageTooLarge: MESSAGE_TOO_LARGE,
    InvalidMessage: INVALID_MESSAGE,
    ActorOverloaded: OVERLOADED,
}


def for_error(error: ActorError) -> CloseCode:
    """The close frame for an error that ends a connection (unknown errors: 1011)."""
    if isinstance(error, Forbidden):
        reason = error.message if error.message != error.code else FORBIDDEN.reason
        reason = reason.encode("ascii", "replace").decode()[:123]
        return CloseCode(FORBIDDEN.code, reason)
    if isinstance(error, ResumeRefused):
        return CloseCode(RESUME_REFUSED.code, error.code)
    for cls in type(error).__mro__:
        close = _BY_ERROR.get(cls)
        if close is not None:
            return close
    return INTERNAL_ERROR
