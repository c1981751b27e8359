"""Resumable protocol connections and the output gate (issue 21), from the wire.

In-memory streams on the virtual clock for the protocol (a raw client drops its TCP stream
without a close frame, as a crash or a network cut does); SQLite on the real clock for the
output gate and for a registry restarted on the same file.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
from trio_websocket import WebSocketConnection

import actorcore
from actorcore import ActorContext, ActorOptions, Conn, SQLiteStore
from actorcore.store.base import SaveItem
from actorcore.testing import receive_json, serve_loopback
from tests.reliability._support import serve_streams
from tests.reliability._wire import RawClient

HOOKS: list[str] = []


class Tally(actorcore.Actor):
    options = ActorOptions(resume_timeout=60.0, sleep_timeout=1000.0)

    def create_state(self, ctx: ActorContext, input: Any) -> Any:
        return {"count": 0}

    def create_conn_state(self, ctx: ActorContext, params: Any) -> Any:
        return {"nick": (params or {}).get("nick"), "calls": 0}

    async def on_connect(self, ctx: ActorContext, conn: Conn) -> None:
        HOOKS.append(f"connect:{conn.id}")

    async def on_disconnect(self, ctx: ActorContext, conn: Conn) -> None:
        HOOKS.append(f"disconnect:{conn.id}")

    @actorcore.action
    async def increment(self, ctx: ActorContext, by: int = 1) -> int:
        ctx.state["count"] += by
        assert ctx.conn is not None
        ctx.conn.state["calls"] += 1
        ctx.broadcast("changed", ctx.state["count"])
        return int(ctx.state["count"])

    @actorcore.action
    async def me(self, ctx: ActorContext) -> Any:
        assert ctx.conn is not None
        return {"id": ctx.conn.id, "state": ctx.conn.state}

    @actorcore.action
    async def slow(self, ctx: ActorContext, seconds: float) -> int:
        await trio.sleep(seconds)
        ctx.state["count"] += 1
        return int(ctx.state["count"])

    @actorcore.action
    async def count(self, ctx: ActorContext) -> int:
        return int(ctx.state["count"])


class Other(Tally):
    pass


@pytest.fixture(autouse=True)
def _clear() -> None:
    HOOKS.clear()


def registry(store: actorcore.Store | None = None) -> actorcore.Registry:
    return actorcore.Registry([Tally, Other], store=store)


async def frame(client: RawClient) -> dict[str, Any]:
    got = await client.read_frame()
    assert got is not None, "the server closed the stream"
    value = json.loads(got.payload)
    assert isinstance(value, dict)
    return value


async def opened(client: RawClient, path: str) -> dict[str, Any]:
    """Upgrade ``client`` on ``path`` and return its init frame."""
    assert await client.handshake(path.encode()) == 101
    init = await frame(client)
    assert init["type"] == "init"
    return init


async def act(client: RawClient, action_id: int, name: str, *args: Any) -> None:
    await client.send_text(
        json.dumps({"type": "action", "id": action_id, "name": name, "args": list(args)})
    )


def resume_path(init: dict[str, Any], key: str = "k", *, extra: str = "") -> str:
    return f"/actors/tally/{key}/connect?resume={quote(init['resume_token'])}{extra}"


async def send_json(ws: WebSocketConnection, value: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(value))


async def closed_with(client: RawClient) -> tuple[int, str]:
    _, close = await client.read_until_close()
    return close


# --------------------------------------------------------------------------- resume


async def test_a_dropped_connection_resumes_with_its_id_state_and_subscriptions(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            init = await opened(
                client, "/actors/tally/k/connect?params=%7B%22nick%22%3A%22ann%22%7D"
            )
            assert init["resumed"] is False and isinstance(init["resume_token"], str)
            await client.send_text(json.dumps({"type": "subscribe", "event": "changed"}))
            await act(client, 1, "increment")
            assert await frame(client) == {"type": "event", "name": "changed", "args": [1]}
            assert await frame(client) == {"type": "action_result", "id": 1, "output": 1}
        # No close frame: the stream just went away. The connection is detached, not ended.
        await trio.sleep(1)
        assert [f"connect:{init['conn_id']}"] == HOOKS
        async with server.raw() as client:
            again = await opened(client, resume_path(init))
            assert again["resumed"] is True
            assert again["conn_id"] == init["conn_id"]
            assert again["resume_token"] == init["resume_token"]
            await act(client, 2, "me")
            assert (await frame(client))["output"] == {
                "id": init["conn_id"],
                "state": {"nick": "ann", "calls": 1},
            }
            await act(client, 3, "increment")  # still subscribed: the event comes first
            assert await frame(client) == {"type": "event", "name": "changed", "args": [2]}
            assert (await frame(client))["output"] == 2
        assert [f"connect:{init['conn_id']}"] == HOOKS, "on_connect ran once, no disconnect yet"


async def test_a_resent_action_is_answered_from_the_record_not_run_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            init = await opened(client, "/actors/tally/k/connect?seq=1")
            await act(client, 1, "increment", 5)
            answer = await frame(client)
            assert answer == {"type": "action_result", "id": 1, "output": 5, "seq": 1}
        async with server.raw() as client:
            await opened(client, resume_path(init))
            # The unacknowledged answer is sent again after init, then the resent call is
            # answered from the record: the same frame, the same seq; nothing ran twice.
            assert await frame(client) == answer
            await act(client, 1, "increment", 5)
            assert await frame(client) == answer
            await act(client, 2, "count")
            assert await frame(client) == {
                "type": "action_result",
                "id": 2,
                "output": 5,
                "seq": 2,
            }


async def test_a_call_running_when_the_socket_dropped_answers_the_resumed_socket(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            init = await opened(client, "/actors/tally/k/connect?seq=1")
            await act(client, 1, "slow", 5.0)
            await trio.sleep(1)
        async with server.raw() as client:
            await opened(client, resume_path(init))
            await act(client, 1, "slow", 5.0)  # sent again while the first run still runs
            assert await frame(client) == {"type": "action_result", "id": 1, "output": 1, "seq": 1}
            await act(client, 2, "count")
            assert (await frame(client))["output"] == 1, "the resent call did not run again"


async def test_acknowledged_outputs_are_not_sent_again(autojump_clock: trio.abc.Clock) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            init = await opened(client, "/actors/tally/k/connect?seq=1")
            await client.send_text(json.dumps({"type": "subscribe", "event": "changed"}))
            for i in range(1, 4):
                await act(client, i, "increment")
            got = [await frame(client) for _ in range(6)]
            assert [f["seq"] for f in got] == [1, 2, 3, 4, 5, 6]
            await client.send_text(json.dumps({"type": "ack", "seq": 2}))
            await act(client, 4, "count")
            assert (await frame(client))["seq"] == 7
        async with server.raw() as client:
            # ack=4 in the URL: 3 and 4 were acknowledged, 5, 6 and 7 come again.
            await opened(client, resume_path(init, extra="&ack=4"))
            assert [(await frame(client))["seq"] for _ in range(3)] == [5, 6, 7]
            # Actions 1 and 2 were acknowledged (seq 2 and 4): id 1 is forgotten and runs
            # again; id 3 (answered at seq 6) is answered from the record.
            await act(client, 3, "increment")
            replay = await frame(client)
            assert replay["seq"] == 6 and replay["output"] == 3
            await act(client, 1, "increment")
            assert (await frame(client))["type"] == "event"
            assert (await frame(client))["output"] == 4


async def test_events_broadcast_while_detached_are_kept_for_the_resume(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            init = await opened(client, "/actors/tally/k/connect?seq=1")
            await client.send_text(json.dumps({"type": "subscribe", "event": "changed"}))
            await act(client, 1, "count")
            assert (await frame(client))["seq"] == 1
            await client.send_text(json.dumps({"type": "ack", "seq": 1}))
            await trio.sleep(0.1)
        async with server.connect("/actors/tally/k/connect") as other:
            await receive_json(other)
            for i in range(1, 4):
                await send_json(other, {"type": "action", "id": i, "name": "increment"})
                assert (await receive_json(other))["output"] == i
        async with server.raw() as client:
            await opened(client, resume_path(init))
            events = [await frame(client) for _ in range(3)]
            assert [(e["args"], e["seq"]) for e in events] == [([1], 2), ([2], 3), ([3], 4)]


async def test_a_fresh_connection_without_seq_runs_a_repeated_id_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(registry()) as server, server.raw() as client:
        await opened(client, "/actors/tally/k/connect")
        await act(client, 1, "increment")
        await act(client, 1, "increment")
        assert (await frame(client))["output"] == 1
        assert await frame(client) == {"type": "action_result", "id": 1, "output": 2}


async def test_an_unnumbered_connection_replays_its_answers_after_a_resume(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            init = await opened(client, "/actors/tally/k/connect")
            await act(client, 7, "increment")
            assert await frame(client) == {"type": "action_result", "id": 7, "output": 1}
        async with server.raw() as client:
            await opened(client, resume_path(init))
            await act(client, 7, "increment")
            assert await frame(client) == {"type": "action_result", "id": 7, "output": 1}
            await act(client, 8, "count")
            assert (await frame(client))["output"] == 1


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not a token", "resume.invalid"),
        ("a.b", "resume.invalid"),
        ("x" * 200 + ".c.d", "resume.invalid"),
    ],
)
async def test_a_malformed_token_is_refused(
    autojump_clock: trio.abc.Clock, token: str, reason: str
) -> None:
    async with serve_streams(registry()) as server, server.raw() as client:
        assert (
            await client.handshake(f"/actors/tally/k/connect?resume={quote(token)}".encode()) == 101
        )
        assert await closed_with(client) == (4001, reason)


async def test_tokens_of_another_actor_unknown_or_with_a_wrong_secret_are_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            init = await opened(client, "/actors/tally/k/connect")
        actor_id, conn_id, secret = init["resume_token"].split(".")
        cases = [
            (
                f"/actors/tally/other-key/connect?resume={init['resume_token']}",
                "resume.wrong_actor",
            ),
            (f"/actors/other/k/connect?resume={init['resume_token']}", "resume.wrong_actor"),
            (f"/actors/tally/k/connect?resume={actor_id}.{'0' * 32}.{secret}", "resume.not_found"),
            (f"/actors/tally/k/connect?resume={actor_id}.{conn_id}.{'0' * 32}", "resume.not_found"),
        ]
        await server.registry.get_or_create("tally", "other-key")
        await server.registry.get_or_create("other", "k")
        for path, reason in cases:
            async with server.raw() as client:
                assert await client.handshake(path.encode()) == 101
                assert await closed_with(client) == (4001, reason), path
        # None of that ended or used the real connection: it still resumes.
        async with server.raw() as client:
            assert (await opened(client, resume_path(init)))["conn_id"] == conn_id


async def test_a_resume_never_creates_an_actor(autojump_clock: trio.abc.Clock) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            init = await opened(client, "/actors/tally/k/connect")
        async with server.raw() as client:
            assert await client.handshake(resume_path(init, key="nobody").encode()) == 101
            assert await closed_with(client) == (1008, "actor.not_found")
        assert await server.registry.get_or_create("tally", "k")
        with pytest.raises(actorcore.ActorNotFound):
            await server.registry.get("tally", "nobody")


async def test_a_detached_connection_expires_then_on_disconnect_runs(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as client:
            init = await opened(client, "/actors/tally/k/connect")
        await trio.sleep(59)
        assert [f"connect:{init['conn_id']}"] == HOOKS
        await trio.sleep(2)
        assert [f"connect:{init['conn_id']}", f"disconnect:{init['conn_id']}"] == HOOKS
        async with server.raw() as client:
            assert await client.handshake(resume_path(init).encode()) == 101
            assert await closed_with(client) == (4001, "resume.not_found")


async def test_a_client_that_closes_ends_its_connection_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(registry()) as server:
        async with server.connect("/actors/tally/k/connect") as ws:
            init = await receive_json(ws)
        await trio.sleep(1)
        assert [f"connect:{init['conn_id']}", f"disconnect:{init['conn_id']}"] == HOOKS
        async with server.raw() as client:
            assert await client.handshake(resume_path(init).encode()) == 101
            assert await closed_with(client) == (4001, "resume.not_found")


async def test_a_resume_takes_over_a_half_open_socket(autojump_clock: trio.abc.Clock) -> None:
    async with serve_streams(registry()) as server:
        async with server.raw() as old, server.raw() as new:
            init = await opened(old, "/actors/tally/k/connect")
            again = await opened(new, resume_path(init))
            assert again["conn_id"] == init["conn_id"]
            assert await closed_with(old) == (4002, "resume.taken_over")
            await act(new, 1, "increment")
            assert (await frame(new))["output"] == 1
        assert [f"connect:{init['conn_id']}"] == HOOKS


async def test_resume_applies_to_connect_routes_only(autojump_clock: trio.abc.Clock) -> None:
    async with serve_streams(registry()) as server, server.raw() as client:
        assert await client.handshake(b"/actors/tally/k/ws?resume=a.b.c") == 101
        assert await closed_with(client) == (1008, "protocol.invalid_message")


async def test_too_many_detached_connections_end_the_oldest(
    autojump_clock: trio.abc.Clock,
) -> None:
    class Few(Tally):
        options = ActorOptions(max_detached_conns=2)

    async with serve_streams(actorcore.Registry([Few])) as server:
        inits = []
        for _ in range(3):
            async with server.raw() as client:
                inits.append(await opened(client, "/actors/few/k/connect"))
            await trio.sleep(1)
        await trio.sleep(1)
        assert HOOKS.count(f"disconnect:{inits[0]['conn_id']}") == 1
        assert not any(
            h.startswith("disconnect:") and h != f"disconnect:{inits[0]['conn_id']}" for h in HOOKS
        )


# --------------------------------------------------------------------------- SQLite: the gate


class HeldStore(SQLiteStore):
    """An SQLite store whose connection-record saves wait until the test lets them go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = trio.Event()
        self.held = 0

    async def save_many(self, items: list[SaveItem]) -> list[actorcore.ActorError | None]:
        self.held += 1
        await self.release.wait()
        return await super().save_many(items)


