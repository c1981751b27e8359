"""ActorOptions: the per-definition knobs, with their defaults in one place."""

from __future__ import annotations

import math

import attrs

__all__ = ["ActorOptions"]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value > 0 and not math.isnan(value)):
        raise ValueError(f"ActorOptions.{attribute.name} must be > 0, got {value!r}")


def _positive_int(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"ActorOptions.{attribute.name} must be >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class ActorOptions:
    """Timeouts and limits of one actor definition. All durations are seconds of trio's clock."""

    sleep_timeout: float = attrs.field(default=30.0, validator=_positive)
    """Idle time before the actor sleeps; any activity re-arms it."""
    no_sleep: bool = False
    """Never sleep on idle (explicit ``sleep()`` and registry drain still apply)."""
    sleep_grace_period: float = attrs.field(default=15.0, validator=_positive)
    """One budget for ``on_sleep``/``on_destroy``, in-flight work, ``wait_until`` and
    ``keep_awake``. When it passes, what is left is cancelled and finalize begins."""
    ready_timeout: float = attrs.field(default=30.0, validator=_positive)
    """How long work and connections wait for the actor to become ready."""
    state_save_interval: float = attrs.field(default=1.0, validator=_positive)
    """At most one automatic state save per interval while the state changes."""
    hibernatable_websockets: bool = False
    """Raw WebSockets stay open while the actor sleeps (protocol connections always do)."""
    max_message_size: int = attrs.field(default=64 * 1024, validator=_positive_int)
    """Largest incoming WebSocket message, in bytes (characters for text)."""
    close_timeout: float = attrs.field(default=2.0, validator=_positive)
    """Bound on one WebSocket close handshake."""
    action_timeout: float = attrs.field(default=60.0, validator=_positive)
    """Bound on one action; a slower action is cancelled and its caller gets
    ``actor.action_timeout`` (``actor.stopping`` if the generation's grace deadline came first)."""
    hook_timeout: float = attrs.field(default=5.0, validator=_positive)
    """Bound on ``on_wake``, ``on_create`` and the connection hooks."""
    max_held_work: int = attrs.field(default=1000, validator=_positive_int)
    """Calls and connections that may wait for the next generation at once."""
    max_inflight_actions: int = attrs.field(default=256, validator=_positive_int)
    """Actions one protocol connection may have running at once; a client that sends more
    without waiting for results is closed with 1013 ``actor.overloaded``."""
    max_subscriptions: int = attrs.field(default=1024, validator=_positive_int)
    """Events one protocol connection may subscribe to; a subscribe past it is answered with
    an ``error`` frame, code ``subscription.limit`` (the connection stays open)."""
    durable_outputs: bool = True
    """Hold every reply, event and message to a protocol connection until the state it may
    depend on is durable in the store (one group-committed transaction with the connection's
    record of answers), so no client sees a result a crash could undo. Applies with a
    durable store (SQLite); see ``docs/zero-loss.md``."""
    resume_timeout: float = attrs.field(default=300.0, validator=_positive)
    """How long a protocol connection whose socket went away without a close can be resumed
    (``?resume=TOKEN``); then it ends and ``on_disconnect`` runs."""
    max_unacked_outputs: int = attrs.field(default=256, validator=_positive_int)
    """Outputs (answers, events, messages) one protocol connection keeps until its client
    acknowledges them, to send again after a resume; the oldest go beyond it."""
    max_detached_conns: int = attrs.field(default=1024, validator=_positive_int)
    """Detached (resumable) connections one actor keeps; beyond it the longest detached one
    ends at once."""
    hibernation_buffer: int = attrs.field(default=256, validator=_positive_int)
    """Messages one hibernatable connection may buffer while its actor sleeps; beyond it the
    connection closes with 1013 ``actor.overloaded``."""
    serial: bool = False
    """Run one action or raw-message handler at a time, in arrival order, across every
    connection, in-process call and alarm (a *turn* each); a call that re-enters the actor
    from within its own turn (A -> B -> A) runs as part of that turn. See
    ``docs/serial.md``."""
    max_alarms: int = attrs.field(default=1000, validator=_positive_int)
    """Pending alarms (``ctx.schedule``) one actor may hold; one more raises
    :class:`~actorcore.ScheduleLimit`."""
    max_alarm_args_size: int = attrs.field(default=64 * 1024, validator=_positive_int)
    """Largest JSON encoding of one alarm's arguments, in bytes; a larger one raises
    :class:`~actorcore.ScheduleLimit`."""
    alarm_max_attempts: int = attrs.field(default=5, validator=_positive_int)
    """Runs of an alarm's action that may fail before the alarm is dropped (and logged with
    its error)."""
    alarm_retry_delay: float = attrs.field(default=1.0, validator=_positive)
    """Delay before an alarm whose action failed runs again; doubled after every failure,
    up to ``alarm_retry_max_delay``."""
    alarm_retry_max_delay: float = attrs.field(default=60.0, validator=_positive)
    """Upper bound on the delay between two runs of a failing alarm."""
