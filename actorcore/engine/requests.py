"""TunnelRequests: HTTP requests that reach this process through the engine's gateway.

The gateway forwards a client's HTTP request to the envoy running its actor as tunnel messages
of one request (``gatewayId`` + ``requestId``): ``ToEnvoyRequestStart`` with the method, the
path after ``/gateway/{actor}`` (``rvt-*`` query parameters removed), the headers and the body,
then, if ``stream`` is set, ``ToEnvoyRequestChunk`` messages up to one with ``finish``;
``ToEnvoyRequestAbort`` when the client went away. The answer is one ``ToRivetResponseStart``
(message index 0) with the status, the headers and the whole body.

Each request is answered by the same :class:`~actorcore.http.app.HttpApp` as on actorcore's own
listener, at ``/actors/by-id/{actor_id}{path}``: ``POST .../actions/{action}`` runs an action,
``.../http[/...]`` the actor's ``on_request``, with the same gates (authorize, admission,
``on_before_connect``), statuses and JSON errors. Bounds: at most ``max_requests`` in flight per
envoy (503 ``actor.overloaded`` beyond), the body by the actor's ``max_message_size`` (413), a
streamed body by ``body_timeout`` (408), the response body by the engine's
``maxResponsePayloadSize`` (500).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import quote

import attrs
import trio

from ..errors import ActorOverloaded, InternalError
from ..http.app import HttpAnswer, HttpExchange, error_answer, text_answer
from .bare import Variant
from .messages_v8 import MessageId, ToEnvoyRequestChunk, ToEnvoyRequestStart, ToRivetResponseStart

if TYPE_CHECKING:
    from ..http.app import HttpApp

__all__ = ["RequestStatistics", "TunnelRequests"]

log = logging.getLogger("actorcore.engine")

#: HTTP requests in flight through the gateway, per envoy.
MAX_REQUESTS: Final = 1024
#: Bound on the chunks of a streamed request body.
BODY_TIMEOUT: Final = 30.0
#: Bound on sending the response to the gateway.
SEND_TIMEOUT: Final = 10.0

#: Headers the gateway's HTTP layer sets itself (a response carries its body whole).
_HOP_HEADERS: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class ResponseSender(Protocol):
    """The part of :class:`~actorcore.engine.link.EnvoyLink` the requests answer through."""

    max_response_payload_size: int | None
    """The largest response the engine takes (from its ``ToEnvoyInit``; None: not known)."""

    async def send_tunnel(self, message_id: MessageId, kind: Variant) -> None:
        """Send one tunnel message; EngineUnavailable if the link is down."""
        ...


@attrs.frozen
class RequestStatistics:
    """What :meth:`TunnelRequests.statistics` reports."""

    in_flight: int
    """Requests being answered now."""
    answered: int
    """Responses sent (every status)."""
    aborted: int
    """Requests the gateway aborted before their answer (the client went away)."""
    refused: int
    """Requests answered 503 because ``max_requests`` were in flight."""


@attrs.define(eq=False)
class _Request:
    """One request in flight: its body so far, and the scope its answer runs in."""

    method: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...]
    limit: int
    body: bytearray
    complete: trio.Event = attrs.field(factory=trio.Event)
    too_large: bool = False
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)


class TunnelRequests:
    """Answers the HTTP requests the gateway forwards (see the module docstring). The link's
    handler feeds it synchronously (:meth:`start`, :meth:`chunk`, :meth:`abort`); each answer
    runs in a task of the runtime's nursery."""

    def __init__(
        self,
        link: ResponseSender,
        app: HttpApp,
        nursery: trio.Nursery,
        *,
        max_requests: int = MAX_REQUESTS,
    ) -> None:
        self._link = link
        self._app = app
        self._nursery = nursery
        self.max_requests = max_requests
        self._requests: dict[tuple[bytes, bytes], _Request] = {}
        self._answered = 0
        self._aborted = 0
        self._refused = 0

    def statistics(self) -> RequestStatistics:
        """Requests in flight, answered, aborted and refused so far."""
        return RequestStatistics(
            in_flight=len(self._requests),
            answered=self._answered,
            aborted=self._aborted,
            refused=self._refused,
        )

    # ---------------------------------------------------------------- from the gateway

    def start(self, key: tuple[bytes, bytes], start: ToEnvoyRequestStart) -> None:
        """``ToEnvoyRequestStart``: answer it (once its body is complete)."""
        if key in self._requests:
            return  # a replay of a request already being answered
        if len(self._requests) >= self.max_requests:
            self._refused += 1
            overloaded = ActorOverloaded(
                f"more than {self.max_requests} HTTP requests in flight on this envoy"
            )
            self._nursery.start_soon(self._send, key, error_answer(overloaded))
            return
        path = start["path"] if start["path"].startswith("/") else "/" + start["path"]
        target = f"/actors/by-id/{quote(start['actorId'], safe='')}{path}"
        headers = tuple(
            (name.lower().encode("latin-1", "replace"), value.encode("latin-1", "replace"))
            for name, value in start["headers"].items()
        )
        request = _Request(
            method=start["method"].upper(),
            path=target,
            headers=headers,
            limit=self._app.max_body(target),
            body=bytearray(),
        )
        self._requests[key] = request
        self._add_body(request, start["body"] or b"", finish=not start["stream"])
        self._nursery.start_soon(self._answer, key, request, name="engine http request")

    def chunk(self, key: tuple[bytes, bytes], chunk: ToEnvoyRequestChunk) -> None:
        """``ToEnvoyRequestChunk``: more of a streamed body."""
        request = self._requests.get(key)
        if request is not None and not request.complete.is_set():
            self._add_body(request, chunk["body"], finish=chunk["finish"])

    def abort(self, key: tuple[bytes, bytes]) -> None:
        """``ToEnvoyRequestAbort``: the client went away; its answer is not sent."""
        request = self._requests.pop(key, None)
        if request is not None:
            self._aborted += 1
            request.scope.cancel()

    # ---------------------------------------------------------------- answering

    def _add_body(self, request: _Request, data: bytes, *, finish: bool) -> None:
        if len(request.body) + len(data) > request.limit:
            request.too_large = True
            request.body.clear()
            request.complete.set()
            return
        request.body += data
        if finish:
            request.complete.set()

    async def _answer(self, key: tuple[bytes, bytes], request: _Request) -> None:
        try:
            with request.scope:
                answer = await self._exchange(request)
        finally:
            # Still ours unless the gateway aborted it (then nothing is sent).
            ours = self._requests.get(key) is request
            if ours:
                del self._requests[key]
        if ours:
            await self._send(key, answer)

    async def _exchange(self, request: _Request) -> HttpAnswer:
        with trio.move_on_after(BODY_TIMEOUT):
            await request.complete.wait()
        if not request.complete.is_set():
            self._app.count(request.path, 408)
            return text_answer(408, "request timeout\n")
        if request.too_large:
            self._app.count(request.path, 413)
            return text_answer(413, "request body too large\n")
        exchange = HttpExchange(
            method=request.method,
            target=request.path,
            headers=request.headers,
            body=bytes(request.body),
        )
        answer = await self._app.handle(exchange)
        limit = self._link.max_response_payload_size
        if limit is not None and len(answer.body) > limit:
            log.error(
                "an HTTP answer of %d bytes is over the engine's limit of %d bytes",
                len(answer.body),
                limit,
            )
            return error_answer(
                InternalError(f"the response is larger than the engine's limit of {limit} bytes")
            )
        return answer

    async def _send(self, key: tuple[bytes, bytes], answer: HttpAnswer) -> None:
        from .link import EngineUnavailable

        headers: dict[str, str] = {}
        for raw_name, raw_value in answer.headers:
            if raw_name in _HOP_HEADERS:
                continue
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            # One value per name on this protocol: repeated headers are joined (RFC 9110 5.3).
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        headers["content-length"] = str(len(answer.body))
        response: ToRivetResponseStart = {
            "status": answer.status,
            "headers": headers,
            "body": answer.body or None,
            "stream": False,
        }
        message_id: MessageId = {"gatewayId": key[0], "requestId": key[1], "messageIndex": 0}
        try:
            with trio.fail_after(SEND_TIMEOUT):
                await self._link.send_tunnel(message_id, Variant("ToRivetResponseStart", response))
        except (EngineUnavailable, trio.TooSlowError):
            log.info("could not send an HTTP answer through the gateway: the link is down")
            return
        except Exception:
            # A bug here must not end the runtime's nursery, and with it every actor.
            log.exception("could not send an HTTP answer through the gateway")
            return
        self._answered += 1
