"""Test helpers shared across the suites: a TCP WebSocket client whose stream the test owns,
and a lifecycle authority that grants at once and reports every grant."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

import actorcore
from actorcore.authority import LifecycleRequest
from actorcore.generation import ActorEntry
from actorcore.lifecycle import LifecycleState
from actorcore.registry import host_of
from actorcore.testing import client_nursery


@asynccontextmanager
async def tcp_websocket(
    port: int,
    resource: str,
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket to 127.0.0.1:``port`` whose TCP stream the test owns: trio-websocket's
    client does not close its socket after a close the server started (it waits for the
    server's TCP close and then leaves the stream open), which ``filterwarnings = error``
    reports as a ResourceWarning. ``extra_headers`` and ``subprotocols`` go with the upgrade
    request."""
    async with client_nursery() as nursery:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            ws = await wrap_client_stream(
                nursery,
                stream,
                f"127.0.0.1:{port}",
                resource,
                extra_headers=extra_headers,
                subprotocols=subprotocols,
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(5, shield=True):
                    await ws.aclose()
        nursery.cancel_scope.cancel()


Granted = Callable[[LifecycleRequest, ActorEntry, LifecycleState, bool, Any], None]
"""Told of every grant: the request, the entry, its state and ``destroy_requested`` before the
grant, and the generation that was running (or None)."""


class RecordingAuthority:
    """Grants every request at once (like LocalAuthority) and reports each grant. A request
    for an actor with no entry is reported to ``violation`` (then granted anyway)."""

    def __init__(self, granted: Granted, violation: Callable[[str], None]) -> None:
        self.granted = granted
        self.violation = violation
        self.registry: actorcore.Registry | None = None

    def request(self, request: LifecycleRequest, apply: Callable[[], None]) -> None:
        assert self.registry is not None
        entry = host_of(self.registry).entry(request.actor_id)
        if entry is None:
            self.violation(f"{request.event.name} requested for {request.actor_id} with no entry")
            apply()
            return
        before = entry.lifecycle.state
        destroy_before = entry.lifecycle.destroy_requested
        gen = entry.generation
        apply()
        self.granted(request, entry, before, destroy_before, gen)
