"""An envoy's status port under a real engine: ``/healthz``, ``/readyz`` (503 while the link to
the engine is down) and ``/metrics`` with the link's metrics; actor routes are not served
there; and ``actorcore serve --engine URL --status-port 0`` serves it as a process."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import actorcore
from actorcore import cli
from actorcore.engine.link import EnvoyOptions
from actorcore.engine.runtime import EngineRuntime
from actorcore.engine.status import serve_status

from ..http._http import request
from .conftest import Engine
from .test_link import FAST_RECONNECT, proxy_to, wait_until
from .test_process import Envoy
from .test_runtime import Tally

TEST_TIMEOUT = 60


async def test_probes_and_metrics_follow_the_link(engine: Engine) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with proxy_to(engine) as proxy, trio.open_nursery() as nursery:
            registry = actorcore.Registry([Tally])
            runtime = EngineRuntime(
                registry,
                EnvoyOptions(url=f"http://127.0.0.1:{proxy.port}", pool="st", **FAST_RECONNECT),
            )
            await nursery.start(runtime.run)
            port = await nursery.start(serve_status, runtime, "127.0.0.1", 0)

            assert (await request(port, "GET", "/healthz")).body == b"ok\n"
            ready = await request(port, "GET", "/readyz")
            assert (ready.status, ready.body) == (200, b"ready\n")
            metrics = await request(port, "GET", "/metrics")
            assert metrics.status == 200
            text = metrics.body.decode()
            assert "actorcore_engine_link_up 1.0" in text
            assert "actorcore_engine_link_connects_total 1.0" in text
            assert 'actorcore_engine_tunnel_messages_total{direction="in"}' in text
            assert "actorcore_engine_http_requests_in_flight 0.0" in text
            assert 'actorcore_actors{state="started"}' in text

            # Not the actors' routes: clients reach actors through the gateway.
            for target in ("/actors/tally/k/actions/add", "/actors/tally/k/connect"):
                assert (await request(port, "POST", target)).status == 404
            assert (await request(port, "GET", "/inspector")).status == 404

            # The link down: not ready (the gateway could not reach this envoy).
            proxy.refusing = True
            proxy.cut()
            await wait_until(lambda: not runtime.link.connected)
            down = await request(port, "GET", "/readyz")
            assert (down.status, down.body) == (503, b"engine link down\n")
            assert down.headers["retry-after"] == "1"
            assert (
                "actorcore_engine_link_up 0.0"
                in (await request(port, "GET", "/metrics")).body.decode()
            )
            proxy.refusing = False
            await runtime.link.wait_connects(2)
            assert (await request(port, "GET", "/readyz")).status == 200

            # A malformed request head gets 400.
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"NOT HTTP\r\n\r\n")
                answer = await stream.receive_some(4096)
                assert answer.startswith(b"HTTP/1.1 400 ")
            registry.request_shutdown()
            await registry.wait_stopped()
            nursery.cancel_scope.cancel()


def test_status_port_without_engine_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "examples.counter:registry", "--status-port", "0"]) == 2
    assert "--status-port applies with --engine only" in capsys.readouterr().err


async def test_the_cli_serves_the_status_port(engine: Engine, tmp_path: Path) -> None:
    envoy = Envoy(engine, "st-cli", tmp_path / "envoy.log", "--status-port", "0")
    try:
        with trio.fail_after(TEST_TIMEOUT):
            await wait_until(lambda: b"status on http://" in envoy.log.read_bytes())
            line = next(
                line for line in envoy.log.read_text().splitlines() if "status on http://" in line
            )
            port = int(line.rsplit(":", 1)[1].rstrip(")"))
            assert (await request(port, "GET", "/readyz")).status == 200
            envoy.process.terminate()
            await wait_until(lambda: envoy.process.poll() is not None)
            assert envoy.process.returncode == 0, envoy.log.read_text()
    finally:
        envoy.kill()