@asynccontextmanager
async def loopback(store: actorcore.Store) -> AsyncIterator[Any]:
    async with serve_loopback(registry(store)) as server:
        yield server


async def test_an_answer_waits_until_its_state_is_durable(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "a.db")
    with trio.fail_after(20):
        async with loopback(store) as server, server.connect("/actors/tally/k/connect") as ws:
            await receive_json(ws)
            await send_json(ws, {"type": "action", "id": 1, "name": "increment"})
            with trio.move_on_after(0.3) as early:
                await ws.get_message()
            assert early.cancelled_caught, "the answer left before its state was saved"
            assert store.held >= 1
            store.release.set()
            assert await receive_json(ws) == {"type": "action_result", "id": 1, "output": 1}
            stored = await store.get_by_key("tally", "k")
            assert stored is not None and json.loads(stored.state or b"{}") == {"count": 1}


async def test_a_restarted_registry_resumes_the_connection_from_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with trio.fail_after(30):
        async with (
            loopback(SQLiteStore(path)) as server,
            server.connect("/actors/tally/k/connect?seq=1&params=%7B%22nick%22%3A%22b%22%7D") as ws,
        ):
            init = await receive_json(ws)
            await send_json(ws, {"type": "subscribe", "event": "changed"})
            await send_json(ws, {"type": "action", "id": 1, "name": "increment", "args": [3]})
            assert (await receive_json(ws))["seq"] == 1  # the event
            answer = await receive_json(ws)
            assert answer["output"] == 3
            # The server shuts down under the client (close 1012): detached and saved.
            server.registry.request_shutdown()
            await server.registry.wait_stopped()
        HOOKS.clear()
        async with loopback(SQLiteStore(path)) as server:
            async with server.connect(resume_path(init)) as ws:
                again = await receive_json(ws)
                assert again["conn_id"] == init["conn_id"] and again["resumed"] is True
                assert (await receive_json(ws))["seq"] == 1  # unacknowledged: sent again
                assert await receive_json(ws) == answer
                await send_json(ws, {"type": "action", "id": 1, "name": "increment", "args": [3]})
                assert await receive_json(ws) == answer, "answered from the record"
                await send_json(ws, {"type": "action", "id": 2, "name": "me"})
                me = await receive_json(ws)
                assert me["output"] == {"id": init["conn_id"], "state": {"nick": "b", "calls": 1}}
            assert not [h for h in HOOKS if h.startswith("connect:")], HOOKS


