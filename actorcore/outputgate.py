"""The output gate: outputs wait until the state they may depend on is durable.

An actor with ``ActorOptions.durable_outputs`` on a durable store has one gate (on its
:class:`~actorcore.generation.ActorEntry`). Every output to a protocol connection (an answer,
an event, a message) takes a *ticket*: the number of the first save that begins after it was
made. The connection's writer sends it only once that save has committed. Saves are numbered
when they begin, before the state is encoded, so a save covers every output whose ticket is not
above its number; and since the saves of many actors are group-committed by the store, a burst
of outputs costs one transaction, not one each.

The gate does no I/O: the actor's current generation runs the saves (it is told through
``request_save``) and reports them with :meth:`OutputGate.begin_save` / :meth:`OutputGate.saved`.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

__all__ = ["OutputGate", "OutputGateStatistics"]


@attrs.frozen
class OutputGateStatistics:
    """Counters of one gate."""

    tickets: int
    """Outputs that took a ticket."""
    saves: int
    """Saves that committed (each released every output with a ticket up to its number)."""
    waiting: bool
    """Outputs wait for a save now."""


@attrs.define(eq=False)
class OutputGate:
    """One actor's output gate (see the module docstring)."""

    _begun: int = 0
    """Saves begun (the number of the latest)."""
    _durable: int = 0
    """The number of the latest save that committed."""
    _wanted: int = 0
    """The highest ticket handed out."""
    _released: trio.Event | None = None
    """Set at the next commit that releases something (made on first wait)."""
    _tickets: int = 0
    _saves: int = 0
    request_save: Callable[[], None] | None = None
    """The running generation's way to start a save (None while none runs: the next one
    saves at its start)."""

    def ticket(self) -> int:
        """A ticket for an output made now; a save is requested if none covers it yet."""
        ticket = self._begun + 1
        self._tickets += 1
        if ticket > self._wanted:
            self._wanted = ticket
            if self.request_save is not None:
                self.request_save()
        return ticket

    def passed(self, ticket: int) -> bool:
        """Whether an output with ``ticket`` may go out."""
        return ticket <= self._durable

    @property
    def waiting(self) -> bool:
        """Some ticket is not covered by a committed save yet."""
        return self._wanted > self._durable

    async def wait(self, ticket: int) -> None:
        """Wait until an output with ``ticket`` may go out (the caller bounds the wait)."""
        while ticket > self._durable:
            if self._released is None:
                self._released = trio.Event()
            await self._released.wait()
        await trio.lowlevel.checkpoint_if_cancelled()

    def begin_save(self) -> int:
        """A save begins: call it right before the state is encoded (no checkpoint in between).
        Returns its number."""
        self._begun += 1
        return self._begun

    def saved(self, number: int) -> None:
        """The save ``number`` committed: outputs with tickets up to it may go out."""
        if number <= self._durable:
            return
        self._durable = number
        self._saves += 1
        released = self._released
        if released is not None:
            self._released = None
            released.set()

    def statistics(self) -> OutputGateStatistics:
        """Counters of this gate."""
        return OutputGateStatistics(tickets=self._tickets, saves=self._saves, waiting=self.waiting)
