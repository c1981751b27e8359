"""The envoy link alone against a real Rivet engine (no registry): registration and runner
config, start commands, the Running event, a gateway WebSocket on the tunnel, KV, a sleep
intent, draining, eviction, and what a cut connection does (events resent, commands neither
lost nor handed over twice, the lost-threshold self-stop).

The handler here records what the link delivers; the tests answer as an envoy would. A TCP
proxy the test owns stands between the link and the engine where a test cuts the connection.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
from trio_websocket import ConnectionClosed

from actorcore.engine.admin import EngineAdmin
from actorcore.engine.bare import Variant
from actorcore.engine.link import EnvoyEvicted, EnvoyLink, EnvoyOptions

from .._clients import tcp_websocket
from .conftest import Engine, start_engine, stop_engine

#: Bound on each test: an engine round trip takes milliseconds.
TEST_TIMEOUT = 30
#: The actor definition the link declares in its metadata.
NAME = "thing"

#: Reconnect quickly in the tests that cut the link (the defaults back off to 10 s, and a
#: refused handshake takes the whole connect bound).
FAST_RECONNECT: dict[str, Any] = {
    "reconnect_first": 0.05,
    "reconnect_max": 0.2,
    "connect_timeout": 1.0,
}

T = TypeVar("T")


@attrs.define(eq=False)
class Recorder:
    """An :class:`~actorcore.engine.link.EnvoyHandler` that records what it is handed."""

    commands: list[tuple[str, int, Variant]] = attrs.field(factory=list)
    tunnel: list[dict[str, Any]] = attrs.field(factory=list)
    lost: int = 0
    changed: trio.Event = attrs.field(factory=trio.Event)

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def on_command(self, actor_id: str, generation: int, command: Variant) -> None:
        self.commands.append((actor_id, generation, command))
        self._poke()

    def on_tunnel(self, message: dict[str, Any]) -> None:
        self.tunnel.append(message)
        self._poke()

    def on_lost(self) -> None:
        self.lost += 1
        self._poke()

    async def wait_for(self, found: Callable[[], T | None]) -> T:
        """The first truthy answer of ``found``, checked after each delivery (the test's
        ``fail_after`` bounds the wait)."""
        while not (answer := found()):
            await self.changed.wait()
        return answer

    def starts(self, actor_id: str) -> list[tuple[str, int, Variant]]:
        return [c for c in self.commands if c[0] == actor_id and c[2].tag == "CommandStartActor"]

    def stop_of(self, actor_id: str) -> str | None:
        for actor, _, command in self.commands:
            if actor == actor_id and command.tag == "CommandStopActor":
                reason: str = command.val["reason"]
                return reason
        return None


@attrs.define(eq=False)
class CuttableProxy:
    """A loopback TCP proxy to the engine that a test can cut (every connection through it
    closed at once), freeze (every connection held open and silent) and make refuse new
    connections for a while."""

    target_port: int
    port: int = 0
    refusing: bool = False
    scopes: set[trio.CancelScope] = attrs.field(factory=set)
    pumps: set[trio.CancelScope] = attrs.field(factory=set)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    def cut(self) -> None:
        for scope in list(self.scopes):
            scope.cancel()

    def freeze(self) -> None:
        for scope in list(self.pumps):
            scope.cancel()

    async def _serve(self, client: trio.SocketStream) -> None:
        async with client:
            if self.refusing:
                return
            with trio.CancelScope() as scope:
                self.scopes.add(scope)
                try:
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                    async with upstream:
                        with trio.CancelScope() as pumping:
                            self.pumps.add(pumping)
                            try:
                                async with trio.open_nursery() as nursery:
                                    nursery.start_soon(_pump, client, upstream, scope)
                                    nursery.start_soon(_pump, upstream, client, scope)
                            finally:
                                self.pumps.discard(pumping)
                        await trio.sleep_forever()  # frozen: open and silent until cut
                finally:
                    self.scopes.discard(scope)


async def _pump(
    source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
) -> None:
    try:
        async for chunk in source:
            await sink.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()  # one side ended: the connection ends


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@asynccontextmanager
async def link_to(url: str, pool: str, **options: Any) -> AsyncIterator[tuple[EnvoyLink, Recorder]]:
    recorder = Recorder()
    async with EnvoyLink.open(
        EnvoyOptions(url=url, pool=pool, **options), recorder, [NAME]
    ) as link:
        yield link, recorder


@asynccontextmanager
async def proxy_to(engine: Engine) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(port_of(engine.url))
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        yield proxy
        nursery.cancel_scope.cancel()


async def start_actor(
    engine: Engine,
    link: EnvoyLink,
    recorder: Recorder,
    pool: str,
    key: str,
    *,
    ack: bool = False,
) -> str:
    """Create an actor on ``pool``, wait for its start command (generation 1), acknowledge it
    if ``ack``, report it running and wait until the engine has it connectable; its id.

    The engine handles one envoy's messages in order, so once the actor is connectable the
    acknowledgement sent before the Running event has been handled too."""
    admin = EngineAdmin(engine.url)
    actor = await admin.get_or_create_actor("default", NAME, key, pool)
    actor_id: str = actor["actor_id"]
    (_, generation, command) = (await recorder.wait_for(lambda: recorder.starts(actor_id)))[0]
    assert generation == 1
    assert command.val["config"]["name"] == NAME
    assert command.val["config"]["key"] == key
    if ack:
        await link.ack_commands()
    link.queue_event(
        actor_id,
        generation,
        Variant("EventActorStateUpdate", {"state": Variant("ActorStateRunning")}),
    )
    await wait_connectable(admin, actor_id)
    return actor_id


async def wait_connectable(admin: EngineAdmin, actor_id: str) -> None:
    """Poll the engine's HTTP view (nothing signals it); the test's ``fail_after`` bounds it."""
    while not await connectable(admin, actor_id):  # noqa: ASYNC110
        await trio.sleep(0.02)


async def connectable(admin: EngineAdmin, actor_id: str) -> bool:
    """The engine says the actor is connectable (it handled the Running event)."""
    return any(
        a["actor_id"] == actor_id and a.get("connectable_ts")
        for a in await admin.actors("default", NAME)
    )


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition nothing signals (the engine's HTTP view, the link going down); the
    test's ``fail_after`` bounds it."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.02)


async def test_registration_creates_the_runner_config_and_shows_the_envoy(engine: Engine) -> None:
    admin = EngineAdmin(engine.url)
    with trio.fail_after(TEST_TIMEOUT):
        assert "l-reg" not in await admin.runner_configs("default", "l-reg")
        async with link_to(engine.url, "l-reg", metadata={"probe": "link"}) as (link, _):
            assert "l-reg" in await admin.runner_configs("default", "l-reg")
            assert link.connected
            assert link.lost_threshold == 15.0
            assert link.actor_stop_threshold is not None and link.actor_stop_threshold > 0
            assert link.max_response_payload_size is not None
            envoys = await admin.envoys("default")
            mine = [e for e in envoys if e.get("envoy_key") == link.options.envoy_key]
            assert len(mine) == 1, envoys
            assert mine[0]["pool_name"] == "l-reg", mine
            shown = json.dumps(mine[0])
            assert '"runtime": "actorcore"' in shown or "actorcore" in shown, mine
            assert "probe" in shown, mine


async def test_a_created_actor_starts_at_generation_1_and_running_makes_it_connectable(
    engine: Engine,
) -> None:
    admin = EngineAdmin(engine.url)
    with trio.fail_after(TEST_TIMEOUT):
        async with link_to(engine.url, "l-start") as (link, recorder):
            actor = await admin.get_or_create_actor("default", NAME, "a", "l-start")
            actor_id = actor["actor_id"]
            await recorder.wait_for(lambda: recorder.starts(actor_id))
            assert not await connectable(admin, actor_id)
            link.queue_event(
                actor_id,
                1,
                Variant("EventActorStateUpdate", {"state": Variant("ActorStateRunning")}),
            )
            await wait_connectable(admin, actor_id)
            assert link.stats.commands == 1 and link.stats.duplicate_commands == 0


async def test_a_gateway_websocket_is_opened_answered_and_closed_over_the_tunnel(
    engine: Engine,
) -> None:
    pool = "l-gw"
    resource = (
        f"/gateway/{NAME}/connect?rvt-namespace=default&rvt-method=getOrCreate"
        f"&rvt-runner={pool}&rvt-key=gw&rvt-crash-policy=sleep"
    )
    received: list[str | bytes] = []

    closed = trio.Event()

    async def client() -> None:
        # The gateway completes the upgrade once the envoy acknowledged the open.
        async with tcp_websocket(port_of(engine.url), resource, subprotocols=["rivet"]) as ws:
            received.append(await ws.get_message())
            await ws.send_message("back")
        # Leaving the block closed it: the envoy answered the close through the tunnel.
        closed.set()

    with trio.fail_after(TEST_TIMEOUT):
        async with link_to(engine.url, pool) as (link, recorder), trio.open_nursery() as nursery:
            # A get-or-create through the gateway starts the actor on this envoy.
            nursery.start_soon(client)
            actor_id, generation, _ = (await recorder.wait_for(lambda: recorder.commands))[0]
            assert generation == 1
            link.queue_event(
                actor_id,
                generation,
                Variant("EventActorStateUpdate", {"state": Variant("ActorStateRunning")}),
            )
            opened = await recorder.wait_for(lambda: tunnel_of(recorder, "ToEnvoyWebSocketOpen"))
            open_ = opened[0]["messageKind"].val
            assert open_["actorId"] == actor_id
            assert open_["path"].startswith("/connect")
            request = opened[0]["messageId"]
            for index, kind in enumerate(
                [
                    Variant("ToRivetWebSocketOpen", {"canHibernate": False}),
                    Variant("ToRivetWebSocketMessage", {"data": b"hello", "binary": False}),
                ]
            ):
                await link.send_tunnel({**request, "messageIndex": index}, kind)
            echoed = await recorder.wait_for(lambda: tunnel_of(recorder, "ToEnvoyWebSocketMessage"))
            assert received == ["hello"]
            assert echoed[0]["messageKind"].val["data"] == b"back"
            close = await recorder.wait_for(lambda: tunnel_of(recorder, "ToEnvoyWebSocketClose"))
            assert close[0]["messageKind"].val["code"] == 1000
            await link.send_tunnel(
                {**request, "messageIndex": 2},
                Variant(
                    "ToRivetWebSocketClose", {"code": 1000, "reason": None, "hibernate": False}
                ),
            )
            await closed.wait()


def tunnel_of(recorder: Recorder, tag: str) -> list[dict[str, Any]]:
    return [m for m in recorder.tunnel if m["messageKind"].tag == tag]


async def test_kv_put_get_list_and_delete(engine: Engine) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with link_to(engine.url, "l-kv") as (link, recorder):
            actor_id = await start_actor(engine, link, recorder, "l-kv", "kv")
            put = await link.kv(
                actor_id, Variant("KvPutRequest", {"keys": [b"a", b"b"], "values": [b"1", b"2"]})
            )
            assert put.tag == "KvPutResponse", put
            got = await link.kv(actor_id, Variant("KvGetRequest", {"keys": [b"a", b"zz"]}))
            assert got.tag == "KvGetResponse", got
            # A missing key is simply absent from the answer.
            assert got.val["keys"] == [b"a"] and got.val["values"] == [b"1"]
            listed = await link.kv(
                actor_id,
                Variant(
                    "KvListRequest",
                    {"query": Variant("KvListAllQuery"), "reverse": None, "limit": None},
                ),
            )
            assert listed.val["keys"] == [b"a", b"b"]
            deleted = await link.kv(actor_id, Variant("KvDeleteRequest", {"keys": [b"a"]}))
            assert deleted.tag == "KvDeleteResponse"
            again = await link.kv(actor_id, Variant("KvGetRequest", {"keys": [b"a"]}))
            assert again.val["keys"] == []
            assert link.stats.kv_requests == 5


async def test_a_sleep_intent_is_answered_with_stop_sleep_intent(engine: Engine) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with link_to(engine.url, "l-sleep") as (link, recorder):
            actor_id = await start_actor(engine, link, recorder, "l-sleep", "s")
            link.queue_event(
                actor_id, 1, Variant("EventActorIntent", {"intent": Variant("ActorIntentSleep")})
            )
            assert await recorder.wait_for(lambda: recorder.stop_of(actor_id)) == "SleepIntent"


async def test_stopping_makes_the_engine_stop_this_envoys_actors_going_away(
    engine: Engine,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with link_to(engine.url, "l-drain") as (link, recorder):
            actor_id = await start_actor(engine, link, recorder, "l-drain", "d")
            await link.stopping()
            assert await recorder.wait_for(lambda: recorder.stop_of(actor_id)) == "GoingAway"


async def test_a_second_link_with_the_same_key_evicts_the_first(engine: Engine) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        with pytest.RaisesGroup(EnvoyEvicted, flatten_subgroups=True):
            async with (
                link_to(engine.url, "l-evict") as (first, _),
                link_to(engine.url, "l-evict", envoy_key=first.options.envoy_key),
            ):
                await trio.sleep_forever()  # ended by the first link's EnvoyEvicted


async def test_after_a_cut_unacked_events_are_resent_and_acked_commands_not_redelivered(
    engine: Engine,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            proxy_to(engine) as proxy,
            link_to(
                f"http://127.0.0.1:{proxy.port}", "l-cut", ack_interval=3600, **FAST_RECONNECT
            ) as (
                link,
                recorder,
            ),
        ):
            actor_id = await start_actor(engine, link, recorder, "l-cut", "c", ack=True)
            proxy.refusing = True
            proxy.cut()
            await wait_until(lambda: not link.connected)
            # Queued while the link is down: only a resend can bring it to the engine.
            link.queue_event(
                actor_id, 1, Variant("EventActorIntent", {"intent": Variant("ActorIntentSleep")})
            )
            proxy.refusing = False
            await link.wait_connects(2)
            assert await recorder.wait_for(lambda: recorder.stop_of(actor_id)) == "SleepIntent"
            assert link.stats.events_resent >= 1
            assert len(recorder.starts(actor_id)) == 1
            assert link.stats.duplicate_commands == 0


async def test_after_a_cut_unacked_commands_are_replayed_and_handed_over_once(
    engine: Engine,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            proxy_to(engine) as proxy,
            link_to(
                f"http://127.0.0.1:{proxy.port}", "l-replay", ack_interval=3600, **FAST_RECONNECT
            ) as (
                link,
                recorder,
            ),
        ):
            actor_id = await start_actor(engine, link, recorder, "l-replay", "r")
            proxy.cut()  # the start command was never acknowledged
            await link.wait_connects(2)
            await wait_until(lambda: link.stats.duplicate_commands >= 1)
            assert len(recorder.starts(actor_id)) == 1


async def test_a_link_down_past_the_lost_threshold_less_the_margin_reports_lost_once(
    engine: Engine,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            proxy_to(engine) as proxy,
            # Threshold 15 s less a 14 s margin: lost after 1 s down.
            link_to(
                f"http://127.0.0.1:{proxy.port}", "l-lost", lost_margin=14.0, **FAST_RECONNECT
            ) as (
                link,
                recorder,
            ),
        ):
            assert recorder.lost == 0
            proxy.refusing = True
            proxy.cut()
            await wait_until(lambda: not link.connected)
            await recorder.wait_for(lambda: recorder.lost)
            assert not link.connected
            proxy.refusing = False
            await link.wait_connects(2)
            assert recorder.lost == 1


async def test_a_silent_connection_is_down_after_the_ping_timeout(engine: Engine) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            proxy_to(engine) as proxy,
            # Lost 1 s after the last message; a silent connection is down after 1 s.
            link_to(
                f"http://127.0.0.1:{proxy.port}",
                "l-silent",
                lost_margin=14.0,
                ping_timeout=1.0,
                **FAST_RECONNECT,
            ) as (link, recorder),
        ):
            proxy.refusing = True
            frozen = trio.current_time()
            proxy.freeze()  # no close, no TCP error: only the missing pings tell
            await recorder.wait_for(lambda: recorder.lost)
            # From the last message heard (at most a ping interval before the freeze).
            assert trio.current_time() - frozen < 3.0
            proxy.refusing = False
            await link.wait_connects(2)
            proxy.cut()  # the frozen connection


async def test_under_a_short_lost_threshold_a_half_open_link_stops_its_actors_in_time(
    tmp_path: Path,
) -> None:
    """With the engine's lost threshold at 5 s, below ``ping_timeout`` (10 s) + ``lost_margin``
    (3 s), a healthy link is not taken for down between the engine's pings, and a half-open
    one (no close, no TCP error) is noticed, and lost reported, before the threshold passes
    (the silence timeout is 4 s, counted from the last message heard, before the freeze)."""
    own = start_engine(tmp_path, env={"RIVET__PEGBOARD__ENVOY_LOST_THRESHOLD": "5000"})
    try:
        with trio.fail_after(TEST_TIMEOUT):
            async with (
                proxy_to(own) as proxy,
                link_to(f"http://127.0.0.1:{proxy.port}", "l-short", **FAST_RECONNECT) as (
                    link,
                    recorder,
                ),
            ):
                assert link.lost_threshold == 5.0
                assert link.silence_timeout() == 4.0
                pings = link.stats.pings
                await trio.sleep(9.0)  # three of the engine's pings on a healthy link
                assert link.stats.pings >= pings + 2
                assert (recorder.lost, link.stats.connects) == (0, 1)
                proxy.refusing = True
                frozen = trio.current_time()
                proxy.freeze()
                await recorder.wait_for(lambda: recorder.lost)
                # Lost is reported at the last message heard + 4 s: before the engine's
                # 5 s, counted from the same ping.
                assert trio.current_time() - frozen < 4.5
                assert not link.connected
                proxy.cut()
    finally:
        stop_engine(own)


@attrs.define(eq=False)
class Faulty(Recorder):
    """A handler with a bug: it raises on its first command and on every tunnel message."""

    raised: int = 0

    def on_command(self, actor_id: str, generation: int, command: Variant) -> None:
        super().on_command(actor_id, generation, command)
        if len(self.commands) == 1:
            self.raised += 1
            raise RuntimeError("a bug in the handler")

    def on_tunnel(self, message: dict[str, Any]) -> None:
        super().on_tunnel(message)
        self.raised += 1
        raise RuntimeError("a bug in the handler")


async def test_a_handler_that_raises_does_not_take_the_link_down(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    pool = "l-faulty"
    resource = (
        f"/gateway/{NAME}/connect?rvt-namespace=default&rvt-method=getOrCreate"
        f"&rvt-runner={pool}&rvt-key=f&rvt-crash-policy=sleep"
    )
    handler = Faulty()
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            EnvoyLink.open(EnvoyOptions(url=engine.url, pool=pool), handler, [NAME]) as link,
            trio.open_nursery() as nursery,
        ):
            actor_id = await start_actor(engine, link, handler, pool, "f")
            assert handler.raised == 1

            async def client() -> None:
                async with tcp_websocket(
                    port_of(engine.url), resource, subprotocols=["rivet"]
                ) as ws:
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws.get_message()
                    assert closed.value.reason.code == 1000

            nursery.start_soon(client)
            opened = await handler.wait_for(lambda: tunnel_of(handler, "ToEnvoyWebSocketOpen"))
            assert handler.raised == 2
            # Still the first connection, and it still serves: a KV round trip.
            put = await link.kv(
                actor_id, Variant("KvPutRequest", {"keys": [b"k"], "values": [b"v"]})
            )
            assert put.tag == "KvPutResponse"
            assert (link.connected, link.stats.connects, link.stats.handler_errors) == (True, 1, 2)
            assert "the envoy's handler failed" in caplog.text
            # End the gateway's request (or the engine would wait for it when it stops).
            request = opened[0]["messageId"]
            for index, kind in enumerate(
                [
                    Variant("ToRivetWebSocketOpen", {"canHibernate": False}),
                    Variant(
                        "ToRivetWebSocketClose", {"code": 1000, "reason": None, "hibernate": False}
                    ),
                ]
            ):
                await link.send_tunnel({**request, "messageIndex": index}, kind)
