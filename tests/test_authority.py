"""The lifecycle authority (issue 18, "an authority that commands"): requests carry the actor's
name, key, generation and the reason; grants are re-checked when they arrive; idle requests are
re-issued; and an attached authority commands sleep, destroy, wake and move-away."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import actorcore
from actorcore import ActorContext, LifecycleCommands, LifecycleRequest, LifecycleState
from actorcore.lifecycle import LifecycleEvent
from actorcore.registry import host_of
from actorcore.testing import record_transitions, serve_in_memory, wait_for_state

S = LifecycleState
E = LifecycleEvent


class Worker(actorcore.Actor):
    name = "worker"
    options = actorcore.ActorOptions(sleep_timeout=10.0, sleep_grace_period=1.0)
    destroyed: list[str] = []

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"n": 0}

    async def on_destroy(self, ctx: ActorContext) -> None:
        self.destroyed.append(ctx.key)

    @actorcore.action
    async def work(self, ctx: ActorContext) -> int:
        ctx.state["n"] += 1
        return int(ctx.state["n"])

    @actorcore.action
    async def nap(self, ctx: ActorContext) -> None:
        ctx.sleep()

    @actorcore.action
    async def generation(self, ctx: ActorContext) -> int:
        return ctx.generation


class Recording:
    """Grants at once (``defer`` for events it holds instead) and keeps every request."""

    def __init__(self, defer: frozenset[LifecycleEvent] = frozenset()) -> None:
        self.requests: list[LifecycleRequest] = []
        self.held: list[tuple[LifecycleRequest, Callable[[], None]]] = []
        self.defer = defer
        self.commands: LifecycleCommands | None = None

    def attach(self, commands: LifecycleCommands) -> None:
        self.commands = commands

    def request(self, request: LifecycleRequest, apply: Callable[[], None]) -> None:
        self.requests.append(request)
        if request.event in self.defer:
            self.held.append((request, apply))
        else:
            apply()

    def reasons(self, event: LifecycleEvent) -> list[str]:
        return [r.reason for r in self.requests if r.event is event]


@pytest.fixture(autouse=True)
def _reset() -> None:
    Worker.destroyed = []


async def test_requests_say_which_actor_which_generation_and_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    authority = Recording()
    registry = actorcore.Registry([Worker], authority=authority)
    async with registry:
        handle = await registry.get_or_create("worker", "w1")
        await trio.sleep(11)  # idle sleep
        await handle.call("work")  # woken by work
        await handle.call("nap")  # ctx.sleep
        await wait_for_state(registry, handle.actor_id, S.ASLEEP)
        await registry.destroy(handle.actor_id)
        other = await registry.get_or_create("worker", "w2")
    assert authority.reasons(E.SLEEP)[:2] == ["idle", "ctx.sleep"]
    assert "drain" in authority.reasons(E.SLEEP)
    assert authority.reasons(E.DESTROY) == ["registry.destroy"]
    idle = next(r for r in authority.requests if r.reason == "idle")
    assert (idle.actor_id, idle.name, idle.key, idle.generation) == (
        handle.actor_id,
        "worker",
        "w1",
        1,
    )
    naps = [r for r in authority.requests if r.reason == "ctx.sleep"]
    assert naps[0].generation == 2
    wakes = [r for r in authority.requests if r.event is E.WAKE and r.key == "w1"]
    assert wakes and all(r.reason for r in wakes)
    assert any(r.key == "w2" for r in authority.requests)
    assert other.name == "worker"


async def test_an_idle_request_not_granted_is_asked_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    authority = Recording(defer=frozenset({E.SLEEP}))
    async with actorcore.Registry([Worker], authority=authority) as registry:
        handle = await registry.get_or_create("worker", "w")
        await trio.sleep(10.5)
        assert authority.reasons(E.SLEEP) == ["idle"]
        await trio.sleep(10)
        assert authority.reasons(E.SLEEP) == ["idle", "idle"], "re-issued after sleep_timeout"
        assert registry.lifecycle(handle.actor_id) is S.STARTED
        _, grant = authority.held[-1]
        grant()
        assert registry.lifecycle(handle.actor_id) is S.SLEEP_GRACE
        authority.defer = frozenset()


async def test_an_idle_sleep_granted_after_new_work_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    authority = Recording(defer=frozenset({E.SLEEP}))
    async with actorcore.Registry([Worker], authority=authority) as registry:
        handle = await registry.get_or_create("worker", "w")
        await trio.sleep(10.5)
        ((request, grant),) = authority.held
        assert request.reason == "idle"
        await handle.call("work")  # activity after the request, before the grant
        with record_transitions(registry) as rec:
            grant()
        assert rec.transitions == [], "the late grant did not put a busy actor to sleep"
        assert registry.lifecycle(handle.actor_id) is S.STARTED
        authority.defer = frozenset()


async def test_a_sleep_granted_for_an_ended_generation_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A protocol connection (hibernatable) keeps the actor's entry in memory across its
    # generations, so the late grant reaches the very entry that runs generation 2.
    authority = Recording(defer=frozenset({E.SLEEP}))
    registry = actorcore.Registry([Worker], authority=authority)
    async with serve_in_memory(registry) as server, server.client("worker", "w") as conn:
        handle = await registry.get("worker", "w")
        await conn.call("nap")  # held: generation 1 asked to sleep
        ((stale_request, stale_grant),) = authority.held
        assert stale_request.generation == 1
        assert authority.commands is not None
        await authority.commands.sleep(handle.actor_id, "test")  # ends generation 1 anyway
        await wait_for_state(registry, handle.actor_id, S.ASLEEP)
        assert await conn.call("generation") == 2
        entry = host_of(registry).entry(handle.actor_id)
        assert entry is not None and entry.last_generation == 2
        stale_grant()
        assert registry.lifecycle(handle.actor_id) is S.STARTED, "generation 2 keeps running"
        authority.defer = frozenset()


async def test_an_attached_authority_commands(autojump_clock: trio.testing.MockClock) -> None:
    authority = Recording()
    async with actorcore.Registry([Worker], authority=authority) as registry:
        commands = authority.commands
        assert commands is not None, "attach() is called when the registry starts"
        handle = await registry.get_or_create("worker", "w")
        with record_transitions(registry) as rec:
            await commands.sleep(handle.actor_id, "rebalance")
            await wait_for_state(registry, handle.actor_id, S.ASLEEP)
            await commands.sleep(handle.actor_id, "again")  # asleep: nothing to do
            await commands.wake(handle.actor_id, "prewarm")
            await wait_for_state(registry, handle.actor_id, S.STARTED)
            assert await handle.call("generation") == 2
            await commands.move_away(handle.actor_id, "to node b")
            await wait_for_state(registry, handle.actor_id, S.ASLEEP)
            await commands.destroy(handle.actor_id, "tenant deleted")
            await wait_for_state(registry, handle.actor_id, S.DESTROYED)
        assert Worker.destroyed == ["w"], "on_destroy ran in a generation of its own"
        assert rec.of(handle.actor_id)[-1] == (S.DESTROYING, S.DESTROYED)
        assert [r.event for r in authority.requests if r.key == "w"].count(E.SLEEP) == 0, (
            "commands are not asked of the authority"
        )
        with pytest.raises(actorcore.ActorNotFound):
            await commands.wake("no-such-actor", "x")


async def test_an_authority_of_the_first_seam_still_works(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``request(actor_id, generation, event, apply)``, as authorities were written before the
    request carried a reason, name and key."""
    seen: list[tuple[str, int, LifecycleEvent]] = []

    class OldStyle:
        def request(
            self, actor_id: str, generation: int, event: LifecycleEvent, apply: Callable[[], None]
        ) -> None:
            seen.append((actor_id, generation, event))
            apply()

    async with actorcore.Registry([Worker], authority=OldStyle()) as registry:  # type: ignore[arg-type]
        handle = await registry.get_or_create("worker", "w")
        await registry.sleep(handle.actor_id)
    assert (handle.actor_id, 1, E.SLEEP) in seen
    assert any(event is E.WAKE for _, _, event in seen)
