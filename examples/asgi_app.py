"""actorcore mounted in an ASGI application, served by hypercorn's trio worker.

Out of the box (the app's lifespan runs the registry):
    hypercorn --worker-class trio --bind 127.0.0.1:8000 examples.asgi_app:asgi
Draining first (Ctrl-C: every client gets 1012 while actors still answer, then the server stops):
    python -m examples.asgi_app

Then connect to ws://127.0.0.1:8000/actors/counter/<key>/connect; GET /health answers "ok".
"""

from __future__ import annotations

import signal
from typing import Any

import trio

import actorcore
import actorcore.asgi
from examples.counter import Counter


async def http_api(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The rest of the application (a framework's app goes here): GET /health."""
    if scope["type"] == "lifespan":  # it gets the lifespan too, after the registry started
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close"})  # not an actor route: refused (403)
    else:
        status, body = (200, b"ok") if scope["path"] == "/health" else (404, b"not found")
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


registry = actorcore.Registry([Counter])
asgi = actorcore.asgi.app(registry, fallback=http_api)


async def main(bind: str = "127.0.0.1:8000") -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [bind]
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)  # ours: the app's lifespan leaves it to us

        async def drain_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    registry.request_shutdown()  # 1012 to every client, actors save and sleep
                    return

        nursery.start_soon(drain_on_signal)
        # hypercorn stops once the registry has drained.
        await serve(asgi, config, shutdown_trigger=registry.wait_stopped)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
