"""The inspector: its API and access rules over loopback, and its page in a real headless
Chromium (the Debian package; ``.ci/run`` installs it), driven over the DevTools protocol."""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

import actorcore
from actorcore import ActorContext

from .._clients import tcp_websocket
from ._http import Client, post_action, request

CHROMIUM = os.environ.get("ACTORCORE_CHROMIUM", "/usr/bin/chromium")


class Room(actorcore.Actor):
    name = "room"

    def create_state(self, ctx: ActorContext, input: Any) -> dict[str, Any]:
        return {"messages": []}

    @actorcore.action
    async def say(self, ctx: ActorContext, text: str) -> int:
        ctx.state["messages"].append(text)
        return len(ctx.state["messages"])


async def test_the_inspector_is_off_unless_enabled(serve: Any) -> None:
    server = await serve(actorcore.Registry([Room]))
    assert (await request(server.port, "GET", "/inspector")).status == 404


async def test_the_inspector_api_lists_shows_and_commands_actors(serve: Any) -> None:
    registry = actorcore.Registry([Room])
    server = await serve(registry, inspector=True)
    port = server.port
    assert (await post_action(port, "/actors/room/lobby/actions/say", ["hi"])).status == 200
    page = await request(port, "GET", "/inspector")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert b"<script" in page.body and b"http://" not in page.body  # self-contained
    listing = (await request(port, "GET", "/inspector/api/actors?q=lob")).json()
    assert listing["total"] == 1
    row = listing["actors"][0]
    assert (row["name"], row["key"], row["state"]) == ("room", "lobby", "started")
    assert (await request(port, "GET", "/inspector/api/actors?q=zzz")).json()["total"] == 0
    detail = (await request(port, "GET", f"/inspector/api/actors/{row['id']}")).json()
    assert detail["actor_state"] == {"messages": ["hi"]}
    assert detail["connections"] == []
    assert (await request(port, "GET", f"/inspector/api/actors/{row['id']}/sleep")).status == 405
    slept = await request(port, "POST", f"/inspector/api/actors/{row['id']}/sleep")
    assert slept.status == 200
    assert registry.lifecycle(row["id"]) in (actorcore.LifecycleState.ASLEEP, None)
    listing = (await request(port, "GET", "/inspector/api/actors")).json()
    assert listing["actors"][0]["state"] == "asleep"
    destroyed = await request(port, "POST", f"/inspector/api/actors/{row['id']}/destroy")
    assert destroyed.status == 200
    assert registry.lifecycle(row["id"]) is actorcore.LifecycleState.DESTROYED


async def test_the_inspector_pages_and_searches_the_store(serve: Any, tmp_path: Path) -> None:
    """Actors that only the store holds (asleep since before this server started) are listed,
    paged and searched, with their saved state, and can be destroyed."""
    path = str(tmp_path / "actors.db")
    async with actorcore.Registry([Room], actorcore.SQLiteStore(path)) as earlier:
        for key in ("alpha-1", "alpha-2", "beta-1", "beta-2", "beta-3"):
            handle = await earlier.get_or_create("room", key)
            await handle.call("say", key)
    registry = actorcore.Registry([Room], actorcore.SQLiteStore(path))
    server = await serve(registry, inspector=True)
    port = server.port
    listing = (await request(port, "GET", "/inspector/api/actors?per_page=2")).json()
    assert listing["source"] == "store"
    assert listing["total"] == 5
    assert [(r["key"], r["state"]) for r in listing["actors"]] == [
        ("alpha-1", "asleep"),
        ("alpha-2", "asleep"),
    ]
    second = (await request(port, "GET", "/inspector/api/actors?per_page=2&page=1")).json()
    assert [r["key"] for r in second["actors"]] == ["beta-1", "beta-2"]
    betas = (await request(port, "GET", "/inspector/api/actors?q=BETA")).json()
    assert betas["total"] == 3
    one = betas["actors"][0]
    detail = (await request(port, "GET", f"/inspector/api/actors/{one['id']}")).json()
    assert (detail["state"], detail["actor_state"]) == ("asleep", {"messages": ["beta-1"]})
    # Woken, it shows live; destroyed from the inspector, it leaves the store.
    assert (await post_action(port, "/actors/room/beta-1/actions/say", ["again"])).status == 200
    live = (await request(port, "GET", "/inspector/api/actors?q=beta-1")).json()["actors"][0]
    assert live["state"] == "started"
    gone = await request(port, "POST", f"/inspector/api/actors/{one['id']}/destroy")
    assert gone.status == 200
    assert (await request(port, "GET", "/inspector/api/actors?q=beta")).json()["total"] == 2


async def test_the_inspector_token_is_required_when_set(serve: Any) -> None:
    server = await serve(actorcore.Registry([Room]), inspector=True, inspector_token="s3cret")
    port = server.port
    reply = await request(port, "GET", "/inspector")
    assert reply.status == 403
    assert reply.json()["code"] == "auth.forbidden"
    assert (await request(port, "GET", "/inspector?token=wrong")).status == 403
    assert (await request(port, "GET", "/inspector?token=s3cret")).status == 200
    bearer = [("Authorization", "Bearer s3cret")]
    assert (await request(port, "GET", "/inspector/api/actors", headers=bearer)).status == 200


