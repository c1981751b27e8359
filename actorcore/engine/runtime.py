"""EngineRuntime: a registry run as an envoy of a Rivet engine.

Who decides what. The engine places actors, keeps exactly one generation of each running,
routes clients to the envoy that runs it, and decides when an actor starts and stops. This
runtime turns its commands into the registry's lifecycle commands and reports back:

* ``CommandStartActor`` (generation N) → the registry wakes the actor as generation N
  (``ctx.generation`` is the engine's number); LOADED → ``ActorStateRunning``;
* ``CommandStopActor``: ``SleepIntent`` → sleep; ``GoingAway`` and ``Lost`` → move away (a
  sleep that logs why); ``StopIntent`` and ``Destroy`` → destroy; the end of the generation
  → ``ActorStateStopped`` (``Ok`` after a finalize, ``Error`` after a failed start);
* the registry's own requests (idle sleep, ``ctx.sleep()``, ``ctx.destroy()``,
  ``registry.sleep()/destroy()``) become intents (``EventActorIntent``) to the engine, which
  answers with the stop command: the lifecycle table still decides, the engine grants.

Clients reach actors through the engine's gateway; each tunnelled WebSocket is a
:class:`~actorcore.engine.tunnel.TunnelSocket` handed to the same
:class:`~actorcore.ws.dispatch.Dispatcher` as on actorcore's own listener, so the three check
points, the close codes and finalize behave the same; each HTTP request is answered by the same
:class:`~actorcore.http.app.HttpApp` (:class:`~actorcore.engine.requests.TunnelRequests`).
State is kept in the engine's KV (:class:`~actorcore.engine.store.EngineStore`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import quote

import trio

from .. import closecodes
from ..authority import LifecycleRequest
from ..conn import Conn, ConnKind, TransportClosed
from ..http.app import HttpApp
from ..lifecycle import LifecycleEvent, LifecycleState
from ..registry import Registry, host_of
from ..request import ConnectRequest
from ..ws.dispatch import Dispatcher, ResumedConn
from ..ws.origin import OriginPolicy
from .bare import Variant
from .link import EnvoyLink, EnvoyOptions
from .messages_v8 import (
    CommandStartActor,
    CommandStopActor,
    ToEnvoyTunnelMessage,
    ToEnvoyWebSocketClose,
    ToEnvoyWebSocketMessage,
    ToEnvoyWebSocketOpen,
)
from .requests import TunnelRequests
from .store import EngineStore, StartedActor
from .tunnel import ABORT_CLOSE_TIMEOUT, TunnelSocket, conn_id_of

__all__ = ["EngineAuthority", "EngineRuntime"]

log = logging.getLogger("actorcore.engine")

S = LifecycleState
E = LifecycleEvent

#: Bound on delivering the last events (the generations' ``Stopped``) after the registry
#: stopped, before the link closes.
FLUSH_TIMEOUT: Final = 5.0

#: Hibernated sockets this envoy remembers (the oldest are forgotten first; a forgotten one
#: comes back from its saved record when its actor next starts).
MAX_PARKED: Final = 10_000

_DESTROYING_REASONS: Final = frozenset({"StopIntent", "Destroy"})
_ENDED_BY_FINALIZE: Final = frozenset({S.SLEEP_FINALIZE, S.DESTROYING})


class EngineAuthority:
    """The engine as lifecycle authority: the registry's sleep and destroy requests become
    intents to the engine, whose stop commands carry them out; a wake is granted only for a
    generation the engine started on this envoy."""

    def __init__(self, runtime: EngineRuntime) -> None:
        self._runtime = runtime

    def request(self, request: LifecycleRequest, apply: Callable[[], None]) -> None:
        """Grant a wake of a generation the engine started here; turn sleep and destroy into
        intents (never granted here: the engine's stop command carries them out)."""
        runtime = self._runtime
        held = runtime.store.held(request.actor_id)
        if held is None:
            return  # not running here by the engine's decision: nothing to ask
        if request.event is E.WAKE:
            apply()
            return
        if runtime.draining:
            return  # the engine stops every actor of a draining envoy (GoingAway)
        intent = "ActorIntentSleep" if request.event is E.SLEEP else "ActorIntentStop"
        runtime.link.queue_event(
            request.actor_id,
            held.generation,
            Variant("EventActorIntent", {"intent": Variant(intent)}),
        )


class EngineRuntime:
    """Runs ``registry`` as an envoy of the engine ``options.url`` (see the module docstring):
    ``await nursery.start(runtime.run)``; it returns when the registry has stopped."""

    http: HttpApp
    """Answers the HTTP requests the gateway forwards (set once :meth:`run` started)."""
    requests: TunnelRequests
    """The HTTP requests the gateway forwards, in flight (set once :meth:`run` started)."""

    def __init__(
        self,
        registry: Registry,
        options: EnvoyOptions,
        *,
        allowed_origins: Iterable[str] | None = None,
    ) -> None:
        self.registry = registry
        self.options = options
        self.origins = OriginPolicy.make(allowed_origins, loopback=False)
        """Browser origins that may connect through the gateway, as on actorcore's own
        listener (``allowed_origins``: ``*`` for any; None: same origin only, the ``Origin``
        against the ``Host`` the gateway forwards). A request without ``Origin`` (not a
        browser) is always allowed."""
        self.link = EnvoyLink(options, self, sorted(registry.definitions))
        self.store = EngineStore(self.link)
        self.dispatcher: Dispatcher | None = None
        self.draining = False
        self._sockets: dict[tuple[bytes, bytes], TunnelSocket] = {}
        self._by_conn: dict[str, TunnelSocket] = {}
        """Sockets by the id of their connection (``conn_id_of``)."""
        self._restoring: dict[str, list[TunnelSocket]] = {}
        self._lost: dict[str, StartedActor] = {}
        """Generations stopped because the link was lost, until their end is reported."""
        self._parked: dict[tuple[bytes, bytes], tuple[str, dict[str, Any]]] = {}
        """Sockets this envoy let go of when their actor slept here (the gateway holds them),
        with their connection records: taken back when the gateway sends on one again."""
        """Hibernating sockets the engine listed in an actor's start, until it has started."""
        self._nursery: trio.Nursery | None = None
        self.store.conn_records = self._conn_records
        self.store.conn_ids = self._conn_ids

    async def run(
        self, *, task_status: trio.TaskStatus[EngineRuntime] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the registry and the link until the registry stops (its shutdown drains:
        this envoy tells the engine it is stopping, and the engine moves its actors)."""
        registry = self.registry
        registry.use_store(self.store)
        host_of(registry).use_authority(EngineAuthority(self))
        registry.watch_transitions(self._transitioned)
        registry.add_drain_step(self._drain)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(registry.run)
            self.dispatcher = Dispatcher(registry)
            self.http = HttpApp(registry, self.origins)
            self.requests = TunnelRequests(self.link, self.http, nursery)
            async with trio.open_nursery() as link_nursery:
                await link_nursery.start(self.link.run)
                task_status.started(self)
                await registry.wait_stopped()
                # The last Stopped events must reach the engine, or it would wait for them.
                with trio.move_on_after(FLUSH_TIMEOUT):
                    await self.link.wait_events_sent()
                link_nursery.cancel_scope.cancel()

    async def _drain(self) -> None:
        """Drain step: tell the engine this envoy stops; it sends GoingAway for each actor."""
        self.draining = True
        with trio.move_on_after(2.0):
            await self.link.stopping()

    # ---------------------------------------------------------------- commands

    def on_command(self, actor_id: str, generation: int, command: Variant) -> None:
        """A command from the engine (once; see EnvoyLink)."""
        assert self._nursery is not None
        if command.tag == "CommandStartActor":
            start: CommandStartActor = command.val
            config = start["config"]
            started = StartedActor(
                actor_id, config["name"], config["key"] or "", generation, config["input"]
            )
            hibernating = start["hibernatingRequests"]
            if hibernating:
                # Registered now: the gateway may send their messages before the actor runs.
                sockets = [
                    self._restored_socket(r["gatewayId"], r["requestId"]) for r in hibernating
                ]
                self._restoring[actor_id] = sockets
            self._nursery.start_soon(self._start, started, name=f"engine start {actor_id}")
        elif command.tag == "CommandStopActor":
            stop: CommandStopActor = command.val
            reason = stop["reason"]
            self._nursery.start_soon(
                self._stop, actor_id, generation, reason, name=f"engine stop {actor_id}"
            )

    async def _start(self, started: StartedActor) -> None:
        if started.name not in self.registry.definitions:
            log.error("engine started %s, which this registry does not define", started.name)
            self._stopped(started.actor_id, started.generation, f"no actor named {started.name}")
            return
        self.store.hold(started)
        try:
            await self.registry.commands.wake(
                started.actor_id, f"engine start, generation {started.generation}"
            )
        except Exception as exc:
            log.exception("actor %s: engine start failed", started.actor_id)
            self.store.release(started.actor_id)
            self._stopped(started.actor_id, started.generation, str(exc))

    async def _stop(self, actor_id: str, generation: int, reason: str) -> None:
        held = self.store.held(actor_id)
        entry = host_of(self.registry).entry(actor_id)
        if (
            held is None
            or held.generation != generation
            or entry is None
            or (entry.lifecycle.state is S.ASLEEP)
        ):
            # Nothing of that generation runs here (it ended, or never began): say so.
            self.store.release(actor_id)
            self._stopped(actor_id, generation, None)
            return
        commands = self.registry.commands
        why = f"engine stop ({reason})"
        try:
            if reason in _DESTROYING_REASONS:
                await commands.destroy(actor_id, why)
            elif reason == "SleepIntent":
                await commands.sleep(actor_id, why)
            else:
                await commands.move_away(actor_id, why)
        except Exception:
            log.exception("actor %s: engine stop (%s) failed", actor_id, reason)

    def on_lost(self) -> None:
        """The link has been down for nearly the engine's lost threshold: the engine is
        about to place this envoy's actors elsewhere. No more writes; every local actor
        stops (its final save is refused by the fence, so its last saved state stands)."""
        assert self._nursery is not None
        for entry in host_of(self.registry).entries():
            held = self.store.held(entry.actor_id)
            if held is not None:
                self._lost[entry.actor_id] = held
        self.store.release_all()
        for entry in host_of(self.registry).entries():
            if entry.generation is not None:
                self._nursery.start_soon(
                    self.registry.commands.move_away, entry.actor_id, "engine link lost"
                )

    # ---------------------------------------------------------------- reports

    def _transitioned(self, actor_id: str, old: LifecycleState, new: LifecycleState) -> None:
        held = self.store.held(actor_id)
        if new in _ENDED_BY_FINALIZE:
            self.store.finalizing.add(actor_id)  # the final save writes the records whatever
        if held is not None and old is S.LOADING and new is S.STARTED:
            self.link.queue_event(
                actor_id,
                held.generation,
                Variant("EventActorStateUpdate", {"state": Variant("ActorStateRunning")}),
            )
            self._take_back_hibernated(actor_id)
            host_of(self.registry).alarms.appeared(self.store.loaded_alarms.pop(actor_id, []))
        elif new in (S.ASLEEP, S.DESTROYED):
            lost = self._lost.pop(actor_id, None)
            if held is not None:
                error = None if old in _ENDED_BY_FINALIZE else f"generation ended in {old.value}"
                self._generation_ended(actor_id, held.generation, new, error)
            elif lost is not None:
                # Stopped without the engine (it was out of reach): reported as an error, so
                # the engine sleeps the actor (an unprompted "Ok" would destroy it).
                self._generation_ended(
                    actor_id, lost.generation, new, "the envoy lost the engine", lost=True
                )

    def _generation_ended(
        self, actor_id: str, generation: int, new: LifecycleState, error: str | None,
        *, lost: bool = False,
    ) -> None:  # fmt: skip
        """A generation the engine started here ended: its hibernatable sockets are let go,
        its alarms leave this envoy (the earliest handed to the engine when it sleeps and the
        link is up), the write fence closes, and the engine hears it stopped."""
        if new is S.ASLEEP or lost:
            self._hibernate_conns(actor_id)
        alarms = self.store.unload_alarms(actor_id)
        host_of(self.registry).alarms.forget_actor(actor_id)
        if new is S.ASLEEP and not lost:
            # The engine wakes the sleeping actor when its earliest alarm falls due.
            due = round(alarms[0].due * 1000) if alarms else None
            self.link.queue_event(
                actor_id, generation, Variant("EventActorSetAlarm", {"alarmTs": due})
            )
        self.store.release(actor_id)
        self._stopped(actor_id, generation, error)

    def _stopped(self, actor_id: str, generation: int, error: str | None) -> None:
        state = {"code": "Error" if error else "Ok", "message": error}
        self.link.queue_event(
            actor_id,
            generation,
            Variant("EventActorStateUpdate", {"state": Variant("ActorStateStopped", state)}),
        )
        self.link.forget_generation(actor_id, generation)

    # ---------------------------------------------------------------- tunnelled sockets

    def on_tunnel(self, message: ToEnvoyTunnelMessage) -> None:
        """A tunnel message from the gateway."""
        assert self._nursery is not None
        message_id = message["messageId"]
        key = (message_id["gatewayId"], message_id["requestId"])
        kind = message["messageKind"]
        tag = kind.tag
        if tag == "ToEnvoyWebSocketMessage":
            data: ToEnvoyWebSocketMessage = kind.val
            known = self._sockets.get(key) or self._unpark(key)
            if known is not None and not known.feed_message(
                message_id["messageIndex"], data["data"], data["binary"]
            ):
                self._nursery.start_soon(known.close, 1013, "actor.overloaded")
        elif tag == "ToEnvoyWebSocketOpen":
            open_: ToEnvoyWebSocketOpen = kind.val
            socket = TunnelSocket(self.link, *key, hibernatable=self._can_hibernate(open_))
            socket.path = open_["path"]
            self._sockets[key] = socket
            self._nursery.start_soon(self._serve, socket, open_, name="engine websocket")
        elif tag == "ToEnvoyWebSocketClose":
            close: ToEnvoyWebSocketClose = kind.val
            known = self._sockets.get(key) or self._unpark(key)
            if known is not None:
                known.feed_close(close["code"], close["reason"])
        elif tag == "ToEnvoyRequestStart":
            self.requests.start(key, kind.val)
        elif tag == "ToEnvoyRequestChunk":
            self.requests.chunk(key, kind.val)
        elif tag == "ToEnvoyRequestAbort":
            self.requests.abort(key)

    def _can_hibernate(self, open_: ToEnvoyWebSocketOpen) -> bool:
        """Protocol connections hibernate; raw ones if their actor's options say so."""
        path = open_["path"].lstrip("/")
        if path == "connect" or path.startswith("connect?"):
            return True
        held = self.store.held(open_["actorId"])
        definition = self.registry.definitions.get(held.name) if held is not None else None
        return definition is not None and definition.options.hibernatable_websockets

    async def _serve(
        self,
        socket: TunnelSocket,
        open_: ToEnvoyWebSocketOpen,
        resume: ResumedConn | None = None,
    ) -> None:
        dispatcher = self.dispatcher
        assert dispatcher is not None
        conn_id = conn_id_of(socket)
        self._by_conn[conn_id] = socket
        try:
            path = open_["path"] if open_["path"].startswith("/") else "/" + open_["path"]
            target = f"/actors/by-id/{quote(open_['actorId'], safe='')}{path}"
            headers = open_["headers"]
            if not self.origins.allows(headers.get("origin"), headers.get("host")):
                await self._refuse_origin(socket, headers.get("origin"))
                return
            offered = headers.get("sec-websocket-protocol", "")
            request = ConnectRequest(
                path=target,
                headers=tuple((k.lower().encode(), v.encode()) for k, v in headers.items()),
                subprotocols=tuple(p.strip() for p in offered.split(",") if p.strip()),
            )

            async def accept() -> TunnelSocket:
                return await socket.accept(can_hibernate=socket.hibernatable)

            await dispatcher.handle(
                target,
                request,
                accept,
                can_hibernate=socket.hibernatable,
                resume=resume,
                conn_id=conn_id,
            )
        finally:
            self._by_conn.pop(conn_id, None)
            if self._sockets.get(socket.key) is socket:
                del self._sockets[socket.key]

    async def _refuse_origin(self, socket: TunnelSocket, origin: str | None) -> None:
        """A browser page of an origin not allowed: accepted, then closed with 1008
        ``auth.forbidden``, as actorcore's own listener does (bounded)."""
        log.info("refused a gateway WebSocket from origin %r", (origin or "")[:100])
        with trio.move_on_after(ABORT_CLOSE_TIMEOUT), contextlib.suppress(TransportClosed):
            await socket.accept(can_hibernate=False)
            await socket.close(closecodes.FORBIDDEN.code, closecodes.FORBIDDEN.reason)

    # ---------------------------------------------------------------- hibernation

    def _restored_socket(self, gateway_id: bytes, request_id: bytes) -> TunnelSocket:
        socket = TunnelSocket(self.link, gateway_id, request_id, hibernatable=True, restored=True)
        self._sockets[socket.key] = socket
        return socket

    def _conn_ids(self, actor_id: str) -> frozenset[str]:
        """The ids of the actor's connections (a change writes their records again)."""
        entry = host_of(self.registry).entry(actor_id)
        return frozenset(conn.id for conn in entry.conns) if entry is not None else frozenset()

    def _conn_records(self, actor_id: str) -> list[dict[str, Any]]:
        """The actor's hibernatable tunnelled connections, as saved with its state."""
        entry = host_of(self.registry).entry(actor_id)
        records: list[dict[str, Any]] = []
        if entry is None:
            return records
        for conn in entry.conns:
            socket = self._by_conn.get(conn.id)
            if socket is None or not conn.hibernatable or conn.closing:
                continue
            records.append(_record(conn, socket))
        return records

    def _unpark(self, key: tuple[bytes, bytes]) -> TunnelSocket | None:
        """The gateway sends on a socket this envoy let go of: if its actor runs here again,
        take it back (its record is the one kept when it was let go); else None (the message
        is not acknowledged, and the gateway sends it again to where the actor runs)."""
        parked = self._parked.get(key)
        if parked is None:
            return None
        actor_id, record = parked
        entry = host_of(self.registry).entry(actor_id)
        if self.store.held(actor_id) is None or entry is None or entry.generation is None:
            return None
        del self._parked[key]
        socket = self._restored_socket(*key)
        self._resume(actor_id, socket, record)
        return socket

    def _hibernate_conns(self, actor_id: str) -> None:
        """The generation slept: the gateway holds the client sockets of its hibernatable
        connections; this envoy lets go of them quietly (no close, no disconnect hooks). The
        next generation, here or on another envoy, takes them back from the saved records."""
        entry = host_of(self.registry).entry(actor_id)
        if entry is None:
            return
        for conn in list(entry.conns):
            socket = self._by_conn.get(conn.id)
            if socket is None or not conn.hibernatable:
                continue
            entry.discard_conn(conn)
            self._parked[socket.key] = (actor_id, _record(conn, socket))
            while len(self._parked) > MAX_PARKED:
                del self._parked[next(iter(self._parked))]
            socket.hibernate()

    def _take_back_hibernated(self, actor_id: str) -> None:
        """The actor started: its hibernating sockets go live again with their records."""
        assert self._nursery is not None
        sockets = self._restoring.pop(actor_id, [])
        records = {r["conn_id"]: r for r in self.store.hibernated.pop(actor_id, [])}
        for socket in sockets:
            parked = self._parked.pop(socket.key, None)
            # What this envoy kept when it let go is at least as new as the last save.
            record = parked[1] if parked is not None else records.get(conn_id_of(socket))
            if record is None:
                # The gateway held it, but no save recorded it: nothing to go back to.
                self._sockets.pop(socket.key, None)
                self._nursery.start_soon(socket.close, 1000, "ws.meta_not_found_during_restore")
                continue
            self._resume(actor_id, socket, record)

    def _resume(self, actor_id: str, socket: TunnelSocket, record: dict[str, Any]) -> None:
        """Serve a hibernated socket again, as the connection its record describes."""
        assert self._nursery is not None
        socket.restore(record["next_out"], record["path"])
        resume = ResumedConn(
            actor_id=actor_id,
            conn_id=record["conn_id"],
            kind=ConnKind(record["kind"]),
            params=record["params"],
            state=record["state"],
            subscriptions=tuple(record["subscriptions"]),
        )
        open_: ToEnvoyWebSocketOpen = {
            "actorId": actor_id,
            "actorGeneration": None,
            "path": record["path"],
            "headers": {},
        }
        self._nursery.start_soon(self._serve, socket, open_, resume, name="engine websocket")


def _record(conn: Conn, socket: TunnelSocket) -> dict[str, Any]:
    """What a hibernated connection is taken back with (JSON: saved with the actor)."""
    return {
        "conn_id": conn.id,
        "kind": conn.kind.value,
        "params": conn.params,
        "state": conn.state,
        "subscriptions": sorted(conn.subscriptions),
        "next_out": socket.next_out,
        "path": socket.path,
    }
