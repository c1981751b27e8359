"""ActorContext: what hooks and actions see of their actor and its current generation."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, cast

import trio
from typing_extensions import TypeVar

from .lifecycle import LifecycleState
from .schedule import Schedule

if TYPE_CHECKING:
    from .conn import Conn
    from .generation import Generation
    from .lookup import ActorLookup

__all__ = ["ActorContext", "StateT"]

StateT = TypeVar("StateT", default=Any)
"""The type of an actor's state for the type checker: ``class Counter(Actor[CounterState])``
makes ``ctx.state`` a ``CounterState`` (a ``TypedDict``, a list ...); a plain ``Actor`` keeps
``Any``. Nothing changes at runtime: the state is still the JSON value that is stored."""

#: The connection an action was called over, per task (actions of one connection run
#: concurrently, so this cannot live on the context object).
current_conn: contextvars.ContextVar[Conn | None] = contextvars.ContextVar(
    "actorcore_current_conn", default=None
)


class ActorContext(Generic[StateT]):
    """The handle hooks and actions get as ``ctx``. One per generation.

    ``state`` is persisted (JSON-serialisable); ``vars`` lives for this generation only.
    """

    __slots__ = ("_gen", "vars")

    def __init__(self, gen: Generation) -> None:
        self._gen = gen
        self.vars: dict[str, Any] = {}
        """Per-generation scratch space, not persisted."""

    # ---------------------------------------------------------------- identity

    @property
    def actor_id(self) -> str:
        """The actor's unique id."""
        return self._gen.actor_id

    @property
    def name(self) -> str:
        """The actor definition's route name."""
        return self._gen.definition.name

    @property
    def key(self) -> str:
        """The actor's key."""
        return self._gen.key

    @property
    def generation(self) -> int:
        """1 for the first start, +1 at every wake."""
        return self._gen.number

    @property
    def actors(self) -> ActorLookup:
        """Other actors of this registry (this one too): ``await
        ctx.actors.get_or_create(name, key)``, ``get(name, key)``, ``get_by_id(actor_id)``,
        returning the registry's :class:`~actorcore.ActorHandle`."""
        return self._gen.host.actors

    @property
    def schedule(self) -> Schedule:
        """This actor's durable alarms: ``await ctx.schedule.after(seconds, "action", *args)``,
        ``at(unix_time, ...)``, ``cancel(alarm_id)``, ``list()`` (see ``docs/schedule.md``)."""

        return Schedule(self._gen)

    # ---------------------------------------------------------------- state

    @property
    def state(self) -> StateT:
        """The persisted state. Mutate it in place or assign a new value."""
        return cast(StateT, self._gen.state)

    @state.setter
    def state(self, value: StateT) -> None:
        self._gen.state = value
        self._gen.mark_dirty()

    async def save_state(self) -> None:
        """Save the state now (if it changed). Raises :class:`actorcore.StoreError` on failure;
        the in-memory state is kept either way."""
        await self._gen.save_state(reason="save_state")

    # ---------------------------------------------------------------- lifecycle

    @property
    def lifecycle(self) -> LifecycleState:
        """The actor's current lifecycle state."""
        return self._gen.lifecycle.state

    @property
    def started(self) -> bool:
        """True in STARTED and SLEEP_GRACE."""
        return self._gen.lifecycle.started

    @property
    def sleep_requested(self) -> bool:
        """A sleep was requested for this generation."""
        return self._gen.lifecycle.sleep_requested

    @property
    def destroy_requested(self) -> bool:
        """A destroy was requested."""
        return self._gen.lifecycle.destroy_requested

    @property
    def abort_signal(self) -> trio.Event:
        """Set when grace begins: long-running work should wrap up."""
        return self._gen.abort_signal

    @property
    def aborted(self) -> bool:
        """Whether :attr:`abort_signal` is set."""
        return self._gen.aborted

    def sleep(self) -> None:
        """Request sleep. A second request is a no-op. Returns at once."""
        self._gen.request_sleep("ctx.sleep")

    def destroy(self) -> None:
        """Request destroy (escalates a sleep under way). Returns at once."""
        self._gen.request_destroy("ctx.destroy")

    def keep_awake(self, name: str = "keep_awake") -> AbstractAsyncContextManager[None]:
        """Async context manager: while held, the actor does not idle-sleep and grace does not
        end (bounded by ``sleep_grace_period``, after which the block is cancelled)."""
        return _keep_awake(self._gen, name)

    def wait_until(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start background work that finalize waits for (bounded by the grace period).

        Like ``nursery.start_soon``: returns at once. Exceptions are logged, not raised.
        Does not keep the actor from idle sleep (use :meth:`keep_awake` for that).
        """
        self._gen.wait_until(async_fn, args)

    # ---------------------------------------------------------------- connections

    @property
    def conns(self) -> list[Conn]:
        """The actor's live connections (hibernatable ones included)."""
        return self._gen.live_conns()

    @property
    def conn(self) -> Conn | None:
        """The connection the current action was called over; None for in-process calls."""
        return current_conn.get()

    def broadcast(self, event: str, *args: Any) -> None:
        """Queue ``event`` to every protocol connection subscribed to it. Returns at once."""
        self._gen.broadcast(event, list(args))

    def __repr__(self) -> str:
        return f"<ActorContext {self.name}/{self.key} id={self.actor_id} gen={self.generation}>"


@asynccontextmanager
async def _keep_awake(gen: Generation, name: str) -> AsyncIterator[None]:
    with gen.track_work(f"keep_awake:{name}", blocks_idle=True):
        yield