async def test_the_inspector_refuses_other_origins(serve: Any) -> None:
    server = await serve(actorcore.Registry([Room]), inspector=True)
    reply = await request(
        server.port,
        "POST",
        "/inspector/api/actors/x/destroy",
        headers=[("Origin", "http://evil.example")],
    )
    assert reply.status == 403


# ---------------------------------------------------------------- the browser


class DevTools:
    """A DevTools protocol session with one page."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> Any:
        call_id = next(self.ids)
        await self.ws.send_message(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.get_message())
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """Poll ``expression`` in the page until it is truthy (bounded: 20 s)."""
        with trio.fail_after(20):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await trio.sleep(0.05)


async def _devtools_port(process: trio.Process, lines: list[str]) -> int:
    assert process.stderr is not None
    buffer = b""
    with trio.fail_after(30):
        while True:
            chunk = await process.stderr.receive_some(4096)
            if not chunk:
                raise RuntimeError("chromium exited:\n" + buffer.decode(errors="replace"))
            buffer += chunk
            found = re.search(rb"DevTools listening on ws://[^:]+:(\d+)/", buffer)
            if found:
                lines.append(buffer.decode(errors="replace"))
                return int(found.group(1))


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(4096):
        pass


async def _page_target(devtools_port: int) -> str:
    with trio.fail_after(20):
        while True:
            stream = await trio.open_tcp_stream("127.0.0.1", devtools_port)
            async with stream:
                reply = await Client(stream, f"127.0.0.1:{devtools_port}").request(
                    "GET", "/json/list"
                )
            targets = reply.json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            await trio.sleep(0.1)


@pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
    reason="Debian chromium is not installed (.ci/run installs it)",
)
async def test_the_inspector_page_shows_an_actor_fall_asleep_live_in_chromium(
    serve: Any, tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = actorcore.Registry([Room])
    server = await serve(registry, inspector=True)
    port = server.port
    assert (await post_action(port, "/actors/room/lobby/actions/say", ["hi"])).status == 200
    handle = await registry.get("room", "lobby")
    profile = tmp_path / "profile"
    profile.mkdir()
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "--window-size=1280,800",
        f"http://127.0.0.1:{port}/inspector",
    ]
    async with trio.open_nursery() as browser:
        process: trio.Process = await browser.start(
            functools.partial(
                trio.run_process,
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        lines: list[str] = []
        devtools_port = await _devtools_port(process, lines)
        assert process.stderr is not None
        browser.start_soon(_drain, process.stderr)
        url = await _page_target(devtools_port)
        async with open_websocket_url(url, max_message_size=64 << 20) as ws:
            page = DevTools(ws)
            await page.call("Runtime.enable")
            # The page loads and lists the actor, live (its WebSocket says so).
            await page.wait_for("document.getElementById('status').textContent === 'live'")
            row = (
                f"document.querySelector('tr[data-id=\"{handle.actor_id}\"] .state')"
                " && document.querySelector("
                f"'tr[data-id=\"{handle.actor_id}\"] .state').textContent"
            )
            assert await page.wait_for(row) == "started"
            assert "lobby" in await page.evaluate("document.getElementById('actors').innerText")
            navigations = await page.evaluate("performance.getEntriesByType('navigation').length")
            # The actor sleeps: the page shows it without a reload.
            await registry.sleep(handle.actor_id)
            await page.wait_for(f"({row}) === 'asleep'")
            assert (
                await page.evaluate("performance.getEntriesByType('navigation').length")
                == navigations
            )
            assert await page.evaluate("performance.navigation.type") == 0  # not reloaded
            shot = await page.call("Page.captureScreenshot", format="png")
            path = tmp_path / "inspector.png"
            path.write_bytes(base64.b64decode(shot["data"]))
        assert path.stat().st_size > 1000
        assert path.read_bytes().startswith(b"\x89PNG")
        browser.cancel_scope.cancel()


async def test_the_inspector_websocket_pushes_changes_and_closes_on_shutdown(
    serve: Any,
) -> None:
    registry = actorcore.Registry([Room])
    server = await serve(registry, inspector=True, inspector_token="t")
    port = server.port
    async with tcp_websocket(port, "/inspector/ws") as refused:
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await refused.get_message()
        assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "auth.forbidden")
    async with tcp_websocket(port, "/inspector/ws?token=t") as ws:
        with trio.fail_after(10):
            first = json.loads(await ws.get_message())
        assert first["total"] == 0
        assert (await post_action(port, "/actors/room/a/actions/say", ["x"])).status == 200
        with trio.fail_after(10):
            while True:  # one update per change (bounded above)
                update = json.loads(await ws.get_message())
                if update["actors"] and update["actors"][0]["state"] == "started":
                    break
        assert update["actors"][0]["key"] == "a"
        await ws.send_message(json.dumps({"q": "nothing-matches", "page": 0}))
        with trio.fail_after(10):
            while json.loads(await ws.get_message())["total"] != 0:
                pass
        registry.request_shutdown()
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.get_message()
        assert closed.value.reason.code == 1012
