"""HTTP on the server's port: health and readiness probes, Prometheus metrics, actions and
actor handlers over HTTP, and the live inspector (see ``docs/http.md``).

The server front end (:mod:`actorcore.ws.server`) reads each request head with h11 and hands a
request that is not a WebSocket upgrade to :class:`~actorcore.http.app.HttpApp`.
"""

from __future__ import annotations

from .request import Headers, Request, Response

__all__ = ["Headers", "Request", "Response"]
