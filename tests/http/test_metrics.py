"""``GET /metrics``: every metric of issue 20, read back with prometheus_client's parser."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed

import actorcore
from actorcore import ActorContext
from actorcore.conn import Conn

from .._clients import tcp_websocket
from ._http import post_action, request

Serve = Callable[..., Any]


class Counter(actorcore.Actor):
    name = "counter"

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, int]:
        return {"count": 0}

    @actorcore.action
    async def add(self, ctx: ActorContext, n: int = 1) -> int:
        ctx.state["count"] += n
        await ctx.save_state()
        return int(ctx.state["count"])

    @actorcore.action
    async def fail(self, ctx: ActorContext) -> None:
        raise actorcore.UserError("no")

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        await conn.send(message)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> tuple[Samples, dict[str, str]]:
    reply = await request(port, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_every_metric_is_exposed_with_its_labels(serve: Any) -> None:
    registry = actorcore.Registry([Counter])
    server = await serve(registry)
    port = server.port
    assert (await post_action(port, "/actors/counter/a/actions/add", [2])).status == 200
    assert (await post_action(port, "/actors/counter/a/actions/fail", [])).status == 400
    assert (await post_action(port, "/actors/counter/a/actions/nope", [])).status == 404
    async with tcp_websocket(port, "/actors/counter/a/connect") as ws:
        await ws.send_message(json.dumps({"type": "action", "id": 1, "name": "add", "args": []}))
        frames = [json.loads(await ws.get_message()) for _ in range(2)]
        assert frames[-1]["output"] == 3
        async with tcp_websocket(port, "/actors/counter/a/ws") as raw:
            await raw.send_message("echo")
            assert await raw.get_message() == "echo"
            samples, types = await scrape(port)
            assert value(samples, "actorcore_connections", kind="protocol") == 1
            assert value(samples, "actorcore_connections", kind="raw") == 1
    async with tcp_websocket(port, "/actors/nobody/a/connect") as refused:
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await refused.get_message()
        assert closed.value.reason.code == 1008
    handle = await registry.get("counter", "a")
    with trio.fail_after(10):
        await registry.sleep(handle.actor_id)

    samples, types = await scrape(port)
    assert types["actorcore_actors"] == "gauge"
    assert value(samples, "actorcore_actors", state="started") == 0
    assert ("actorcore_actors", (("state", "asleep"),)) in samples
    assert value(samples, "actorcore_lifecycle_transitions_total", actor="counter", to="started")
    assert (
        value(samples, "actorcore_lifecycle_transitions_total", actor="counter", to="asleep") == 1
    )
    assert types["actorcore_connections"] == "gauge"
    assert value(samples, "actorcore_connections", kind="protocol") == 0
    assert value(samples, "actorcore_messages_total", direction="in") >= 2
    assert value(samples, "actorcore_messages_total", direction="out") >= 3
    assert value(samples, "actorcore_actions_total", actor="counter", outcome="ok") == 2
    assert value(samples, "actorcore_actions_total", actor="counter", outcome="error") == 1
    assert types["actorcore_action_seconds"] == "histogram"
    assert value(samples, "actorcore_action_seconds_count", actor="counter") == 3
    assert value(samples, "actorcore_action_seconds_bucket", actor="counter", le="+Inf") == 3
    assert value(samples, "actorcore_closes_total", code="1008") == 1
    assert types["actorcore_store_write_seconds"] == "histogram"
    assert value(samples, "actorcore_store_write_seconds_count") >= 2
    assert value(samples, "actorcore_http_requests_total", route="/metrics", status="200") == 1
    route = "/actors/{name}/{key}/actions/{action}"
    assert value(samples, "actorcore_http_requests_total", route=route, status="200") == 1
    assert value(samples, "actorcore_http_requests_total", route=route, status="400") == 1
    assert value(samples, "actorcore_http_requests_total", route=route, status="404") == 1
    # The actor label is the name: no key or id anywhere.
    text = (await request(port, "GET", "/metrics")).body.decode()
    assert handle.actor_id not in text
    assert 'actor="a"' not in text


async def test_a_request_head_the_front_end_refuses_is_counted(serve: Any) -> None:
    server = await serve(actorcore.Registry([Counter]))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 400")
    samples, _ = await scrape(server.port)
    assert value(samples, "actorcore_http_requests_total", route="invalid", status="400") == 1


async def test_openmetrics_is_served_when_asked(serve: Any) -> None:
    server = await serve(actorcore.Registry([Counter]))
    reply = await request(
        server.port, "GET", "/metrics", headers=[("Accept", "application/openmetrics-text")]
    )
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    assert reply.body.endswith(b"# EOF\n")


async def test_metrics_off_answers_404_and_counts_nothing(serve: Any) -> None:
    from actorcore.registry import host_of

    registry = actorcore.Registry([Counter])
    server = await serve(registry, metrics=False)
    assert (await request(server.port, "GET", "/metrics")).status == 404
    assert host_of(registry).action_observer is None
    assert server.metrics is None
