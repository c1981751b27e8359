"""The status port of an envoy process: ``/healthz``, ``/readyz`` and ``/metrics`` over HTTP,
for a process supervisor's probes and a Prometheus scraper (an envoy does not listen for
clients: they reach its actors through the engine's gateway).

``actorcore serve ... --engine URL --status-port PORT`` (or :func:`serve_status`) serves them
on ``--host``:PORT with the same HTTP front end as actorcore's own listener
(:class:`~actorcore.http.connection.HttpConnection`, h11); every other route answers 404.

- ``/healthz``: 200 while the process runs its event loop.
- ``/readyz``: 200 while the registry serves and the link to the engine is up; 503 with
  ``Retry-After: 1`` during a drain, while the store fails, or while the link is down.
- ``/metrics``: the registry's metrics (``docs/http.md``) and the link's,
  ``actorcore_engine_*`` (:class:`LinkCollector`).

Bounds: :data:`MAX_CONNECTIONS` connections at once (more are closed at once), the request
head within :data:`HEAD_TIMEOUT`, and the HTTP limits of :class:`HttpLimits` (keep-alive,
requests per connection, request timeout).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import h11
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..http.app import HttpApp
from ..http.connection import HttpConnection, HttpLimits
from ..http.metrics import Metrics
from ..ws.handshake import HandshakeRefused, new_connection, read_request_head, refuse
from ..ws.origin import OriginPolicy

if TYPE_CHECKING:
    from .runtime import EngineRuntime

__all__ = ["LinkCollector", "serve_status"]

log = logging.getLogger("actorcore.engine")

#: Status connections served at once; more are closed as they come.
MAX_CONNECTIONS: Final = 64
#: Bound on reading a request head.
HEAD_TIMEOUT: Final = 10.0
RECEIVE_SIZE: Final = 16384


class LinkCollector:
    """The envoy link's metrics, as a ``prometheus_client`` collector:

    - ``actorcore_engine_link_up`` gauge, 1 while the link to the engine is up;
    - ``actorcore_engine_link_connects_total``, connections made (reconnects included);
    - ``actorcore_engine_commands_total``, commands handed to the runtime (duplicates
      dropped: ``actorcore_engine_duplicate_commands_total``);
    - ``actorcore_engine_events_sent_total`` and ``actorcore_engine_events_resent_total``;
    - ``actorcore_engine_tunnel_messages_total{direction}`` (``in``, ``out``);
    - ``actorcore_engine_http_requests_in_flight`` gauge, HTTP requests through the gateway.
    """

    def __init__(self, runtime: EngineRuntime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        """The ``prometheus_client`` collector protocol."""
        link = self._runtime.link
        stats = link.stats
        yield GaugeMetricFamily(
            "actorcore_engine_link_up",
            "1 while the link to the engine is up.",
            value=1 if link.connected else 0,
        )
        for name, text, value in (
            ("link_connects", "Connections made to the engine.", stats.connects),
            ("commands", "Engine commands handled.", stats.commands),
            ("duplicate_commands", "Engine commands dropped as replays.", stats.duplicate_commands),
            ("events_sent", "Events sent to the engine.", stats.events_sent),
            ("events_resent", "Events sent again after a reconnect.", stats.events_resent),
        ):
            yield CounterMetricFamily(f"actorcore_engine_{name}", text, value=value)
        tunnel = CounterMetricFamily(
            "actorcore_engine_tunnel_messages",
            "Gateway tunnel messages by direction.",
            labels=["direction"],
        )
        tunnel.add_metric(["in"], stats.tunnel_in)
        tunnel.add_metric(["out"], stats.tunnel_out)
        yield tunnel
        yield GaugeMetricFamily(
            "actorcore_engine_http_requests_in_flight",
            "HTTP requests through the gateway being answered.",
            value=self._runtime.requests.statistics().in_flight,
        )


def status_app(runtime: EngineRuntime) -> HttpApp:
    """The HTTP app of the status port: probes and metrics only."""
    registry = runtime.registry
    metrics = Metrics(registry, runtime.http.requests)
    metrics.register(LinkCollector(runtime))
    metrics.attach()

    def not_ready() -> str | None:
        return None if runtime.link.connected else "engine link down"

    return HttpApp(
        registry,
        OriginPolicy.make(("*",), loopback=False),
        metrics=metrics,
        actor_routes=False,
        not_ready=not_ready,
    )


async def serve_status(
    runtime: EngineRuntime,
    host: str,
    port: int,
    *,
    limits: HttpLimits | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the status port of ``runtime`` (started once ``runtime.run`` has started) on
    ``host``:``port`` (0: any free port) until cancelled; started with the bound port."""
    app = status_app(runtime)
    limits = limits or HttpLimits()
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    slots = trio.Semaphore(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                return  # at capacity: closed at once
            try:
                await _serve_one(stream, app, limits)
            finally:
                slots.release()

    try:
        task_status.started(bound)
        await trio.serve_listeners(handle, listeners)
    finally:
        if app.metrics is not None:
            app.metrics.detach()


async def _serve_one(stream: trio.SocketStream, app: HttpApp, limits: HttpLimits) -> None:
    conn = new_connection()
    head: h11.Request | None = None
    with trio.move_on_after(HEAD_TIMEOUT):
        try:
            head = await read_request_head(stream, conn, RECEIVE_SIZE)
        except h11.RemoteProtocolError as exc:
            app.count_bad_head(exc.error_status_hint)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await refuse(stream, conn, HandshakeRefused(exc.error_status_hint, "bad request"))
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
    if head is None:
        return
    connection = HttpConnection(
        stream, conn, app, limits, client=None, receive_size=RECEIVE_SIZE, closing=lambda: False
    )
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await connection.run(head)  # an upgrade asked later is not served: the socket closes
