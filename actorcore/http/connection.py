"""One HTTP/1.1 connection of the server front end, after its first request head: h11 for
the protocol, requests answered one at a time (keep-alive), and a WebSocket upgrade on a later
request handed back to the server.

Bounds (``docs/http.md``): the request head (16 KiB, as a handshake), the body (the route's
actor ``max_message_size``; 413 past it), ``http_request_timeout`` from a request's head to its
answer having been written (408 if the answer had not begun), ``http_keepalive_timeout`` of
idleness between requests, and ``http_max_requests`` requests per connection.
"""

from __future__ import annotations

import http
import logging
from typing import TYPE_CHECKING

import attrs
import h11
import trio

from ..request import ClientAddress
from ..ws.handshake import (
    HandshakeRefused,
    UpgradeRequest,
    is_upgrade,
    read_request_head,
    upgrade_request,
)
from .app import HttpAnswer, HttpApp, HttpExchange, text_answer

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["HttpConnection", "HttpLimits"]

log = logging.getLogger("actorcore.http")


@attrs.frozen(kw_only=True)
class HttpLimits:
    """The HTTP bounds of a server (fields of :class:`~actorcore.ws.server.ServerOptions`)."""

    request_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    max_requests: int = 100


class _TooLarge(Exception):
    pass


class HttpConnection:
    """Serves the HTTP requests of one connection (see the module docstring)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        app: HttpApp,
        limits: HttpLimits,
        *,
        client: ClientAddress | None,
        receive_size: int,
        closing: Callable[[], bool],
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.app = app
        self.limits = limits
        self.client = client
        self.receive_size = receive_size
        self._closing = closing
        self.idle_scope: trio.CancelScope | None = None
        """The wait for the next request head, while there is one (the drain cancels it)."""

    async def run(self, first: h11.Request) -> UpgradeRequest | None:
        """Answer ``first`` and the requests that follow it; return a WebSocket upgrade that
        came later on this connection, or None when the connection is done."""
        event: h11.Request | None = first
        served = 0
        while event is not None:
            served += 1
            last = served >= self.limits.max_requests
            if not await self._exchange(event, last=last):
                return None
            if last or self._closing() or self.conn.our_state is not h11.DONE:
                return None
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return None
            event = None
            with trio.move_on_after(self.limits.keepalive_timeout) as self.idle_scope:
                try:
                    event = await read_request_head(self.stream, self.conn, self.receive_size)
                except h11.RemoteProtocolError as exc:
                    await self._send(text_answer(exc.error_status_hint, "bad request\n"), True)
                    return None
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
            self.idle_scope = None
            if event is not None and is_upgrade(event):
                try:
                    return await upgrade_request(self.stream, self.conn, event)
                except HandshakeRefused:
                    return None
        return None  # idle past the keep-alive timeout (or drained)

    async def refuse(self, answer: HttpAnswer) -> None:
        """Answer the first request with ``answer`` and end the connection (at capacity)."""
        await self._send(answer, True)

    async def _exchange(self, event: h11.Request, *, last: bool) -> bool:
        """Read the body, answer; False if the connection must end now."""
        target = event.target.decode("ascii", "replace")
        started = False
        with trio.move_on_after(self.limits.request_timeout) as scope:
            try:
                body = await self._body(event, self.app.max_body(target))
            except _TooLarge:
                self.app.count(target, 413)
                await self._send(text_answer(413, "request body too large\n"), True)
                return False
            except h11.RemoteProtocolError as exc:
                await self._send(text_answer(exc.error_status_hint, "bad request\n"), True)
                return False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            exchange = HttpExchange(
                method=event.method.decode("ascii", "replace").upper(),
                target=target,
                headers=tuple((bytes(n), bytes(v)) for n, v in event.headers),
                body=body,
                client=self.client,
            )
            answer = await self.app.handle(exchange)
            started = True
            close = last or answer.close or self._closing()
            return await self._send(answer, close, head_only=exchange.method == "HEAD")
        if scope.cancelled_caught and not started:
            self.app.count(target, 408)
            with trio.move_on_after(1.0):
                await self._send(text_answer(408, "request timeout\n"), True)
        return False

    async def _body(self, event: h11.Request, limit: int) -> bytes:
        for name, value in event.headers:
            if name == b"content-length" and int(value) > limit:
                raise _TooLarge  # refused before the client sends it (Expect: 100-continue)
        chunks: list[bytes] = []
        size = 0
        while True:
            got = self.conn.next_event()
            if got is h11.NEED_DATA:
                if self.conn.they_are_waiting_for_100_continue:
                    await self._write(
                        self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                data = await self.stream.receive_some(self.receive_size)
                if not data:
                    raise trio.BrokenResourceError("client left during a request")
                self.conn.receive_data(bytes(data))
            elif isinstance(got, h11.Data):
                size += len(got.data)
                if size > limit:
                    raise _TooLarge
                chunks.append(bytes(got.data))
            elif isinstance(got, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise trio.BrokenResourceError("client left during a request")

    async def _send(self, answer: HttpAnswer, close: bool, *, head_only: bool = False) -> bool:
        """Write ``answer``; False if the connection must end (closing, or the write failed)."""
        headers = [
            *answer.headers,
            (b"content-length", str(len(answer.body)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        try:
            head = h11.Response(
                status_code=answer.status, headers=headers, reason=_reason(answer.status)
            )
            data = self.conn.send(head) or b""
            if answer.body and not head_only:
                data += self.conn.send(h11.Data(data=answer.body)) or b""
            data += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            log.debug("h11 cannot answer in this state", exc_info=True)
            return False
        return await self._write(data) and not close

    async def _write(self, data: bytes | None) -> bool:
        if not data:
            return True
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
