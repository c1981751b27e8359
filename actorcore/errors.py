"""Typed errors of actorcore.

Every error a caller can see is an :class:`ActorError`. Each carries a machine-readable
``code`` (``"actor.stopping"``), a ``retryable`` flag that says whether the same request may
succeed if sent again, and a human message. The wire protocol sends exactly these three fields,
so a client can act on an error without parsing text.

Library exceptions (``sqlite3.Error``, ``trio_websocket.ConnectionClosed`` ...) are translated
into these at module boundaries; they never leak to users.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ActionNotFound",
    "ActionTimeout",
    "ActorDestroyed",
    "ActorError",
    "ActorNotFound",
    "ActorOverloaded",
    "ActorReadyTimeout",
    "ActorStartFailed",
    "ActorStopping",
    "DefinitionError",
    "Forbidden",
    "InternalError",
    "InvalidMessage",
    "LifecycleError",
    "MessageTooLarge",
    "ResumeRefused",
    "RuntimeShutdown",
    "ScheduleError",
    "ScheduleLimit",
    "StaleGeneration",
    "StateError",
    "StoreError",
    "SubscriptionLimit",
    "UserError",
]


class ActorError(Exception):
    """Base of every error actorcore raises to its callers.

    Subclasses fix ``code`` and ``retryable`` as class attributes; an instance may override
    ``code`` (used by :class:`UserError` and :class:`Forbidden`).
    """

    code: ClassVar[str] = "actor.error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        if code is not None:
            # An instance attribute shadows the ClassVar on purpose: UserError codes are dynamic.
            self.__dict__["code"] = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def to_wire(self) -> dict[str, object]:
        """The ``code``/``message``/``retryable`` fields sent in a protocol error frame."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class ActorNotFound(ActorError):
    """No actor with this name, key or id exists (or it was destroyed)."""

    code = "actor.not_found"


class ActorDestroyed(ActorNotFound):
    """The actor is being destroyed or was destroyed; the request was refused.

    A subclass of :class:`ActorNotFound`: to a caller, a destroyed actor is one that is gone.
    """

    code = "actor.destroyed"


class ActorStopping(ActorError):
    """Work was cut off because the actor's generation finalized; send it again."""

    code = "actor.stopping"
    retryable = True


class ActorReadyTimeout(ActorError):
    """The actor did not become ready within its ``ready_timeout``."""

    code = "actor.ready_timeout"
    retryable = True


class ActorStartFailed(ActorError):
    """``create_state``, ``on_create`` or ``on_wake`` raised; the next request starts afresh."""

    code = "actor.start_failed"
    retryable = True


class ActorOverloaded(ActorError):
    """A bounded buffer (held work, hibernation buffer, connection limit) is full."""

    code = "actor.overloaded"
    retryable = True


class ActionTimeout(ActorError):
    """An action ran longer than its ``action_timeout`` and was cancelled."""

    code = "actor.action_timeout"


class SubscriptionLimit(ActorError):
    """A protocol connection asked for more subscriptions than ``max_subscriptions``: sent as
    an ``error`` frame (``id`` null); the connection stays open, the event is not added."""

    code = "subscription.limit"


class ScheduleError(ActorError):
    """``ctx.schedule`` was asked for an alarm it cannot keep: a time that is not a finite
    number, or arguments that are not JSON. Nothing was scheduled."""

    code = "schedule.invalid"


class ScheduleLimit(ScheduleError):
    """An alarm would pass a limit of its actor (``max_alarms`` pending alarms, or
    ``max_alarm_args_size`` bytes of arguments). Nothing was scheduled."""

    code = "schedule.limit"


class StateError(ActorError):
    """The actor's state could not be serialised (it must be JSON-serialisable)."""

    code = "actor.state_error"


class ActionNotFound(ActorError):
    """The actor has no action with this name."""

    code = "actor.action_not_found"


class InternalError(ActorError):
    """User code raised something that is not a :class:`UserError`; details are only logged."""

    code = "actor.internal_error"


class UserError(ActorError):
    """Raise from an action to send the caller a chosen ``code`` and message.

    Any other exception raised by an action reaches in-process callers unchanged, but protocol
    clients only see ``actor.internal_error`` (the details stay in the server log).
    """

    code = "user.error"


class Forbidden(ActorError):
    """Raise from ``on_before_connect`` to refuse a connection (close 1008)."""

    code = "auth.forbidden"


class InvalidMessage(ActorError):
    """A protocol frame was malformed."""

    code = "protocol.invalid_message"


class MessageTooLarge(ActorError):
    """A message exceeded ``max_message_size``."""

    code = "message.too_large"


class ResumeRefused(ActorError):
    """A ``?resume=TOKEN`` connect was refused (close 4001): the token is malformed
    (``resume.invalid``), names another actor (``resume.wrong_actor``), names no connection
    (``resume.not_found``) or one detached too long (``resume.expired``). Connect again
    without it; actions sent before without an answer have an unknown outcome."""

    code = "resume.not_found"


class RuntimeShutdown(ActorError):
    """The registry is draining or closed and takes no new work."""

    code = "runtime.shutdown"
    retryable = True


class StoreError(ActorError):
    """The store failed (disk full, database locked ...). The actor keeps its in-memory state."""

    code = "store.error"
    retryable = True


class StaleGeneration(StoreError):
    """A write came from a generation that is no longer the actor's current one (fencing)."""

    code = "store.stale_generation"
    retryable = False


class SaveTimeout(StoreError):
    """An action ran, but the save its answer waits for (the output gate,
    ``durable_outputs``) did not commit in time: its outcome is unknown, so it is not
    retryable as is (HTTP 503)."""

    code = "store.save_timeout"
    retryable = False


class LifecycleError(ActorError):
    """An event is not allowed in the current lifecycle state (a bug, never a user input)."""

    code = "actor.lifecycle_error"


class DefinitionError(TypeError):
    """An actor class is defined wrongly (checked when the class is registered)."""
