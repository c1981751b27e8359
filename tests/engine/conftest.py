"""A real Rivet engine for the engine tests: one process per test module, on free loopback
ports, with a temporary RocksDB folder and telemetry off."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from ._paths import engine_binary

#: Bound on the engine becoming healthy.
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.frozen
class Engine:
    """A running engine."""

    url: str
    """The guard: gateway, API and ``/envoys/connect``."""
    process: subprocess.Popen[bytes]
    log: Path
    folder: Path
    ports: tuple[int, int, int]

    @property
    def ws(self) -> str:
        """The guard as a ``ws://`` base URL."""
        return self.url.replace("http://", "ws://", 1)


def start_engine(
    folder: Path,
    ports: tuple[int, int, int] | None = None,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Engine:
    """Start ``rivet-engine start`` on free ports (or ``ports``: guard, API peer, metrics)
    with its data in ``folder`` (or where ``config``, a config file's content, says: e.g.
    PostgreSQL and NATS) and ``env`` added to its environment (settings such as
    ``RIVET__PEGBOARD__ENVOY_LOST_THRESHOLD``); return once it answers with its default
    namespace (bounded)."""
    guard, peer, metrics = ports or (_free_port(), _free_port(), _free_port())
    env = dict(
        os.environ,
        RIVET__GUARD__HOST="127.0.0.1",
        RIVET__GUARD__PORT=str(guard),
        RIVET__API_PEER__HOST="127.0.0.1",
        RIVET__API_PEER__PORT=str(peer),
        RIVET__METRICS__HOST="127.0.0.1",
        RIVET__METRICS__PORT=str(metrics),
        RIVET__TELEMETRY__ENABLED="false",
        RIVET__GUARD__TCP_NODELAY="true",
        **(env or {}),
    )
    argv = [str(engine_binary()), "start"]
    if config is None:
        env["RIVET__FILE_SYSTEM__PATH"] = str(folder / "db")
    else:
        path = folder / "config.json"
        path.write_text(json.dumps(config))
        argv += ["--config", str(path)]
    log = folder / "engine.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{guard}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            # Healthy, and the default namespace made (the engine makes it just after).
            with urllib.request.urlopen(f"{url}/namespaces", timeout=1) as answer:
                if answer.status == 200 and b'"default"' in answer.read():
                    return Engine(url, process, log, folder, (guard, peer, metrics))
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"the engine did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def stop_engine(engine: Engine) -> None:
    """Terminate the engine (bounded), then kill it."""
    engine.process.terminate()
    try:
        engine.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        engine.process.kill()
        engine.process.wait()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A running engine, shared by one test module."""
    running = start_engine(tmp_path_factory.mktemp("engine"))
    try:
        yield running
    finally:
        stop_engine(running)
