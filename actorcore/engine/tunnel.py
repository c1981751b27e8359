"""TunnelSocket: a client WebSocket that reaches this process through the engine's gateway,
as the dispatcher's :class:`~actorcore.conn.Transport`.

The gateway terminates the client's WebSocket and forwards it over the envoy link as tunnel
messages of one request (``gatewayId`` + ``requestId``): ``WebSocketOpen`` (index 0), then
``WebSocketMessage`` (1, 2, ...) and ``WebSocketClose``. This side answers the open with
``ToRivetWebSocketOpen`` (its index 0) and numbers what it sends from there. A message whose
index was already seen (a replay after a reconnect) is dropped.

Messages wait in a bounded buffer (``max_buffered``) until the dispatcher reads them: a client
that sends faster than its actor reads gets 1013 ``actor.overloaded``, as on actorcore's own
listener when an outbox fills.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import Any, Final, Protocol

import trio

from ..conn import TransportClosed
from .bare import Variant
from .messages_v8 import MessageId

__all__ = ["TunnelSocket", "conn_id_of"]

log = logging.getLogger("actorcore.engine")

#: Messages a tunnelled socket buffers before the dispatcher reads them.
MAX_BUFFERED: Final = 1024
#: Bound on sending the close of a socket being aborted.
ABORT_CLOSE_TIMEOUT: Final = 1.0

_INDEX_SPACE: Final = 1 << 16


class TunnelSender(Protocol):
    """The part of :class:`~actorcore.engine.link.EnvoyLink` a socket sends through."""

    async def send_tunnel(self, message_id: MessageId, kind: Variant) -> None:
        """Send one tunnel message; EngineUnavailable if the link is down."""
        ...


class TunnelSocket:
    """One tunnelled WebSocket (see the module docstring)."""

    def __init__(
        self,
        link: TunnelSender,
        gateway_id: bytes,
        request_id: bytes,
        *,
        max_buffered: int = MAX_BUFFERED,
        hibernatable: bool = False,
        next_out: int = 0,
        restored: bool = False,
    ) -> None:
        self._link = link
        self.gateway_id = gateway_id
        self.request_id = request_id
        self.hibernatable = hibernatable
        """The gateway holds this socket while the actor sleeps or moves: each message is
        acknowledged once the dispatcher took it, and unacknowledged ones are sent again to
        the actor's next generation."""
        self._max_buffered = max_buffered
        self._incoming: collections.deque[tuple[int, str | bytes]] = collections.deque()
        self._arrived = trio.Event()
        self._last_in: int | None = None if restored else 0
        """Index of the last message received (the open is 0; a restored socket takes the
        first message the gateway sends again)."""
        self._taken: collections.deque[list[Any]] = collections.deque()
        """Messages taken by the dispatcher and not acknowledged yet, in order:
        ``[index, state]`` with state "taken", "held" (kept for the next generation) or
        "done" (delivered, or handled)."""
        self._acked: int | None = None
        self._next_out = next_out
        self.path = "/connect"
        """The request path the gateway forwarded (kept with a hibernated socket)."""
        self._closed: tuple[int, str] | None = None
        """Why receive() ends: the client's close, ours, or an abort."""
        self._close_sent = False

    @property
    def key(self) -> tuple[bytes, bytes]:
        """The gateway's id of this socket."""
        return (self.gateway_id, self.request_id)

    # ---------------------------------------------------------------- from the gateway

    def feed_message(self, index: int, data: bytes, binary: bool) -> bool:
        """A client message (index from the gateway). False when the buffer is full: the
        caller closes the socket with 1013."""
        if self._closed is not None:
            return True
        last = self._last_in
        if last is not None and (
            (index - last) % _INDEX_SPACE == 0 or (index - last) % _INDEX_SPACE > _INDEX_SPACE // 2
        ):
            return True  # already seen: a replay
        self._last_in = index
        if len(self._incoming) >= self._max_buffered:
            return False
        self._incoming.append((index, data if binary else data.decode("utf-8", "replace")))
        self._arrived.set()
        return True

    def feed_close(self, code: int | None, reason: str | None) -> None:
        """The client closed (or the gateway dropped it)."""
        if self._closed is None:
            self._closed = (code if code is not None else 1005, reason or "")
        self._arrived.set()

    # ---------------------------------------------------------------- Transport

    async def accept(self, can_hibernate: bool) -> TunnelSocket:
        """Answer the open (``ToRivetWebSocketOpen``); the dispatcher's ``accept``."""
        await self._send(Variant("ToRivetWebSocketOpen", {"canHibernate": can_hibernate}))
        return self

    async def receive(self) -> str | bytes:
        """The next client message; TransportClosed once closed.

        On a hibernatable socket, asking for the next message settles the one before (the
        dispatcher delivered or handled it), unless the dispatcher said it holds it for the
        next generation (:meth:`held`; then :meth:`released` settles it). Settled messages
        are acknowledged to the gateway in order: one held back holds back the
        acknowledgement of those after it, so the gateway sends again, to the actor's next
        generation, every message that no generation got."""
        taken = self._taken
        if taken and taken[-1][1] == "taken":
            taken[-1][1] = "done"
        while True:
            if taken:
                await self._acknowledge()
            if self._incoming:
                break
            if self._closed is not None:
                raise TransportClosed(*self._closed)
            await self._arrived.wait()
            self._arrived = trio.Event()
        await trio.lowlevel.checkpoint()
        index, message = self._incoming.popleft()
        if self.hibernatable:
            taken.append([index, "taken"])
        return message

    def held(self) -> None:
        """The dispatcher holds the message it took last for the actor's next generation."""
        if self._taken and self._taken[-1][1] == "taken":
            self._taken[-1][1] = "held"

    def released(self) -> None:
        """The oldest held message was delivered."""
        for item in self._taken:
            if item[1] == "held":
                item[1] = "done"
                break
        self._arrived.set()  # the reader sends the acknowledgement

    async def _acknowledge(self) -> None:
        taken = self._taken
        upto = None
        while taken and taken[0][1] == "done":
            upto = taken.popleft()[0]
        if upto is not None and self.hibernatable:
            self._acked = upto
            with contextlib.suppress(TransportClosed):
                await self._send(Variant("ToRivetWebSocketMessageAck", {"index": upto}))

    def restore(self, next_out: int, path: str) -> None:
        """Continue a hibernated socket: its outgoing numbering and its path, as saved."""
        self._next_out = next_out % _INDEX_SPACE
        self.path = path

    @property
    def next_out(self) -> int:
        """The index the next message to the gateway gets (kept with a hibernated socket)."""
        return self._next_out

    def hibernate(self) -> None:
        """The actor's generation ended and the gateway holds the client's socket: this side
        lets go of it quietly (no close); the next generation gets a socket of its own."""
        if self._closed is None:
            self._closed = (1000, "hibernated")
            self._close_sent = True
        self._arrived.set()

    async def send(self, message: str | bytes) -> None:
        """Send one message to the client."""
        if self._close_sent or (self._closed is not None and self._closed[0] == 1006):
            raise TransportClosed(*(self._closed or (1006, "")))
        binary = isinstance(message, bytes)
        data = message if isinstance(message, bytes) else message.encode("utf-8")
        await self._send(Variant("ToRivetWebSocketMessage", {"data": data, "binary": binary}))

    def start_close(self, code: int, reason: str) -> bool:
        """Never at once: the close goes through the link (see :meth:`close`)."""
        return False

    async def close(self, code: int, reason: str) -> None:
        """Send the close; the gateway closes the client's socket and answers it."""
        if not self._close_sent:
            self._close_sent = True
            with contextlib.suppress(TransportClosed):
                await self._send(
                    Variant(
                        "ToRivetWebSocketClose",
                        {"code": code, "reason": reason, "hibernate": False},
                    )
                )
        if self._closed is None:
            self._closed = (code, reason)
        self._arrived.set()

    async def abort(self) -> None:
        """End the socket now (a 1011 close is sent, bounded, if the link is up)."""
        with trio.move_on_after(ABORT_CLOSE_TIMEOUT):
            await self.close(1011, "actor.internal_error")
        self._closed = (1006, "")
        self._arrived.set()

    async def _send(self, kind: Variant) -> None:
        from .link import EngineUnavailable

        message_id: MessageId = {
            "gatewayId": self.gateway_id,
            "requestId": self.request_id,
            "messageIndex": self._next_out,
        }
        self._next_out = (self._next_out + 1) % _INDEX_SPACE
        try:
            await self._link.send_tunnel(message_id, kind)
        except EngineUnavailable as exc:
            self._closed = (1006, "")
            self._arrived.set()
            raise TransportClosed(1006, "") from exc


def conn_id_of(socket: TunnelSocket) -> str:
    """The id of the connection a tunnelled socket carries: its gateway and request ids, so
    the same client socket is the same connection in every generation that serves it."""
    return socket.gateway_id.hex() + socket.request_id.hex()
