"""Raw WebSocket echo actors: ``on_ws_message`` sends every message straight back.

Serve them: actorcore serve examples.echo:registry

- ``/actors/echo/{key}/ws``: a plain raw WebSocket. An open raw WebSocket keeps its actor
  awake; when the actor sleeps anyway (drain, ``ctx.sleep()``) the connection closes with
  1001 ``actor.sleeping``.
- ``/actors/echo-hibernating/{key}/ws``: ``hibernatable_websockets=True``. Connections do not
  keep the actor awake: after 5 s of silence it sleeps while clients stay connected, and the
  next message wakes it. Both count the messages they echoed in their persisted state.

Try it with any WebSocket client, for example::

    import trio
    from trio_websocket import open_websocket_url

    async def main():
        async with open_websocket_url("ws://127.0.0.1:8080/actors/echo/a/ws") as ws:
            await ws.send_message("ping")
            print(await ws.get_message())  # ping

    trio.run(main)
"""

from __future__ import annotations

from typing import Any

import actorcore


class Echo(actorcore.Actor):
    name = "echo"

    def create_state(self, ctx: actorcore.ActorContext, input: Any) -> Any:
        return {"echoed": 0}

    async def on_ws_message(
        self, ctx: actorcore.ActorContext, conn: actorcore.Conn, message: str | bytes
    ) -> None:
        ctx.state["echoed"] += 1
        await conn.send(message)

    @actorcore.action
    async def echoed(self, ctx: actorcore.ActorContext) -> int:
        """Messages echoed so far (for in-process callers and protocol clients)."""
        return int(ctx.state["echoed"])


class HibernatingEcho(Echo):
    name = "echo-hibernating"
    options = actorcore.ActorOptions(hibernatable_websockets=True, sleep_timeout=5.0)


registry = actorcore.Registry([Echo, HibernatingEcho])
