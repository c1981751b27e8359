"""The HTTP application: answers one parsed HTTP request (see ``docs/http.md``).

Every actor request passes the same gates as a WebSocket connection, in the same order: the
``Origin`` allow-list, the registry's ``authorize`` gate, the lookup (a key route creates the
actor like ``/connect``), admission (held while the actor loads or sleeps, bounded by
``ready_timeout``; refused once destroy began), the actor's ``on_before_connect`` (which
receives the request as a :class:`~actorcore.ConnectRequest`), and then the action or the
``on_request`` hook as tracked work of the generation (it keeps the actor awake and finishes
before finalize). Actions run through the registry host's ``invoke``, the one place actions
run for every transport.
"""

from __future__ import annotations

import collections
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .. import deadlines, jsoncodec
from ..actor import Actor
from ..errors import (
    ActionNotFound,
    ActionTimeout,
    ActorError,
    ActorNotFound,
    ActorOverloaded,
    ActorReadyTimeout,
    ActorStartFailed,
    ActorStopping,
    Forbidden,
    InternalError,
    InvalidMessage,
    MessageTooLarge,
    RuntimeShutdown,
    SaveTimeout,
    StoreError,
)
from ..generation import ActorEntry, Generation
from ..lifecycle import WorkKind
from ..registry import host_of
from ..request import ClientAddress, ConnectRequest
from ..ws.origin import OriginPolicy
from .request import Headers, Request, Response
from .routes import HttpRoute, RouteKind, parse_http_route

if TYPE_CHECKING:
    from ..registry import Registry
    from .inspector import Inspector
    from .metrics import Metrics

__all__ = ["HttpAnswer", "HttpApp", "HttpExchange", "error_status"]

log = logging.getLogger("actorcore.http")

#: Bound on the registry's ``authorize`` gate for one request (as for a connection).
AUTHORIZE_TIMEOUT: Final = 10.0
#: ``Retry-After`` seconds sent with a 503.
RETRY_AFTER: Final = "1"
#: How long a browser may cache a CORS preflight answer.
PREFLIGHT_MAX_AGE: Final = "600"
#: Bound on an answer's wait for the save that makes it durable (the output gate).
DURABLE_ANSWER_TIMEOUT: Final = 10.0

_STATUS_BY_ERROR: Final[tuple[tuple[type[ActorError], int], ...]] = (
    (ActionNotFound, 404),
    (ActorNotFound, 404),  # ActorDestroyed included
    (Forbidden, 403),
    (InvalidMessage, 400),
    (MessageTooLarge, 413),
    (ActorReadyTimeout, 503),
    (ActorOverloaded, 503),
    (RuntimeShutdown, 503),
    (ActorStopping, 503),
    (StoreError, 503),
    (ActionTimeout, 504),
    (ActorStartFailed, 500),
    (InternalError, 500),
)


def error_status(error: ActorError) -> int:
    """The HTTP status of an :class:`~actorcore.ActorError`: the runtime's errors have
    theirs (``docs/http.md``); an error class may set ``http_status``; otherwise 400."""
    status = getattr(type(error), "http_status", None)
    if isinstance(status, int) and 400 <= status <= 599:
        return status
    for cls, code in _STATUS_BY_ERROR:
        if isinstance(error, cls):
            return code
    return 400


@attrs.frozen
class HttpExchange:
    """One request, as the front end read it."""

    method: str
    """Upper case."""
    target: str
    """The request target, query string included."""
    headers: tuple[tuple[bytes, bytes], ...]
    """Names lower-cased."""
    body: bytes
    client: ClientAddress | None = None

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower case), if any."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


