"""Hardening item 5: subscriptions are O(1) each and bounded per connection."""

from __future__ import annotations

import json

import trio

import actorcore
from actorcore import ActorContext, ActorOptions
from actorcore.testing import receive_json, serve_in_memory


class Feed(actorcore.Actor):
    name = "feed"
    options = ActorOptions(max_subscriptions=3)

    @actorcore.action
    async def publish(self, ctx: ActorContext, event: str) -> None:
        ctx.broadcast(event, "hello")


async def test_past_max_subscriptions_an_error_frame_and_the_connection_stays(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = actorcore.Registry([Feed])
    async with serve_in_memory(registry) as server, server.connect("/actors/feed/k/connect") as ws:
        await receive_json(ws)
        for event in ("a", "b", "c", "a", "d"):
            await ws.send_message(json.dumps({"type": "subscribe", "event": event}))
        error = await receive_json(ws)
        assert error["type"] == "error" and error["id"] is None
        assert error["code"] == "subscription.limit"
        await ws.send_message(json.dumps({"type": "unsubscribe", "event": "b"}))
        await ws.send_message(json.dumps({"type": "subscribe", "event": "d"}))
        for event in ("d", "b"):
            await ws.send_message(
                json.dumps({"type": "action", "id": event, "name": "publish", "args": [event]})
            )
        frames = [await receive_json(ws) for _ in range(3)]
        events = [f["name"] for f in frames if f["type"] == "event"]
        assert events == ["d"], frames  # d now subscribed; b no longer


def test_subscribe_adds_in_place_and_the_view_stays_read_only() -> None:
    """40,000 subscribes copied the whole set each time (27 s of the event loop); now each
    adds one key to one dict, seen through a read-only view."""
    conn = actorcore.Conn(
        id="c", actor_id="a", kind=actorcore.ConnKind.PROTOCOL, params=None, hibernatable=True
    )
    view = conn.subscriptions
    assert not view
    for i in range(40_000):
        assert conn.subscribe(f"event-{i}", limit=50_000)
    live = conn.subscriptions
    assert len(live) == 40_000 and "event-7" in live
    assert not hasattr(live, "add") and not hasattr(live, "discard")  # read-only
    assert not conn.subscribe("one-more", limit=40_000)
    conn.unsubscribe("event-7")
    assert "event-7" not in conn.subscriptions
