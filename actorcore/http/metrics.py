"""Prometheus metrics: a ``prometheus_client`` custom collector over the registry's
``statistics()`` and a few counters kept off the hot path (see ``docs/http.md``).

Scraping reads the counters; nothing is formatted per message. What is counted as it happens:
lifecycle transitions (a registry transition listener), actions (one ``perf_counter`` pair
and a bucket increment per action, through the host's ``action_observer``) and state writes
(the host's ``store_write_observer``). With metrics off (``metrics=False``) none of them is
installed.

Names (the ``actor`` label is the actor's name, never its key or id):

- ``actorcore_actors{state}`` gauge, actors in memory by lifecycle state;
- ``actorcore_lifecycle_transitions_total{actor,to}``;
- ``actorcore_connections{kind}`` gauge (``protocol``, ``raw``);
- ``actorcore_messages_total{direction}`` (``in``, ``out``);
- ``actorcore_actions_total{actor,outcome}`` (``ok``, ``error``) and
  ``actorcore_action_seconds{actor}`` histogram;
- ``actorcore_closes_total{code}``, close frames sent by the server;
- ``actorcore_store_write_seconds`` histogram;
- ``actorcore_http_requests_total{route,status}``.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ..conn import ConnKind
from ..lifecycle import LifecycleState
from ..registry import host_of

if TYPE_CHECKING:
    from ..registry import Registry

__all__ = ["ACTION_BUCKETS", "STORE_BUCKETS", "Histogram", "Metrics"]

#: Bucket bounds (seconds) of ``actorcore_action_seconds``.
ACTION_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
#: Bucket bounds (seconds) of ``actorcore_store_write_seconds``.
STORE_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)  # fmt: skip


class Histogram:
    """Bucket counts of observations (the ``+Inf`` bucket last), kept as plain ints."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative buckets as ``prometheus_client`` takes them."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


class Metrics:
    """The metrics of one served registry (``server.metrics``); :meth:`scrape` renders them."""

    def __init__(
        self,
        registry: Registry,
        http_requests: collections.Counter[tuple[str, int]] | None = None,
    ) -> None:
        self.registry = registry
        self.host = host_of(registry)
        self.http_requests = http_requests if http_requests is not None else collections.Counter()
        """Answered HTTP requests by (route, status), counted by the HTTP app."""
        self.transitions: collections.Counter[tuple[str, str]] = collections.Counter()
        self.actions: collections.Counter[tuple[str, str]] = collections.Counter()
        self.action_seconds: dict[str, Histogram] = {}
        self.store_writes = Histogram(STORE_BUCKETS)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self._detach: list[Callable[[], None]] = []

    def register(self, collector: Collector) -> None:
        """Add a ``prometheus_client`` collector's metrics to this exposition (an envoy's
        link metrics, an embedder's own)."""
        self._registry.register(collector)

    # ---------------------------------------------------------------- counting

    def attach(self) -> None:
        """Start counting (install the host's observers and a transition listener)."""
        host = self.host
        host.action_observer = self._action
        host.store_write_observer = self.store_writes.observe
        self._detach.append(self.registry.watch_transitions(self._transition))

    def detach(self) -> None:
        """Stop counting."""
        host = self.host
        if host.action_observer == self._action:
            host.action_observer = None
        if host.store_write_observer == self.store_writes.observe:
            host.store_write_observer = None
        for stop in self._detach:
            stop()
        self._detach.clear()

    def _transition(self, actor_id: str, old: LifecycleState, new: LifecycleState) -> None:
        entry = self.host.entry(actor_id)
        name = entry.name if entry is not None else "unknown"
        self.transitions[name, new.value] += 1

    def _action(self, name: str, ok: bool, seconds: float) -> None:
        self.actions[name, "ok" if ok else "error"] += 1
        histogram = self.action_seconds.get(name)
        if histogram is None:
            histogram = self.action_seconds[name] = Histogram(ACTION_BUCKETS)
        histogram.observe(seconds)

    # ---------------------------------------------------------------- exposition

    def scrape(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text format, or OpenMetrics if ``accept`` asks for
        it) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._registry), content_type

    def collect(self) -> Iterator[Metric]:
        """The ``prometheus_client`` collector protocol."""
        stats = self.registry.statistics()
        actors = GaugeMetricFamily(
            "actorcore_actors", "Actors in memory by lifecycle state.", labels=["state"]
        )
        for state in LifecycleState:
            actors.add_metric([state.value], stats.actors_by_state.get(state.value, 0))
        yield actors

        transitions = CounterMetricFamily(
            "actorcore_lifecycle_transitions",
            "Lifecycle transitions by actor name and new state.",
            labels=["actor", "to"],
        )
        for (name, to), count in sorted(self.transitions.items()):
            transitions.add_metric([name, to], count)
        yield transitions

        by_kind = dict.fromkeys((k.value for k in ConnKind), 0)
        for entry in self.host.entries():
            for conn in entry.conns:
                by_kind[conn.kind.value] += 1
        connections = GaugeMetricFamily(
            "actorcore_connections", "Open actor connections by kind.", labels=["kind"]
        )
        for kind, count in by_kind.items():
            connections.add_metric([kind], count)
        yield connections

        messages = CounterMetricFamily(
            "actorcore_messages", "WebSocket messages by direction.", labels=["direction"]
        )
        messages.add_metric(["in"], stats.messages_in)
        messages.add_metric(["out"], stats.messages_out)
        yield messages

        actions = CounterMetricFamily(
            "actorcore_actions",
            "Actions run by actor name and outcome.",
            labels=["actor", "outcome"],
        )
        for (name, outcome), count in sorted(self.actions.items()):
            actions.add_metric([name, outcome], count)
        yield actions

        seconds = HistogramMetricFamily(
            "actorcore_action_seconds", "Action run time by actor name.", labels=["actor"]
        )
        for name, histogram in sorted(self.action_seconds.items()):
            seconds.add_metric([name], histogram.buckets(), histogram.sum)
        yield seconds

        closes = CounterMetricFamily(
            "actorcore_closes", "Close frames sent by the server, by code.", labels=["code"]
        )
        for code, count in sorted(stats.closes_by_code.items()):
            closes.add_metric([str(code)], count)
        yield closes

        writes = HistogramMetricFamily(
            "actorcore_store_write_seconds", "State writes to the store (successful)."
        )
        writes.add_metric([], self.store_writes.buckets(), self.store_writes.sum)
        yield writes

        http = CounterMetricFamily(
            "actorcore_http_requests",
            "HTTP requests answered by route and status.",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(self.http_requests.items()):
            http.add_metric([route, str(status)], count)
        yield http