@attrs.frozen
class HttpAnswer:
    """A response the front end writes."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    close: bool = False
    """Close the connection after this response."""


def _json_answer(status: int, obj: Any, extra: Sequence[tuple[bytes, bytes]] = ()) -> HttpAnswer:
    body = jsoncodec.dumps(obj).encode()
    return HttpAnswer(status, [(b"content-type", b"application/json"), *extra], body)


def error_answer(error: ActorError, status: int | None = None) -> HttpAnswer:
    """The JSON error response for ``error``: ``{"code", "message", "retryable"}``."""
    status = error_status(error) if status is None else status
    extra = [(b"retry-after", RETRY_AFTER.encode())] if status == 503 else []
    return _json_answer(status, error.to_wire(), extra)


def text_answer(status: int, text: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> HttpAnswer:
    """A ``text/plain`` response."""
    return HttpAnswer(
        status, [(b"content-type", b"text/plain; charset=utf-8"), *extra], text.encode()
    )


def _action_not_found(name: str, action: str) -> ActorError:
    # The HTTP code of the table; the protocol keeps ``actor.action_not_found``.
    return ActionNotFound(f"actor {name!r} has no action {action!r}", code="action.not_found")


class HttpApp:
    """Answers the HTTP requests of a server (routes in :mod:`actorcore.http.routes`)."""

    def __init__(
        self,
        registry: Registry,
        origins: OriginPolicy,
        *,
        metrics: Metrics | None = None,
        inspector: Inspector | None = None,
        actor_routes: bool = True,
        not_ready: Callable[[], str | None] | None = None,
    ) -> None:
        self.registry = registry
        self.host = host_of(registry)
        self.origins = origins
        self.metrics = metrics
        """The Prometheus collector (None: ``/metrics`` answers 404)."""
        self.inspector = inspector
        """The inspector (None: ``/inspector`` answers 404)."""
        self.actor_routes = actor_routes
        """False: the actor routes answer 404 (an envoy's status port: its actors are reached
        through the engine's gateway only)."""
        self.not_ready = not_ready
        """Why ``/readyz`` answers 503 besides a drain and a failing store (None: ready)."""
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        """Answered requests by (route label, status): ``actorcore_http_requests_total``."""

    def max_body(self, target: str) -> int:
        """The bound on the body of a request to ``target``: the actor's
        ``max_message_size`` (the largest of all for a by-id route)."""
        definitions = self.host.definitions
        route = parse_http_route(target)
        if route.name is not None and route.name in definitions:
            return definitions[route.name].options.max_message_size
        return max((d.options.max_message_size for d in definitions.values()), default=1 << 20)

    async def handle(self, exchange: HttpExchange) -> HttpAnswer:
        """Answer ``exchange``; never raises (except Cancelled)."""
        route = parse_http_route(exchange.target)
        try:
            answer = await self._route(route, exchange)
        except ActorError as exc:
            answer = error_answer(exc)
        except Exception:
            log.exception("HTTP %s %.200s crashed", exchange.method, exchange.target)
            answer = error_answer(InternalError("the request failed"))
        self.requests[route.kind.value, answer.status] += 1
        return answer

    def count_bad_head(self, status: int) -> None:
        """Count a request whose head the front end refused (400, 431) before any route."""
        self.requests[RouteKind.BAD_REQUEST.value, status] += 1

    def count(self, target: str, status: int) -> None:
        """Count a request the front end answered itself (413, 408, 503 at capacity)."""
        self.requests[parse_http_route(target).kind.value, status] += 1

    # ---------------------------------------------------------------- routing

    async def _route(self, route: HttpRoute, exchange: HttpExchange) -> HttpAnswer:
        origin = exchange.header(b"origin")
        host = exchange.header(b"host")
        if not self.origins.allows(origin, host.lower() if host is not None else None):
            log.info("refused an HTTP request from origin %r", (origin or "")[:100])
            await trio.lowlevel.checkpoint()
            return error_answer(Forbidden("origin not allowed"))
        kind = route.kind
        method = exchange.method
        if kind is RouteKind.HEALTHZ:
            await trio.lowlevel.checkpoint()
            return text_answer(200, "ok\n")
        if kind is RouteKind.READYZ:
            await trio.lowlevel.checkpoint()
            return self._readyz()
        if kind is RouteKind.METRICS and self.metrics is not None:
            await trio.lowlevel.checkpoint()
            body, content_type = self.metrics.scrape(exchange.header(b"accept"))
            return HttpAnswer(200, [(b"content-type", content_type.encode())], body)
        if kind is RouteKind.INSPECTOR and self.inspector is not None:
            return await self.inspector.handle(route, exchange)
        if not self.actor_routes:
            await trio.lowlevel.checkpoint()
            return error_answer(ActorNotFound(f"no route for {exchange.target[:200]!r}"))
        if kind in (RouteKind.ACTION, RouteKind.ACTION_BY_ID):
            cors = self._cors(origin)
            if method == "OPTIONS":
                await trio.lowlevel.checkpoint()
                return self._preflight(exchange, cors)
            if method != "POST":
                await trio.lowlevel.checkpoint()
                return text_answer(405, "use POST\n", [(b"allow", b"POST, OPTIONS")])
            answer = await self._action(route, exchange)
            return attrs.evolve(answer, headers=[*answer.headers, *cors])
        if kind in (RouteKind.HANDLER, RouteKind.HANDLER_BY_ID):
            return await self._handler(route, exchange)
        await trio.lowlevel.checkpoint()
        if kind is RouteKind.WEBSOCKET:
            # As the opening handshake answers them (and the connection ends).
            if method != "GET":
                return attrs.evolve(
                    text_answer(405, "only GET upgrades to a WebSocket\n"), close=True
                )
            answer = text_answer(
                426,
                "this route speaks WebSocket: send an upgrade request\n",
                [(b"upgrade", b"websocket"), (b"sec-websocket-version", b"13")],
            )
            return attrs.evolve(answer, close=True)
        return error_answer(ActorNotFound(f"no route for {exchange.target[:200]!r}"))

    def _readyz(self) -> HttpAnswer:
        registry = self.registry
        if not registry.running or registry.draining:
            return text_answer(503, "draining\n", [(b"retry-after", RETRY_AFTER.encode())])
        if self.host.store_failing:
            return text_answer(503, "store failing\n", [(b"retry-after", RETRY_AFTER.encode())])
        reason = self.not_ready() if self.not_ready is not None else None
        if reason is not None:
            return text_answer(503, f"{reason}\n", [(b"retry-after", RETRY_AFTER.encode())])
        return text_answer(200, "ready\n")

    def _cors(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """CORS headers for an allowed cross-origin request (the origin check passed)."""
        if origin is None:
            return []
        return [
            (b"access-control-allow-origin", origin.encode("latin-1", "replace")),
            (b"vary", b"Origin"),
        ]

    def _preflight(self, exchange: HttpExchange, cors: list[tuple[bytes, bytes]]) -> HttpAnswer:
        headers = [(b"allow", b"POST, OPTIONS"), *cors]
        if cors:
            asked = exchange.header(b"access-control-request-headers") or "content-type"
            headers += [
                (b"access-control-allow-methods", b"POST, OPTIONS"),
                (b"access-control-allow-headers", asked.encode("latin-1", "replace")),
                (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
            ]
        return HttpAnswer(204, headers, b"")

    # ---------------------------------------------------------------- actors

    def _connect_request(self, route: HttpRoute, exchange: HttpExchange) -> ConnectRequest:
        return ConnectRequest(
            path=exchange.target,
            headers=exchange.headers,
            client=exchange.client,
            name=route.name,
            key=route.key,
            actor_id=route.actor_id,
        )

    async def _authorize(self, request: ConnectRequest) -> None:
        gate = self.host.authorize
        if gate is None:
            return
        try:
            with trio.fail_after(AUTHORIZE_TIMEOUT):
                await gate(request)
        except ActorError:
            raise
        except trio.TooSlowError:
            log.error("authorize did not answer within %.0f s", AUTHORIZE_TIMEOUT)
            raise InternalError("authorize failed") from None
        except Exception:
            log.exception("authorize raised")
            raise InternalError("authorize failed") from None

    async def _resolve(self, route: HttpRoute, request: ConnectRequest) -> ActorEntry:
        if route.actor_id is not None:
            return await self.host.find_entry(route.actor_id)
        assert route.name is not None and route.key is not None
        if route.name not in self.host.definitions:
            raise ActorNotFound(f"no actor definition named {route.name!r}")
        client = request.client.host if request.client is not None else None
        return await self.host.find_entry_by_key(
            route.name, route.key, create=True, input=None, client=client
        )

    async def _admit(self, entry: ActorEntry, request: ConnectRequest) -> Generation:
        """Admission, then ``on_before_connect`` (if the actor has one) and admission again:
        the generation to run the request in now (the caller tracks its work before its next
        checkpoint)."""
        options = entry.definition.options
        guarded = entry.definition.cls.on_before_connect is not Actor.on_before_connect

        def not_ready() -> ActorError:
            return ActorReadyTimeout(
                f"actor {entry.actor_id} was not ready within {options.ready_timeout}s"
            )

        with deadlines.fail_after(options.ready_timeout, not_ready):
            while True:
                gen = await self.host.admit_entry(entry, WorkKind.CALL)
                if not guarded:
                    return gen
                instance = gen.instance
                assert instance is not None
                work = gen.track_work("http:on_before_connect", timeout=options.hook_timeout)
                with work as scope:
                    try:
                        await instance.on_before_connect(gen.ctx, None, request)
                    except ActorError:
                        raise
                    except Exception as exc:
                        log.exception(
                            "actor %s id=%s: on_before_connect raised", entry.name, gen.actor_id
                        )
                        raise InternalError("on_before_connect failed") from exc
                if scope.cancelled_caught:
                    if work.timed_out:
                        raise InternalError("on_before_connect exceeded hook_timeout")
                    raise ActorStopping(f"actor {entry.actor_id} is finalizing")
                if entry.admitted(WorkKind.CALL) is gen:
                    return gen

    async def _action(self, route: HttpRoute, exchange: HttpExchange) -> HttpAnswer:
        assert route.action is not None
        args = _parse_args(exchange.body)
        request = self._connect_request(route, exchange)
        await self._authorize(request)
        if route.name is not None:
            definition = self.host.definitions.get(route.name)
            if definition is None:
                raise ActorNotFound(f"no actor definition named {route.name!r}")
            if route.action not in definition.actions:
                raise _action_not_found(route.name, route.action)
        entry = await self._resolve(route, request)
        fn = entry.definition.actions.get(route.action)
        if fn is None:
            raise _action_not_found(entry.name, route.action)
        _check_args(fn, args, route.action)
        gen = await self._admit(entry, request)
        options = gen.definition.options
        work = gen.track_work(f"action:{route.action}", timeout=options.action_timeout)
        try:
            output = await self.host.invoke(gen, work, route.action, fn, args, {}, None)
        except ActorError:
            raise
        except Exception:
            log.exception(
                "actor %s id=%s: action %r raised", entry.name, gen.actor_id, route.action
            )
            raise InternalError("the action raised") from None
        try:
            answer = _json_answer(200, {"output": output})
        except (TypeError, ValueError):
            log.exception("action %r returned a value that is not JSON", route.action)
            raise InternalError("the action's output is not JSON-serialisable") from None
        await self._durable(entry, gen)
        return answer

    async def _durable(self, entry: ActorEntry, gen: Generation) -> None:
        """With the output gate (``durable_outputs`` on a durable store), an answer leaves
        only once the state it follows is saved, as on a protocol connection."""
        gate = self.host.output_gate(entry, gen)
        if gate is None:
            await trio.lowlevel.checkpoint()
            return
        ticket = gate.ticket()
        with trio.move_on_after(DURABLE_ANSWER_TIMEOUT):
            await gate.wait(ticket)
            return
        raise SaveTimeout(
            f"the state was not saved within {DURABLE_ANSWER_TIMEOUT:g} s of the answer: "
            "the request's outcome is unknown"
        )

    async def _handler(self, route: HttpRoute, exchange: HttpExchange) -> HttpAnswer:
        request = self._connect_request(route, exchange)
        await self._authorize(request)
        if route.name is not None:
            definition = self.host.definitions.get(route.name)
            if definition is None:
                raise ActorNotFound(f"no actor definition named {route.name!r}")
            if not _has_handler(definition.cls):
                return _no_handler(route.name)
        entry = await self._resolve(route, request)
        if not _has_handler(entry.definition.cls):
            return _no_handler(entry.name)
        gen = await self._admit(entry, request)
        options = gen.definition.options
        work = gen.track_work("http:on_request", timeout=options.action_timeout)
        response: Any = None
        instance = gen.instance
        assert instance is not None
        http_request = Request(
            method=exchange.method,
            path=route.subpath,
            query=route.query,
            headers=Headers(exchange.headers),
            body=exchange.body,
        )
        hook: Callable[..., Awaitable[Any]] = instance.on_request
        with work as scope:
            try:
                if gen.serial:
                    response = await gen.in_turn(hook, gen.ctx, http_request)
                else:
                    response = await hook(gen.ctx, http_request)
            except ActorError:
                raise
            except Exception:
                log.exception("actor %s id=%s: on_request raised", entry.name, gen.actor_id)
                raise InternalError("on_request raised") from None
        if scope.cancelled_caught:
            if work.timed_out:
                raise ActionTimeout("on_request exceeded the action_timeout")
            raise ActorStopping(f"actor {entry.actor_id} is finalizing")
        if not isinstance(response, Response) or not 200 <= response.status <= 599:
            log.error("actor %s: on_request returned %r, not a Response", entry.name, response)
            raise InternalError("on_request did not return a valid Response")
        await self._durable(entry, gen)
        headers = [
            (n.lower().encode("latin-1"), str(v).encode("latin-1"))
            for n, v in response.headers.items()
            if n.lower() not in ("content-length", "transfer-encoding", "connection")
        ]
        if not any(n == b"content-type" for n, _ in headers) and response.body:
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        return HttpAnswer(response.status, headers, response.body)


def _has_handler(cls: type[Actor]) -> bool:
    return cls.on_request is not Actor.on_request


def _no_handler(name: str) -> HttpAnswer:
    return error_answer(ActorNotFound(f"actor {name!r} has no on_request handler"), 404)


def _parse_args(body: bytes) -> list[Any]:
    """The ``args`` of an action request body (``{"args": [...]}``, optional)."""
    if not body.strip():
        return []
    try:
        payload = jsoncodec.loads(body)
    except (ValueError, RecursionError):
        raise InvalidMessage("the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidMessage('the body must be a JSON object: {"args": [...]}')
    args = payload.get("args", [])
    if not isinstance(args, list):
        raise InvalidMessage('"args" must be a JSON array')
    return args


def _check_args(fn: Callable[..., Any], args: list[Any], action: str) -> None:
    """400 for arguments the action cannot take (checked before it runs)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, None, *args)
    except TypeError as exc:
        raise InvalidMessage(f"wrong arguments for action {action!r}: {exc}") from None
