"""Hook faults: ``on_wake``, ``on_sleep``, ``on_destroy``, the connection hooks, ``on_ws_message``
and actions that raise or hang past their bounds.

Each hook of :class:`Faulty` reads its fault from :data:`FAULTS` (``"raise"`` or ``"hang"``).
What must hold: every fault ends in bounded (virtual) time with its documented outcome -- a
close code, an error frame or a typed error --, the state saved before is kept, and the actor
and other connections keep working. All on the virtual clock with in-memory streams.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from attrs import evolve as attrs_evolve

import actorcore
from actorcore import ActorContext, ActorOptions, Conn, LifecycleState, MemoryStore
from actorcore.registry import host_of
from actorcore.store import open_store

from ._support import call, close_code, receive_frame, send_json, serve_streams, tally

S = LifecycleState

HOOK_TIMEOUT = 1.0
GRACE = 2.0
CLOSE_TIMEOUT = 0.5
ACTION_TIMEOUT = 3.0
READY_TIMEOUT = 5.0

#: hook name -> "raise" or "hang"; set by each test.
FAULTS: dict[str, str] = {}
#: Hooks that ran, in order ("hook:generation").
RAN: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    FAULTS.clear()
    RAN.clear()
    yield
    FAULTS.clear()


async def fault(hook: str, ctx: ActorContext) -> None:
    RAN.append(f"{hook}:{ctx.generation}")
    mode = FAULTS.get(hook)
    if mode == "raise":
        raise RuntimeError(f"injected fault in {hook}")
    if mode == "hang":
        await trio.sleep_forever()


class Faulty(actorcore.Actor):
    name = "faulty"
    options = ActorOptions(
        hook_timeout=HOOK_TIMEOUT,
        sleep_grace_period=GRACE,
        close_timeout=CLOSE_TIMEOUT,
        action_timeout=ACTION_TIMEOUT,
        ready_timeout=READY_TIMEOUT,
        sleep_timeout=1000.0,
        state_save_interval=0.5,
    )

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        if FAULTS.get("create_state") == "raise":
            raise RuntimeError("injected fault in create_state")
        return {"n": 0}

    async def on_create(self, ctx: ActorContext) -> None:
        await fault("on_create", ctx)

    async def on_wake(self, ctx: ActorContext) -> None:
        await fault("on_wake", ctx)

    async def on_sleep(self, ctx: ActorContext) -> None:
        await fault("on_sleep", ctx)

    async def on_destroy(self, ctx: ActorContext) -> None:
        await fault("on_destroy", ctx)

    async def on_before_connect(self, ctx: ActorContext, params: Any, request: Any) -> None:
        await fault("on_before_connect", ctx)

    async def create_conn_state(self, ctx: ActorContext, params: Any) -> Any:
        await fault("create_conn_state", ctx)
        return None

    async def on_connect(self, ctx: ActorContext, conn: Conn) -> None:
        await fault("on_connect", ctx)

    async def on_disconnect(self, ctx: ActorContext, conn: Conn) -> None:
        await fault("on_disconnect", ctx)

    async def on_ws_open(self, ctx: ActorContext, conn: Conn) -> None:
        await fault("on_ws_open", ctx)

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        if message == "fault":
            await fault("on_ws_message", ctx)
        await conn.send(message)

    async def on_ws_close(self, ctx: ActorContext, conn: Conn, code: int, reason: str) -> None:
        await fault("on_ws_close", ctx)

    @actorcore.action
    async def inc(self, ctx: ActorContext) -> int:
        ctx.state["n"] += 1
        return int(ctx.state["n"])

    @actorcore.action
    async def action(self, ctx: ActorContext) -> str:
        await fault("action", ctx)
        return "done"


def served(store: actorcore.Store | None = None) -> Any:
    return serve_streams(actorcore.Registry([Faulty], store))


async def saved_n(store: MemoryStore, key: str) -> int | None:
    async with open_store(store):
        record = await store.get_by_key("faulty", key)
    if record is None or record.state is None:
        return None
    return int(json.loads(record.state)["n"])


# --------------------------------------------------------------------------- start hooks


@pytest.mark.parametrize("hook", ["create_state", "on_create", "on_wake"])
async def test_start_hook_raising_is_start_failed_then_retried(
    autojump_clock: trio.abc.Clock, hook: str
) -> None:
    FAULTS[hook] = "raise"
    async with served() as server:
        async with server.connect("/actors/faulty/k/connect") as ws:
            assert await close_code(ws) == (1011, "actor.start_failed")
        async with server.connect("/actors/faulty/k/ws") as ws:
            assert await close_code(ws) == (1011, "actor.start_failed")
        tally(f"fault: hook {hook} raised", 2)
        FAULTS.clear()
        async with server.connect("/actors/faulty/k/connect") as ws:
            await receive_frame(ws)
            assert (await call(ws, 1, "inc"))["output"] == 1, "the next request starts afresh"


@pytest.mark.parametrize(
    ("ready_timeout", "expected"),
    [(READY_TIMEOUT, (1011, "actor.start_failed")), (0.5, (1013, "actor.ready_timeout"))],
)
async def test_on_wake_hanging_is_cut_at_hook_timeout(
    autojump_clock: trio.abc.Clock, ready_timeout: float, expected: tuple[int, str]
) -> None:
    class Impatient(Faulty):
        name = "faulty"
        options = actorcore.ActorOptions(
            hook_timeout=HOOK_TIMEOUT, ready_timeout=ready_timeout, sleep_timeout=1000.0
        )

    FAULTS["on_wake"] = "hang"
    async with serve_streams(actorcore.Registry([Impatient])) as server:
        before = trio.current_time()
        async with server.connect("/actors/faulty/k/connect") as ws:
            assert await close_code(ws) == expected
        assert trio.current_time() - before <= max(HOOK_TIMEOUT, ready_timeout) + 0.1
        tally("fault: hook on_wake hung")
        FAULTS.clear()
        await trio.sleep(HOOK_TIMEOUT)  # the cut start has ended
        async with server.connect("/actors/faulty/k/connect") as ws:
            await receive_frame(ws)
            assert (await call(ws, 1, "inc"))["output"] == 1


# --------------------------------------------------------------------------- grace hooks


@pytest.mark.parametrize("mode", ["raise", "hang"])
async def test_on_sleep_fault_still_saves_and_sleeps_in_bounded_time(
    autojump_clock: trio.abc.Clock, mode: str
) -> None:
    store = MemoryStore()
    FAULTS["on_sleep"] = mode
    async with served(store) as server:
        registry = server.registry
        async with server.connect("/actors/faulty/k/connect") as ws:
            init = await receive_frame(ws)
            for i in range(1, 4):
                assert (await call(ws, i, "inc"))["output"] == i
            before = trio.current_time()
            await registry.sleep(init["actor_id"])
            elapsed = trio.current_time() - before
            tally(f"fault: hook on_sleep {mode}")
            assert registry.lifecycle(init["actor_id"]) is S.ASLEEP
            if mode == "hang":
                assert GRACE <= elapsed <= GRACE + CLOSE_TIMEOUT + 0.1, elapsed
            else:
                assert elapsed < 0.1
            # The hibernated connection wakes the actor with the saved state.
            assert (await call(ws, 10, "inc"))["output"] == 4
    assert await saved_n(store, "k") == 4


@pytest.mark.parametrize("mode", ["raise", "hang"])
async def test_on_destroy_fault_still_destroys_in_bounded_time(
    autojump_clock: trio.abc.Clock, mode: str
) -> None:
    store = MemoryStore()
    FAULTS["on_destroy"] = mode
    async with served(store) as server:
        registry = server.registry
        async with server.connect("/actors/faulty/k/connect") as ws:
            init = await receive_frame(ws)
            await call(ws, 1, "inc")
            before = trio.current_time()
            await registry.destroy(init["actor_id"])
            tally(f"fault: hook on_destroy {mode}")
            assert trio.current_time() - before <= GRACE + 2 * CLOSE_TIMEOUT + 0.6
            assert await close_code(ws) == (1000, "actor.destroyed")
        assert registry.lifecycle(init["actor_id"]) is S.DESTROYED
    assert await saved_n(store, "k") is None, "deleted from the store"


# --------------------------------------------------------------------------- connection hooks


@pytest.mark.parametrize("mode", ["raise", "hang"])
@pytest.mark.parametrize(
    ("hook", "route"),
    [
        ("on_before_connect", "connect"),
        ("create_conn_state", "connect"),
        ("on_connect", "connect"),
        ("on_ws_open", "ws"),
    ],
)
async def test_connection_hook_fault_closes_1011_and_others_are_unaffected(
    autojump_clock: trio.abc.Clock, hook: str, route: str, mode: str
) -> None:
    async with served() as server, server.connect("/actors/faulty/k/connect") as bystander:
        await receive_frame(bystander)
        FAULTS[hook] = mode
        before = trio.current_time()
        async with server.connect(f"/actors/faulty/k/{route}") as ws:
            assert await close_code(ws) == (1011, "actor.internal_error")
        tally(f"fault: hook {hook} {mode}")
        assert trio.current_time() - before <= HOOK_TIMEOUT + 0.1
        FAULTS.clear()
        assert (await call(bystander, 1, "inc"))["output"] == 1
        if hook in ("on_connect", "on_ws_open"):
            # The connection went live before its hook failed: its disconnect hooks ran once.
            await trio.sleep(HOOK_TIMEOUT)
            assert sum(e.startswith("on_disconnect:") for e in RAN) == 1
        async with server.connect(f"/actors/faulty/k/{route}") as ws:
            if route == "connect":
                assert (await receive_frame(ws))["type"] == "init"
            else:
                await ws.send_message("hello")
                assert await ws.get_message() == "hello"


@pytest.mark.parametrize("mode", ["raise", "hang"])
async def test_on_ws_message_fault_closes_only_its_connection(
    autojump_clock: trio.abc.Clock, mode: str
) -> None:
    FAULTS["on_ws_message"] = mode
    async with (
        served() as server,
        server.connect("/actors/faulty/k/ws") as other,
        server.connect("/actors/faulty/k/ws") as ws,
    ):
        await other.send_message("before")
        assert await other.get_message() == "before"
        before = trio.current_time()
        await ws.send_message("fault")
        assert await close_code(ws) == (1011, "actor.internal_error")
        tally(f"fault: hook on_ws_message {mode}")
        assert trio.current_time() - before <= HOOK_TIMEOUT + CLOSE_TIMEOUT + 0.1
        await other.send_message("after")
        assert await other.get_message() == "after"


@pytest.mark.parametrize("mode", ["raise", "hang"])
@pytest.mark.parametrize("hook", ["on_disconnect", "on_ws_close"])
async def test_disconnect_hook_fault_is_bounded_at_client_close_and_at_finalize(
    autojump_clock: trio.abc.Clock, hook: str, mode: str
) -> None:
    store = MemoryStore()
    FAULTS[hook] = mode
    async with served(store) as server:
        registry = server.registry
        # The client closes: the hooks run in the handler, bounded by hook_timeout.
        async with server.connect("/actors/faulty/k/ws") as ws:
            await ws.send_message("x")
            assert await ws.get_message() == "x"
        handle = await registry.get("faulty", "k")
        assert await handle.call("inc") == 1
        # Finalize closes the socket (1001): the hooks run in finalize, bounded too.
        async with server.connect("/actors/faulty/k/ws") as ws:
            await ws.send_message("y")
            assert await ws.get_message() == "y"
            before = trio.current_time()
            await registry.sleep(handle.actor_id)
            assert trio.current_time() - before <= CLOSE_TIMEOUT + 0.5 + HOOK_TIMEOUT + 0.1
            assert await close_code(ws) == (1001, "actor.sleeping")
        tally(f"fault: hook {hook} {mode}", 2)
        assert registry.lifecycle(handle.actor_id) is S.ASLEEP
    assert await saved_n(store, "k") == 1


# --------------------------------------------------------------------------- actions


async def test_action_raising_is_an_error_frame(autojump_clock: trio.abc.Clock) -> None:
    FAULTS["action"] = "raise"
    async with served() as server, server.connect("/actors/faulty/k/connect") as ws:
        await receive_frame(ws)
        reply = await call(ws, 1, "action")
        tally("fault: action raised")
        assert reply["type"] == "error" and reply["code"] == "actor.internal_error"
        assert "injected" not in reply["message"], "details stay in the server log"
        assert (await call(ws, 2, "inc"))["output"] == 1


async def test_action_hanging_times_out_and_the_connection_keeps_serving(
    autojump_clock: trio.abc.Clock,
) -> None:
    FAULTS["action"] = "hang"
    async with served() as server, server.connect("/actors/faulty/k/connect") as ws:
        await receive_frame(ws)
        before = trio.current_time()
        await send_json(ws, {"type": "action", "id": "slow", "name": "action"})
        # Other calls on the same connection are answered while it hangs.
        for i in range(1, 4):
            assert (await call(ws, i, "inc"))["output"] == i
        assert trio.current_time() - before < 0.1
        reply = await receive_frame(ws)
        tally("fault: action hung")
        assert reply == {
            "type": "error",
            "id": "slow",
            "code": "actor.action_timeout",
            "message": "action 'action' exceeded its action_timeout",
            "retryable": False,
        }
        assert ACTION_TIMEOUT <= trio.current_time() - before <= ACTION_TIMEOUT + 0.1


async def test_action_hanging_through_sleep_is_cut_at_grace_with_actor_stopping(
    autojump_clock: trio.abc.Clock,
) -> None:
    class Patient(Faulty):
        name = "faulty"
        options = actorcore.ActorOptions(
            action_timeout=100.0, sleep_grace_period=GRACE, close_timeout=CLOSE_TIMEOUT
        )

    FAULTS["action"] = "hang"
    async with (
        serve_streams(actorcore.Registry([Patient])) as server,
        server.connect("/actors/faulty/k/connect") as ws,
    ):
        init = await receive_frame(ws)
        await send_json(ws, {"type": "action", "id": 1, "name": "action"})
        await trio.sleep(0.1)
        before = trio.current_time()
        await server.registry.sleep(init["actor_id"])
        assert GRACE <= trio.current_time() - before <= GRACE + CLOSE_TIMEOUT + 0.1
        reply = await receive_frame(ws)
        tally("fault: action hung")
        assert reply["type"] == "error" and reply["code"] == "actor.stopping"
        assert reply["retryable"] is True
        FAULTS.clear()
        assert (await call(ws, 2, "action"))["output"] == "done", "the next generation serves"


class Hanging(Faulty):
    """Hibernatable raw connections; hooks may hang far longer than the grace period."""

    name = "hanging"
    options = attrs_evolve(Faulty.options, hibernatable_websockets=True, hook_timeout=100.0)


async def test_hanging_message_hook_cut_at_grace_keeps_a_hibernatable_connection(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The message hook runs in the read loop without a scope of its own; the grace deadline
    cancels it through the loop's scope. The hibernatable connection must survive that (no
    1011: the cut was the generation's, not a timeout), and its next message wakes the next
    generation."""
    FAULTS["on_ws_message"] = "hang"
    registry = actorcore.Registry([Hanging])
    async with serve_streams(registry) as server, server.connect("/actors/hanging/k/ws") as ws:
        await ws.send_message("fault")
        await trio.testing.wait_all_tasks_blocked()
        (entry,) = host_of(registry).entries()
        before = trio.current_time()
        with trio.fail_after(GRACE + 5):
            await registry.sleep(entry.actor_id)
        assert trio.current_time() - before == pytest.approx(GRACE, abs=0.3)
        assert entry.lifecycle.state is S.ASLEEP
        FAULTS.clear()
        await ws.send_message("again")
        with trio.fail_after(READY_TIMEOUT):
            assert await ws.get_message() == "again"
        assert RAN.count("on_ws_message:1") == 1
        assert entry.lifecycle.state is S.STARTED
