"""``ctx.schedule``: an actor asks to have one of its actions called later, even asleep.

Alarms are kept in the store beside the actor's state, so they survive sleep and restarts; the
registry's :class:`~actorcore.alarms.AlarmTimer` runs each one when it falls due, waking its
actor if needed. See ``docs/schedule.md`` for the rules (at-least-once, retries, limits).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from . import jsoncodec
from .errors import ScheduleError

if TYPE_CHECKING:
    from .generation import Generation
    from .store.base import AlarmRecord

__all__ = ["Alarm", "Schedule"]


@attrs.frozen
class Alarm:
    """A pending alarm, as ``await ctx.schedule.list()`` reports it."""

    id: str
    """The id ``after``/``at`` returned."""
    action: str
    """The action it runs."""
    args: tuple[Any, ...]
    """The arguments it passes."""
    at: float
    """When it falls due (next), in seconds since the Unix epoch."""
    attempts: int
    """Runs of it that failed so far (it is retried with backoff)."""

    @classmethod
    def from_record(cls, record: AlarmRecord) -> Alarm:
        """The alarm a store record describes."""
        args = jsoncodec.loads(record.args)
        return cls(record.alarm_id, record.action, tuple(args), record.due, record.attempts)


class Schedule:
    """``ctx.schedule``: durable alarms of one actor. Every method is bound to the generation
    it was reached from; alarms outlive it."""

    __slots__ = ("_gen",)

    def __init__(self, gen: Generation) -> None:
        self._gen = gen

    async def after(self, seconds: float, action: str, *args: Any) -> str:
        """Run ``action(*args)`` on this actor ``seconds`` from now; return the alarm's id
        once it is persisted. Raises ActionNotFound, ScheduleError (a time that is not a
        finite number, arguments that are not JSON) or ScheduleLimit."""
        gen = self._gen
        alarms = gen.host.alarms
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ScheduleError(f"schedule.after takes seconds >= 0, not {seconds!r}")
        return await alarms.add(gen, alarms.now() + seconds, action, args)

    async def at(self, unix_time: float, action: str, *args: Any) -> str:
        """Run ``action(*args)`` on this actor at ``unix_time`` (seconds since the epoch; a
        time already past runs at once); return the alarm's id once it is persisted."""
        return await self._gen.host.alarms.add(self._gen, unix_time, action, args)

    async def cancel(self, alarm_id: str) -> bool:
        """Cancel a pending alarm of this actor; False if it has none with this id (it ran,
        was cancelled, or belongs to another actor)."""
        return await self._gen.host.alarms.cancel(self._gen, alarm_id)

    async def list(self) -> list[Alarm]:
        """This actor's pending alarms, earliest first."""
        records = await self._gen.host.alarms.list(self._gen)
        return [Alarm.from_record(record) for record in records]
