"""Registry: the user API of actorcore. It runs actors of the given definitions on trio, finds
them by key or id, routes work to them, and owns their lifecycle.

This module is the facade a user reads: every method here is part of the API, documented,
and delegates to the registry's :class:`~actorcore.host.RegistryHost`, which holds the
implementation (the actor table, admission, generations, the drain). Generations, the alarm
timer, the dispatcher and the testing kit use that host directly (:func:`host_of`).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from .actor import Actor, ActorDefinition
from .alarms import MAX_RUNNING, PREFETCH
from .authority import LifecycleAuthority, LifecycleCommands
from .handle import ActorHandle
from .host import RegistryHost, RegistryStatistics
from .lifecycle import LifecycleState
from .lookup import ActorLookup
from .ratelimit import CreateRate
from .store.base import Store

if TYPE_CHECKING:
    from .request import ConnectRequest

__all__ = ["ActorHandle", "Registry", "RegistryHost", "RegistryStatistics", "host_of"]


class Registry:
    """Runs actors of the given definitions on trio, persisting them in ``store``.

    Use as ``async with Registry([...]) as registry:`` or ``await nursery.start(registry.run)``.
    Leaving the block (or :meth:`shutdown`) drains: every awake actor sleeps, hooks run and
    state is saved, bounded by the actors' grace periods.

    ``authority`` grants sleep, wake and destroy (the local one grants at once; see
    :mod:`actorcore.authority`). ``authorize`` gates every incoming connection (see
    :attr:`authorize`). ``create_rate`` bounds how fast one client address may create actors
    (a :class:`~actorcore.ratelimit.CreateRate`, a number per second, or None for no limit).
    ``cancel_save_timeout`` bounds the one save of awake actors when :meth:`run` is cancelled
    from outside. ``wall_clock``, ``max_running_alarms`` and ``alarm_prefetch`` tune the
    alarm timer (``ctx.schedule``). ``pause_gc``: a finalize that closes many connections at
    once may pause the cyclic garbage collector meanwhile (see ``docs/lifecycle.md``).
    """

    __slots__ = ("_host",)

    def __init__(
        self,
        actors: Iterable[type[Actor]] = (),
        store: Store | None = None,
        *,
        authority: LifecycleAuthority | None = None,
        authorize: Callable[[ConnectRequest], Awaitable[None]] | None = None,
        create_rate: CreateRate | float | None = CreateRate(),  # noqa: B008 - frozen, immutable
        cancel_save_timeout: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
        max_running_alarms: int = MAX_RUNNING,
        alarm_prefetch: int = PREFETCH,
        pause_gc: bool = False,
    ) -> None:
        self._host = RegistryHost(
            self,
            actors,
            store,
            authority=authority,
            authorize=authorize,
            create_rate=create_rate,
            cancel_save_timeout=cancel_save_timeout,
            wall_clock=wall_clock,
            max_running_alarms=max_running_alarms,
            alarm_prefetch=alarm_prefetch,
            pause_gc=pause_gc,
        )

    # ---------------------------------------------------------------- configuration

    @property
    def authorize(self) -> Callable[[ConnectRequest], Awaitable[None]] | None:
        """The gate every incoming connection passes after routing, before any actor is
        looked up or created: ``async def authorize(request: ConnectRequest) -> None``,
        raising :class:`~actorcore.Forbidden` to refuse (close 1008). None: no gate."""
        return self._host.authorize

    @authorize.setter
    def authorize(self, gate: Callable[[ConnectRequest], Awaitable[None]] | None) -> None:
        self._host.authorize = gate

    @property
    def store(self) -> Store:
        """The store actors persist to."""
        return self._host.store

    def use_store(self, store: Store) -> None:
        """Replace the store before the registry runs (the CLI's ``--store``)."""
        self._host.use_store(store)

    @property
    def store_is_default(self) -> bool:
        """True when no store was chosen (the in-memory default is in use)."""
        return self._host.store_is_default

    @property
    def definitions(self) -> dict[str, ActorDefinition]:
        """Registered definitions by route name."""
        return self._host.definitions

    # ---------------------------------------------------------------- running

    async def run(  # noqa: ASYNC128 - task_status is passed on to the host's run
        self, *, task_status: trio.TaskStatus[Registry] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`shutdown`; then drain and return.

        Cancelled from outside instead, it still saves the state of every awake actor once
        (no hooks, no grace), shielded and bounded by ``cancel_save_timeout``, before it
        returns; see ``docs/reliability.md`` for what each way of stopping guarantees."""
        await self._host.run(task_status=task_status)

    async def __aenter__(self) -> Registry:
        # The nursery is entered and left by the host's serving() (an asynccontextmanager),
        # never by hand; the stack only keeps it between these two calls.
        return await self._host.enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Not shielded here: the host's serving() shields the registry's nursery itself,
        # bounded by the drain budget.
        await self._host.exit(exc_type, exc, tb)  # noqa: ASYNC102

    async def serve(  # noqa: ASYNC128 - task_status is passed on to ws.server.serve
        self,
        host: str | None,
        port: int,
        *,
        max_connections: int = 10_000,
        max_connections_per_client: int = 256,
        max_handshakes: int = 1024,
        handshake_timeout: float = 10.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        fragment_timeout: float = 30.0,
        allowed_origins: Iterable[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        http_request_timeout: float = 30.0,
        http_keepalive_timeout: float = 5.0,
        http_max_requests: int = 100,
        metrics: bool = True,
        inspector: bool = False,
        inspector_token: str | None = None,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the actors over WebSockets and HTTP on one port (see
        :func:`actorcore.ws.server.serve` and :class:`actorcore.ws.server.ServerOptions` for
        each limit and its default, and ``docs/http.md`` for the HTTP routes, ``metrics`` and
        the ``inspector``): ``server = await nursery.start(registry.serve, "127.0.0.1", 0)``."""
        from .ws.server import serve  # the ws layer sits above the registry

        await serve(
            self,
            host,
            port,
            max_connections=max_connections,
            max_connections_per_client=max_connections_per_client,
            max_handshakes=max_handshakes,
            handshake_timeout=handshake_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            fragment_timeout=fragment_timeout,
            allowed_origins=None if allowed_origins is None else tuple(allowed_origins),
            ssl_context=ssl_context,
            http_request_timeout=http_request_timeout,
            http_keepalive_timeout=http_keepalive_timeout,
            http_max_requests=http_max_requests,
            metrics=metrics,
            inspector=inspector,
            inspector_token=inspector_token,
            task_status=task_status,
        )

    @property
    def running(self) -> bool:
        """True between the start of :meth:`run` and its end."""
        return self._host.running

    @property
    def draining(self) -> bool:
        """True once shutdown began: new work is refused with ``runtime.shutdown``."""
        return self._host.draining

    def add_drain_step(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` first when the registry drains, before actors are put to sleep (the
        dispatcher closes every connection with 1012 here). Each step must bound itself."""
        self._host.add_drain_step(step)

    def request_shutdown(self) -> None:
        """Begin draining without waiting (see :meth:`shutdown`)."""
        self._host.request_shutdown()

    async def shutdown(self) -> None:
        """Drain and stop: every awake actor sleeps with its state saved (bounded by its grace
        period); new work is refused with ``runtime.shutdown``. Returns when stopped."""
        await self._host.shutdown()

    async def wait_shutdown_requested(self) -> None:
        """Return once shutdown was requested."""
        await self._host.wait_shutdown_requested()

    async def wait_stopped(self) -> None:
        """Return once the registry has drained and stopped."""
        await self._host.wait_stopped()

    # ---------------------------------------------------------------- actors

    @property
    def actors(self) -> ActorLookup:
        """This registry's lookup of actors, as actors see it (``ctx.actors``)."""
        return self._host.actors

    async def get_or_create(self, name: str, key: str, input: Any = None) -> ActorHandle:
        """The actor ``name``/``key``, created (with ``input``) if it does not exist, and
        started. Raises ActorStartFailed, ActorDestroyed (while that actor is being
        destroyed), ActorReadyTimeout."""
        return await self._host.get_or_create(name, key, input)

    async def get(self, name: str, key: str) -> ActorHandle:
        """The existing actor ``name``/``key`` (not woken); :class:`ActorNotFound` if none."""
        return await self._host.get(name, key)

    async def get_by_id(self, actor_id: str) -> ActorHandle:
        """The existing actor with this id (not woken); :class:`ActorNotFound` if none."""
        return await self._host.get_by_id(actor_id)

    async def call(self, actor_id: str, action: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``action`` on the actor: admitted by the lifecycle (woken or held as needed),
        bounded by ``action_timeout``. The action's own exception reaches the caller
        unchanged; ActorStopping if the generation's grace deadline cut it off."""
        return await self._host.call(actor_id, action, *args, **kwargs)

    def lifecycle(self, actor_id: str) -> LifecycleState | None:
        """The actor's current lifecycle state, DESTROYED for a recently destroyed one, or None
        for an unknown id."""
        return self._host.lifecycle(actor_id)

    async def sleep(self, actor_id: str) -> None:
        """Request sleep and return when the generation running now has finished."""
        await self._host.sleep(actor_id)

    async def destroy(self, actor_id: str) -> None:
        """Destroy the actor (waking it so ``on_destroy`` runs) and return once it is gone.

        Raises :class:`StoreError` if the actor is destroyed but the store failed to delete
        its row: the delete is retried (in the background with backoff, on the next lookup of
        its key, and by the drain), but until one succeeds a process restart would find the
        actor again."""
        await self._host.destroy(actor_id)

    @property
    def commands(self) -> LifecycleCommands:
        """What the authority may command (handed to its ``attach`` when the registry
        starts; usable directly by an embedder too)."""
        return self._host.commands

    # ---------------------------------------------------------------- observability

    def statistics(self) -> RegistryStatistics:
        """A snapshot of counters; cheap enough to poll."""
        return self._host.statistics()

    def watch_transitions(
        self, listener: Callable[[str, LifecycleState, LifecycleState], None]
    ) -> Callable[[], None]:
        """Call ``listener(actor_id, old_state, new_state)`` at every lifecycle transition,
        synchronously and in order, until the returned function is called (tests, metrics;
        see :func:`actorcore.testing.record_transitions`). A listener must not raise."""
        return self._host.watch_transitions(listener)


def host_of(registry: Registry) -> RegistryHost:
    """The internal interface of ``registry`` (for the dispatcher, the testing kit and tests:
    not the user API)."""
    return registry._host