class FailingOnceStore(SQLiteStore):
    """An SQLite store whose first batched save fails, as a full disk would."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failures = 0

    async def save_many(self, items: list[SaveItem]) -> list[actorcore.ActorError | None]:
        if self.failures == 0:
            self.failures += 1
            await trio.lowlevel.checkpoint()
            return [actorcore.StoreError("injected: disk full")] * len(items)
        return await super().save_many(items)


async def test_a_failed_save_holds_the_answer_until_a_retry_commits(tmp_path: Path) -> None:
    store = FailingOnceStore(tmp_path / "f.db")
    with trio.fail_after(20):
        async with loopback(store) as server, server.connect("/actors/tally/k/connect") as ws:
            await receive_json(ws)
            await send_json(ws, {"type": "action", "id": 1, "name": "increment"})
            assert await receive_json(ws) == {"type": "action_result", "id": 1, "output": 1}
            assert store.failures == 1
            assert server.registry.statistics().save_errors >= 1
            stored = await store.get_by_key("tally", "k")
            assert stored is not None and json.loads(stored.state or b"{}") == {"count": 1}


async def test_a_call_running_on_a_taken_over_socket_answers_the_new_one(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_streams(registry()) as server, server.raw() as old, server.raw() as new:
        init = await opened(old, "/actors/tally/k/connect?seq=1")
        await act(old, 1, "slow", 5.0)
        await trio.sleep(1)
        await opened(new, resume_path(init))
        assert await closed_with(old) == (4002, "resume.taken_over")
        await act(new, 1, "slow", 5.0)  # resent: the running call answers it
        assert await frame(new) == {"type": "action_result", "id": 1, "output": 1, "seq": 1}
        await act(new, 2, "count")
        assert (await frame(new))["output"] == 1
