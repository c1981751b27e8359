"""The floor of the ``engine`` workload: an envoy that answers the engine at the link level.

:class:`FloorHandler` is an :class:`~actorcore.engine.link.EnvoyHandler` with no registry, no
actor and no dispatcher: it reports every actor the engine starts as running at once, and
echoes every message of a tunnelled WebSocket straight back through the
:class:`~actorcore.engine.link.EnvoyLink`. An echo round trip through the engine to it is what
a runtime that does (almost) nothing would get: the engine's share of the round trip. Run by
``python -m benchmarks.engine floor`` (:func:`benchmarks.engine.run_floor`).
"""

from __future__ import annotations

import math
from typing import Final

import trio

from actorcore.engine.bare import Variant
from actorcore.engine.link import EngineUnavailable, EnvoyLink, EnvoyOptions
from actorcore.engine.messages_v8 import MessageId, ToEnvoyTunnelMessage

__all__ = ["ACTOR_NAMES", "FloorHandler"]

ACTOR_NAMES: Final = ["echo"]
"""The actor names the link announces (the engine refuses a get-or-create of another)."""

_INDEX_SPACE: Final = 1 << 16


class FloorHandler:
    """Actors that only run, and WebSockets that only echo (see the module docstring). Its
    link is :attr:`link`: ``await nursery.start(handler.link.run)``."""

    def __init__(self, options: EnvoyOptions, nursery: trio.Nursery) -> None:
        self.link = EnvoyLink(options, self, ACTOR_NAMES)
        self._nursery = nursery
        self._sockets: dict[tuple[bytes, bytes], trio.MemorySendChannel[Variant]] = {}
        """What each open socket has to send, in order, to its sender task."""

    def on_command(self, actor_id: str, generation: int, command: Variant) -> None:
        """Start: running at once. Stop: stopped at once (``Ok``)."""
        if command.tag == "CommandStartActor":
            state = Variant("ActorStateRunning")
        elif command.tag == "CommandStopActor":
            state = Variant("ActorStateStopped", {"code": "Ok", "message": None})
        else:
            return
        update = Variant("EventActorStateUpdate", {"state": state})
        self.link.queue_event(actor_id, generation, update)
        if command.tag == "CommandStopActor":
            self.link.forget_generation(actor_id, generation)

    def on_tunnel(self, message: ToEnvoyTunnelMessage) -> None:
        """Open: accepted (not hibernatable). Message: sent back as it came. Close:
        forgotten. HTTP requests are not served."""
        message_id = message["messageId"]
        key = (message_id["gatewayId"], message_id["requestId"])
        kind = message["messageKind"]
        tag = kind.tag
        if tag == "ToEnvoyWebSocketOpen":
            send, receive = trio.open_memory_channel[Variant](math.inf)
            self._sockets[key] = send
            send.send_nowait(Variant("ToRivetWebSocketOpen", {"canHibernate": False}))
            self._nursery.start_soon(self._sender, key, send, receive, name="floor websocket")
        elif tag == "ToEnvoyWebSocketMessage":
            out = self._sockets.get(key)
            if out is not None:
                data = {"data": kind.val["data"], "binary": kind.val["binary"]}
                out.send_nowait(Variant("ToRivetWebSocketMessage", data))
        elif tag == "ToEnvoyWebSocketClose":
            out = self._sockets.pop(key, None)
            if out is not None:
                out.close()

    def on_lost(self) -> None:
        """Nothing runs here that would have to stop."""

    async def _sender(
        self,
        key: tuple[bytes, bytes],
        send: trio.MemorySendChannel[Variant],
        receive: trio.MemoryReceiveChannel[Variant],
    ) -> None:
        """Send one socket's messages in order, numbered from 0 (the open's answer)."""
        gateway_id, request_id = key
        index = 0
        async with receive:
            async for kind in receive:
                message_id: MessageId = {
                    "gatewayId": gateway_id,
                    "requestId": request_id,
                    "messageIndex": index,
                }
                index = (index + 1) % _INDEX_SPACE
                try:
                    await self.link.send_tunnel(message_id, kind)
                except EngineUnavailable:
                    # The link dropped: the gateway ends the client's socket.
                    if self._sockets.get(key) is send:
                        del self._sockets[key]
                    return
