"""Reminders: alarms that fire while the actor sleeps, and a room that closes itself.

In process:        python -m examples.reminder
Over WebSockets:   actorcore serve examples.reminder:registry --store reminders.db
                   (then call ``remind`` on ws://127.0.0.1:8080/actors/reminders/<key>/connect
                   and subscribe to ``reminder``; alarms survive a restart of the server)

``Reminders.remind`` persists an alarm with ``ctx.schedule.after`` and returns its id; the actor
may sleep meanwhile: the alarm wakes it, and ``fire`` runs on the new generation, broadcasts the
reminder to whoever is connected and keeps a log. ``Room`` closes (destroys) itself after an
hour without a message: every ``post`` moves its one alarm.
"""

from __future__ import annotations

from typing import Any

import trio

import actorcore
from actorcore import ActorContext


class Reminders(actorcore.Actor):
    options = actorcore.ActorOptions(sleep_timeout=1.0)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"fired": []}

    @actorcore.action
    async def remind(self, ctx: ActorContext, seconds: float, text: str) -> str:
        return await ctx.schedule.after(seconds, "fire", text)

    @actorcore.action
    async def forget(self, ctx: ActorContext, alarm_id: str) -> bool:
        return await ctx.schedule.cancel(alarm_id)

    @actorcore.action
    async def pending(self, ctx: ActorContext) -> list[dict[str, Any]]:
        return [
            {"id": alarm.id, "text": alarm.args[0], "at": alarm.at}
            for alarm in await ctx.schedule.list()
        ]

    @actorcore.action
    async def fire(self, ctx: ActorContext, text: str) -> None:
        ctx.state["fired"].append({"text": text, "generation": ctx.generation})
        ctx.broadcast("reminder", text)

    @actorcore.action
    async def fired(self, ctx: ActorContext) -> list[dict[str, Any]]:
        return list(ctx.state["fired"])


class Room(actorcore.Actor):
    idle_close = 3600.0
    """Seconds without a message after which the room closes."""

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"messages": [], "closing": None}

    async def on_create(self, ctx: ActorContext) -> None:
        ctx.state["closing"] = await ctx.schedule.after(self.idle_close, "close")

    @actorcore.action
    async def post(self, ctx: ActorContext, text: str) -> int:
        ctx.state["messages"].append(text)
        await ctx.schedule.cancel(ctx.state["closing"])
        ctx.state["closing"] = await ctx.schedule.after(self.idle_close, "close")
        return len(ctx.state["messages"])

    @actorcore.action
    async def close(self, ctx: ActorContext) -> None:
        ctx.broadcast("closed")
        ctx.destroy()


registry = actorcore.Registry([Reminders, Room])


async def main() -> None:
    async with registry:
        me = await registry.get_or_create("reminders", "me")
        await me.call("remind", 2.0, "stretch")
        print(await me.call("pending"))  # [{'id': '...', 'text': 'stretch', 'at': ...}]
        await trio.sleep(1.5)
        print(me.lifecycle)  # LifecycleState.ASLEEP: idle after 1 s, the alarm keeps it asleep
        await trio.sleep(1.0)
        print(await me.call("fired"))  # [{'text': 'stretch', 'generation': 2}]


if __name__ == "__main__":
    trio.run(main)
