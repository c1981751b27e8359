"""``actorcore serve ... --inspector``: the flags, the token from the environment, and the README's
curl call, against a real server process."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import trio

from ..test_cli import serve
from ._http import post_action, request

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


async def test_serve_with_the_inspector_and_a_token_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTORCORE_INSPECTOR_TOKEN", "from-env")
    async with serve(
        tmp_path, "examples.counter:registry", "--port", "0", "--store", ":memory:", "--inspector"
    ) as server:
        await server.wait_listening()
        port = server.port
        await server.wait_stdout(f"inspector at http://127.0.0.1:{port}/inspector")
        # The README's call.
        reply = await post_action(port, "/actors/counter/my-counter/actions/increment", [5])
        assert (reply.status, reply.json()) == (200, {"output": 5})
        missing = await request(port, "POST", "/actors/counter/my-counter/actions/nope")
        assert missing.status == 404
        assert missing.json() == {
            "code": "action.not_found",
            "message": "actor 'counter' has no action 'nope'",
            "retryable": False,
        }
        assert (await request(port, "GET", "/inspector")).status == 403
        page = await request(port, "GET", "/inspector?token=from-env")
        assert page.status == 200
        listing = await request(port, "GET", "/inspector/api/actors?token=from-env")
        assert [a["key"] for a in listing.json()["actors"]] == ["my-counter"]
        scrape = await request(port, "GET", "/metrics")
        assert b'actorcore_actions_total{actor="counter",outcome="ok"} 1.0' in scrape.body
        server.proc.send_signal(signal.SIGTERM)
        assert await server.exit_code() == 0, server.stderr()


async def test_inspector_token_flag_and_no_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACTORCORE_INSPECTOR_TOKEN", raising=False)
    async with serve(
        tmp_path,
        "examples.counter:registry",
        "--port",
        "0",
        "--store",
        ":memory:",
        "--inspector",
        "--inspector-token",
        "flag",
        "--no-metrics",
    ) as server:
        await server.wait_listening()
        port = server.port
        assert (await request(port, "GET", "/inspector?token=flag")).status == 200
        assert (await request(port, "GET", "/inspector?token=x")).status == 403
        assert (await request(port, "GET", "/metrics")).status == 404
        assert (await request(port, "GET", "/healthz")).body == b"ok\n"
        server.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await server.exit_code() == 0, server.stderr()
