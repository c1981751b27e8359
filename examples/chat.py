"""A chat room over the ``/connect`` actor protocol: connections, broadcast, hibernation.

Serve it:   actorcore serve examples.chat:registry
Talk to it: python -m examples.client_demo --nick ann "hello"

Each room is one actor (``/actors/chat/{room}/connect?params={"nick": "ann"}``). Clients
subscribe to the ``message``, ``joined`` and ``left`` events and call ``send_message`` and
``history``. The last 100 messages are the room's persisted state.

Hibernation: protocol connections are hibernatable, so they do not keep the room awake. After
10 s without activity the room goes to sleep (its state is saved, the server logs
``started -> sleep_grace -> ... -> asleep``) while every client stays connected; the next
message wakes it (``generation`` in the events goes up by one) and is delivered in order.
"""

from __future__ import annotations

import time
from typing import Any

import actorcore

HISTORY = 100
"""Messages a room keeps."""
MAX_TEXT = 2000
"""Longest accepted message, in characters."""
MAX_NICK = 32


class ChatRoom(actorcore.Actor):
    name = "chat"
    options = actorcore.ActorOptions(sleep_timeout=10.0)

    def create_state(self, ctx: actorcore.ActorContext, input: Any) -> Any:
        return {"messages": []}

    async def create_conn_state(self, ctx: actorcore.ActorContext, params: Any) -> Any:
        nick = params.get("nick") if isinstance(params, dict) else None
        if not isinstance(nick, str) or not nick.strip():
            nick = "guest"
        return {"nick": nick.strip()[:MAX_NICK]}

    async def on_connect(self, ctx: actorcore.ActorContext, conn: actorcore.Conn) -> None:
        ctx.broadcast("joined", {"nick": conn.state["nick"], "online": len(ctx.conns)})

    async def on_disconnect(self, ctx: actorcore.ActorContext, conn: actorcore.Conn) -> None:
        ctx.broadcast("left", {"nick": conn.state["nick"], "online": len(ctx.conns)})

    @actorcore.action
    async def send_message(self, ctx: actorcore.ActorContext, text: str) -> dict[str, Any]:
        """Append ``text`` to the room's history and broadcast it as a ``message`` event."""
        if not isinstance(text, str) or not text.strip():
            raise actorcore.UserError("text must be a non-empty string", code="chat.empty")
        if len(text) > MAX_TEXT:
            raise actorcore.UserError(f"text is over {MAX_TEXT} chars", code="chat.too_long")
        conn = ctx.conn
        message = {
            "nick": conn.state["nick"] if conn is not None else "server",
            "text": text,
            "at": time.time(),
            "generation": ctx.generation,
        }
        messages = ctx.state["messages"]
        messages.append(message)
        del messages[:-HISTORY]
        ctx.broadcast("message", message)
        return message

    @actorcore.action
    async def history(self, ctx: actorcore.ActorContext) -> list[dict[str, Any]]:
        """The room's last messages, oldest first."""
        return list(ctx.state["messages"])


registry = actorcore.Registry([ChatRoom])
