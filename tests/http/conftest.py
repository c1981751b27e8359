"""Fixtures of the HTTP tests: a registry served on a real loopback port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

import actorcore
from actorcore.ws.server import WebSocketServer


@pytest.fixture
def serve(nursery: trio.Nursery) -> Callable[..., Any]:
    """``server = await serve(registry, **options)``: serve on 127.0.0.1, any free port."""

    async def start(registry: actorcore.Registry, **options: Any) -> WebSocketServer:
        async def run(task_status: trio.TaskStatus[WebSocketServer]) -> None:
            await registry.serve("127.0.0.1", 0, task_status=task_status, **options)

        server: WebSocketServer = await nursery.start(run)
        return server

    return start
