"""The creation budget: how many new actors one client address may cause, as a token bucket.

Connections that reach an existing actor cost nothing; a connection that would create an
actor takes a token from its address's bucket, and is refused (1013 ``actor.overloaded``,
no actor created) when the bucket is empty. Time is trio's clock, so the budget is testable
with ``autojump_clock``.
"""

from __future__ import annotations

import collections

import attrs

__all__ = ["CreateRate", "TokenBuckets"]


@attrs.frozen
class CreateRate:
    """A token bucket per client address: ``burst`` creations at once, refilled at
    ``per_second``. ``max_clients`` bounds the buckets kept: past it, the bucket used least
    recently is forgotten (its address starts full again)."""

    per_second: float = 10.0
    """Tokens added per second."""
    burst: int = 100
    """Bucket size: creations allowed at once after a quiet period."""
    max_clients: int = 10_000
    """Buckets kept at most."""

    def __attrs_post_init__(self) -> None:
        if not self.per_second > 0 or self.burst < 1 or self.max_clients < 1:
            raise ValueError("CreateRate needs per_second > 0, burst >= 1 and max_clients >= 1")


class TokenBuckets:
    """The buckets of a :class:`CreateRate`, by client address (memory: ``max_clients``)."""

    def __init__(self, rate: CreateRate) -> None:
        self.rate = rate
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self.refused = 0
        """Takes refused so far."""

    def take(self, client: str, now: float) -> bool:
        """Take a token for ``client`` at time ``now``; False (and nothing taken) if its
        bucket is empty."""
        rate = self.rate
        tokens, at = self._buckets.pop(client, (float(rate.burst), now))
        tokens = min(float(rate.burst), tokens + (now - at) * rate.per_second)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        else:
            self.refused += 1
        self._buckets[client] = (tokens, now)  # most recently used last
        while len(self._buckets) > rate.max_clients:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)
