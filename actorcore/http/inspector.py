"""The live inspector: one self-contained HTML page (no build step, no CDN) at
``/inspector``, a small JSON API under ``/inspector/api/`` and live updates over a WebSocket at
``/inspector/ws``.

Enabled with ``Registry.serve(..., inspector=True)`` or ``actorcore serve ... --inspector``.
Protected by a token (``inspector_token``, ``--inspector-token`` or the environment variable
``ACTORCORE_INSPECTOR_TOKEN``), given as ``?token=`` or ``Authorization: Bearer``; without a
token only loopback clients are admitted. The ``Origin`` allow-list of the server applies too
(so another site's page cannot drive the buttons).

What it shows: the actors in memory and those it saw since the server started (an actor that
went to sleep leaves memory but stays listed, asleep), searchable and paged (name, key, id,
lifecycle state, generation, connections, last transition and when); for one actor its state as
JSON, its connections with their kinds and states, and buttons to sleep or destroy it.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib.resources
import logging
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, unquote

import attrs
import trio

from .. import jsoncodec
from ..conn import TransportClosed
from ..errors import ActorError, ActorNotFound, Forbidden, StoreError
from ..lifecycle import LifecycleState
from ..registry import host_of
from ..request import ClientAddress
from ..ws.origin import is_loopback_name
from .app import HttpAnswer, HttpExchange, error_answer, text_answer
from .routes import HttpRoute

if TYPE_CHECKING:
    from ..registry import Registry
    from ..ws.connection import WebSocketConnection
    from ..ws.handshake import UpgradeRequest
    from ..ws.server import WebSocketServer

__all__ = ["Inspector"]

log = logging.getLogger("actorcore.http")

#: Actors the inspector remembers after they left memory (oldest forgotten first).
MAX_REMEMBERED: Final = 10_000
#: Largest page of the actor list.
MAX_PAGE: Final = 500
#: Bound on live updates per second to one inspector WebSocket.
UPDATES_PER_SECOND: Final = 10
#: Seconds between updates when nothing changed (connection counts move without a transition).
REFRESH: Final = 2.0
#: Live inspector WebSockets at once.
MAX_WATCHERS: Final = 32


@attrs.define
class _Seen:
    name: str
    key: str
    state: str
    generation: int
    last_transition: str
    when: float


class Inspector:
    """Serves the inspector of one server (see the module docstring)."""

    def __init__(self, registry: Registry, server: WebSocketServer, *, token: str | None) -> None:
        self.registry = registry
        self.host = host_of(registry)
        self.server = server
        self.token = token or None
        self._seen: dict[str, _Seen] = {}
        self._watchers: set[_Watcher] = set()
        self._stopping = False

    def stop(self) -> None:
        """The server stops: every inspector WebSocket closes (1012)."""
        self._stopping = True
        for watcher in self._watchers:
            if watcher.scope is not None:
                watcher.scope.cancel()

    # ---------------------------------------------------------------- watching

    async def run(self) -> None:
        """Remember transitions until cancelled (the server runs it beside its listeners)."""
        stop = self.registry.watch_transitions(self._transition)
        try:
            await trio.sleep_forever()
        finally:
            stop()

    def _transition(self, actor_id: str, old: LifecycleState, new: LifecycleState) -> None:
        entry = self.host.entry(actor_id)
        seen = self._seen.get(actor_id)
        if entry is not None:
            name, key, generation = entry.name, entry.key, entry.last_generation
        elif seen is not None:
            name, key, generation = seen.name, seen.key, seen.generation
        else:
            return
        self._seen.pop(actor_id, None)
        self._seen[actor_id] = _Seen(
            name, key, new.value, generation, f"{old.value} -> {new.value}", time.time()
        )
        while len(self._seen) > MAX_REMEMBERED:
            del self._seen[next(iter(self._seen))]
        for watcher in self._watchers:
            watcher.kick.set()

    # ---------------------------------------------------------------- data

    async def actors(self, search: str = "", page: int = 0, per_page: int = 50) -> dict[str, Any]:
        """One page of the actors the store holds, ordered by name and key, filtered by
        ``search`` (a substring of the name, key or id), each with its live state when it is
        in memory (asleep otherwise). A store that cannot list gives the actors in memory and
        those seen since the server started instead (``"source": "memory"``)."""
        per_page = max(1, min(per_page, MAX_PAGE))
        page = max(0, page)
        try:
            total, records = await self.registry.store.list_actors(
                search, page * per_page, per_page
            )
        except StoreError:
            return self._actors_in_memory(search, page, per_page)
        rows = []
        for record in records:
            row: dict[str, Any] = {
                "id": record.actor_id,
                "name": record.name,
                "key": record.key,
                "state": "asleep",
                "generation": record.generation,
                "connections": 0,
                "last_transition": None,
                "when": None,
            }
            seen = self._seen.get(record.actor_id)
            if seen is not None:
                row.update(state=seen.state, last_transition=seen.last_transition, when=seen.when)
            entry = self.host.entry(record.actor_id)
            if entry is not None:
                row.update(
                    state=entry.lifecycle.state.value,
                    generation=entry.last_generation,
                    connections=len(entry.conns),
                )
            rows.append(row)
        return {
            "source": "store",
            "total": total,
            "page": page,
            "per_page": per_page,
            "actors": rows,
            "statistics": {
                "draining": self.registry.draining,
                "connections": self.server.statistics().connections,
            },
        }

    def _actors_in_memory(self, search: str, page: int, per_page: int) -> dict[str, Any]:
        rows: dict[str, dict[str, Any]] = {}
        for actor_id, seen in self._seen.items():
            rows[actor_id] = {
                "id": actor_id,
                "name": seen.name,
                "key": seen.key,
                "state": seen.state,
                "generation": seen.generation,
                "connections": 0,
                "last_transition": seen.last_transition,
                "when": seen.when,
            }
        for entry in self.host.entries():
            row = rows.setdefault(
                entry.actor_id,
                {"id": entry.actor_id, "last_transition": None, "when": None},
            )
            row.update(
                name=entry.name,
                key=entry.key,
                state=entry.lifecycle.state.value,
                generation=entry.last_generation,
                connections=len(entry.conns),
            )
        needle = search.lower()
        found = [
            r
            for r in rows.values()
            if not needle
            or any(needle in str(r[f]).lower() for f in ("name", "key", "id", "state"))
        ]
        found.sort(key=lambda r: (r["name"], r["key"]))
        start = page * per_page
        return {
            "source": "memory",
            "total": len(found),
            "page": max(0, page),
            "per_page": per_page,
            "actors": found[start : start + per_page],
            "statistics": {
                "draining": self.registry.draining,
                "connections": self.server.statistics().connections,
            },
        }

    def actor(self, actor_id: str) -> dict[str, Any]:
        """One actor: its row, its state as JSON and its connections."""
        entry = self.host.entry(actor_id)
        seen = self._seen.get(actor_id)
        if entry is None and seen is None:
            raise ActorNotFound(f"no actor {actor_id!r} in memory")
        state: Any = None
        conns: list[dict[str, Any]] = []
        if entry is not None:
            gen = entry.generation
            if gen is not None and gen.instance is not None:
                state = gen.state
            conns = [
                {
                    "id": conn.id,
                    "kind": conn.kind.value,
                    "state": "closing" if conn.closing else "open",
                    "hibernatable": conn.hibernatable,
                }
                for conn in entry.conns
            ]
        return {
            "id": actor_id,
            "name": entry.name if entry is not None else seen.name if seen else None,
            "key": entry.key if entry is not None else seen.key if seen else None,
            "state": entry.lifecycle.state.value if entry is not None else seen and seen.state,
            "generation": entry.last_generation if entry is not None else seen and seen.generation,
            "last_transition": seen.last_transition if seen is not None else None,
            "when": seen.when if seen is not None else None,
            "actor_state": state,
            "connections": conns,
        }

    async def actor_or_stored(self, actor_id: str) -> dict[str, Any]:
        """:meth:`actor`, or an asleep actor as the store holds it (its saved state)."""
        with contextlib.suppress(ActorNotFound):
            return self.actor(actor_id)
        record = await self.registry.store.get_by_id(actor_id)
        if record is None:
            raise ActorNotFound(f"no actor {actor_id!r}")
        return {
            "id": actor_id,
            "name": record.name,
            "key": record.key,
            "state": "asleep",
            "generation": record.generation,
            "last_transition": None,
            "when": None,
            "actor_state": jsoncodec.loads(record.state) if record.state is not None else None,
            "connections": [],
        }

    # ---------------------------------------------------------------- access

    def owns(self, target: str) -> bool:
        """Whether a WebSocket upgrade to ``target`` is the inspector's."""
        return target.split("?", 1)[0] == "/inspector/ws"

    def _allowed(
        self, query: str, headers: tuple[tuple[bytes, bytes], ...], client: ClientAddress | None
    ) -> bool:
        if self.token is None:
            return client is not None and is_loopback_name(client.host)
        offered: list[str] = parse_qs(query).get("token", [])
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                offered.append(value[7:].decode("latin-1").strip())
        expected = self.token.encode()
        return any(hmac.compare_digest(o.encode(), expected) for o in offered)

    # ---------------------------------------------------------------- HTTP

    async def handle(self, route: HttpRoute, exchange: HttpExchange) -> HttpAnswer:
        """Answer a request under ``/inspector``."""
        await trio.lowlevel.checkpoint()
        if not self._allowed(route.query, exchange.headers, exchange.client):
            return error_answer(Forbidden("the inspector needs its token (or a loopback client)"))
        sub = route.subpath
        method = exchange.method
        query = parse_qs(route.query)
        if sub in ("/", "") and method in ("GET", "HEAD"):
            return HttpAnswer(
                200,
                [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"content-security-policy", _CSP),
                    (b"x-frame-options", b"DENY"),
                ],
                _page(),
            )
        if sub == "/api/actors" and method == "GET":
            try:
                page = int(query.get("page", ["0"])[-1])
                per_page = int(query.get("per_page", ["50"])[-1])
            except ValueError:
                return text_answer(400, "page and per_page are integers\n")
            data = await self.actors(query.get("q", [""])[-1], page, per_page)
            return _json(data)
        parts = sub.split("/")
        # "", "api", "actors", id[, verb]
        if len(parts) in (4, 5) and parts[1] == "api" and parts[2] == "actors":
            actor_id = unquote(parts[3])
            if len(parts) == 4 and method == "GET":
                try:
                    return _json(await self.actor_or_stored(actor_id))
                except ActorError as exc:
                    return error_answer(exc)
            if len(parts) == 5 and parts[4] in ("sleep", "destroy"):
                if method != "POST":
                    return text_answer(405, "use POST\n", [(b"allow", b"POST")])
                return await self._command(actor_id, parts[4])
        return error_answer(ActorNotFound(f"no inspector route {sub[:200]!r}"))

    async def _command(self, actor_id: str, verb: str) -> HttpAnswer:
        if (
            self.host.entry(actor_id) is None
            and actor_id not in self._seen
            and not self.registry.store.exists_nowait(actor_id)
        ):
            return error_answer(ActorNotFound(f"no actor {actor_id!r}"))
        try:
            if verb == "sleep":
                await self.registry.sleep(actor_id)
            else:
                await self.registry.destroy(actor_id)
        except ActorError as exc:
            return error_answer(exc)
        log.info("inspector: %s of actor %s", verb, actor_id)
        return _json({"ok": True, "actor": await self.actor_or_stored(actor_id)})

    # ---------------------------------------------------------------- WebSocket

    async def serve_websocket(self, conn: WebSocketConnection, request: UpgradeRequest) -> None:
        """Send the first page of the actor list at once and again after every change (at
        most UPDATES_PER_SECOND a second, and every REFRESH seconds), until the peer leaves.
        A client may send ``{"q": "...", "page": n}`` to change its view."""
        query = request.target.split("?", 1)[1] if "?" in request.target else ""
        if not self._allowed(query, request.headers, conn.client) or (
            len(self._watchers) >= MAX_WATCHERS
        ):
            with trio.move_on_after(2.0), contextlib.suppress(TransportClosed):
                await conn.close(1008, "auth.forbidden")
            return
        watcher = _Watcher()
        self._watchers.add(watcher)
        try:
            async with trio.open_nursery() as nursery:
                watcher.scope = nursery.cancel_scope
                nursery.start_soon(self._read_views, conn, watcher, nursery.cancel_scope)
                while True:
                    data = await self.actors(watcher.q, watcher.page)
                    try:
                        await conn.send(jsoncodec.dumps(data))
                    except TransportClosed:
                        break
                    await trio.sleep(1 / UPDATES_PER_SECOND)
                    with trio.move_on_after(REFRESH):
                        await watcher.kick.wait()
                    watcher.kick = trio.Event()
                nursery.cancel_scope.cancel()
        finally:
            self._watchers.discard(watcher)
            if not conn.closed:
                code, reason = (1012, "runtime.shutdown") if self._stopping else (1000, "")
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(2.0),
                    contextlib.suppress(TransportClosed),
                ):
                    await conn.close(code, reason)

    async def _read_views(
        self, conn: WebSocketConnection, watcher: _Watcher, done: trio.CancelScope
    ) -> None:
        """Read the client's ``{"q": ..., "page": ...}`` messages; end the connection's tasks
        when the peer leaves."""
        with contextlib.suppress(TransportClosed):
            while True:
                message = await conn.receive()
                try:
                    asked = jsoncodec.loads(message)
                except ValueError:
                    continue
                if isinstance(asked, dict):
                    watcher.q = str(asked.get("q", ""))[:200]
                    page = asked.get("page", 0)
                    watcher.page = page if isinstance(page, int) else 0
                    watcher.kick.set()
        done.cancel()


class _Watcher:
    """One inspector WebSocket: its view and the event that wakes its sender."""

    def __init__(self) -> None:
        self.q = ""
        self.page = 0
        self.kick = trio.Event()
        self.scope: trio.CancelScope | None = None


_CSP: Final = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)


def _json(data: Any) -> HttpAnswer:
    return HttpAnswer(
        200,
        [(b"content-type", b"application/json"), (b"cache-control", b"no-store")],
        jsoncodec.dumps(data).encode(),
    )


_PAGE: list[bytes] = []


def _page() -> bytes:
    if not _PAGE:
        _PAGE.append(
            importlib.resources.files("actorcore.http").joinpath("inspector.html").read_bytes()
        )
    return _PAGE[0]
