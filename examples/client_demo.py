"""Talk to the chat example with nothing but ``trio_websocket`` and the JSON protocol.

    actorcore serve examples.chat:registry          # in one terminal
    python -m examples.client_demo "hello"          # in another

It connects to ``/actors/chat/{room}/connect``, subscribes to the room's events, sends one
message, prints every frame it receives for a few seconds, and exits. The frames are described
in ``docs/protocol.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any
from urllib.parse import quote

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

EVENTS = ("message", "joined", "left")


async def send_frame(ws: WebSocketConnection, frame: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(frame))


async def chat(url: str, room: str, nick: str, text: str, listen: float) -> None:
    params = quote(json.dumps({"nick": nick}))
    target = f"{url.rstrip('/')}/actors/chat/{quote(room, safe='')}/connect?params={params}"
    ids = itertools.count(1)
    async with open_websocket_url(target) as ws:
        init = json.loads(await ws.get_message())
        print(f"connected: actor {init['actor_id']} generation {init['generation']}")
        for event in EVENTS:
            await send_frame(ws, {"type": "subscribe", "event": event})
        await send_frame(ws, {"type": "action", "id": next(ids), "name": "history"})
        await send_frame(
            ws, {"type": "action", "id": next(ids), "name": "send_message", "args": [text]}
        )
        with trio.move_on_after(listen):
            try:
                while True:
                    frame = json.loads(await ws.get_message())
                    print_frame(frame)
            except ConnectionClosed as exc:
                print(f"closed by the server: {exc.reason}")


def print_frame(frame: dict[str, Any]) -> None:
    kind = frame.get("type")
    if kind == "event":
        print(f"event {frame['name']}: {json.dumps(frame['args'])}")
    elif kind == "action_result":
        output = frame["output"]
        if isinstance(output, list):  # history
            print(f"history ({len(output)} messages):")
            for message in output[-10:]:
                print(f"  <{message['nick']}> {message['text']}")
        else:
            print(f"action {frame['id']} -> {json.dumps(output)}")
    elif kind == "error":
        print(f"action {frame['id']} failed: {frame['code']}: {frame['message']}")
    else:
        print(f"frame: {json.dumps(frame)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("text", nargs="?", default="hello from client_demo")
    parser.add_argument("--url", default="ws://127.0.0.1:8080", help="server base URL")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--nick", default="demo")
    parser.add_argument(
        "--listen", type=float, default=3.0, help="seconds to print incoming frames"
    )
    args = parser.parse_intermixed_args()
    try:
        trio.run(chat, args.url, args.room, args.nick, args.text, args.listen)
    except (OSError, HandshakeError, ConnectionRejected) as exc:
        reason = exc.__cause__ or exc
        message = f"could not connect to {args.url}: {reason} (is the server running?)"
        raise SystemExit(message) from None


if __name__ == "__main__":
    main()
