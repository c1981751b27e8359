"""The HTTP routes: which handler a request target names (see ``docs/http.md``).

================================================  ==============================
``GET /healthz``                                   liveness
``GET /readyz``                                    readiness
``GET /metrics``                                   Prometheus text format
``POST /actors/{name}/{key}/actions/{action}``     an action (get-or-create)
``POST /actors/by-id/{actor_id}/actions/{action}`` an action (existing actor)
``ANY /actors/{name}/{key}/http[/...]``            the actor's ``on_request``
``ANY /actors/by-id/{actor_id}/http[/...]``        the actor's ``on_request``
``GET /inspector`` (and ``/inspector/...``)        the inspector, when enabled
================================================  ==============================

Name, key, id and action are percent-encoded path segments, as in the WebSocket routes.
"""

from __future__ import annotations

import enum
from typing import Final
from urllib.parse import unquote, urlsplit

import attrs

__all__ = ["HttpRoute", "RouteKind", "parse_http_route"]

#: Bound on a request target.
MAX_TARGET: Final = 8192
#: Bound on a decoded name, key, id or action segment.
MAX_SEGMENT: Final = 1024


class RouteKind(enum.Enum):
    """What a request target names; the value is the ``route`` label of
    ``actorcore_http_requests_total``."""

    HEALTHZ = "/healthz"
    READYZ = "/readyz"
    METRICS = "/metrics"
    ACTION = "/actors/{name}/{key}/actions/{action}"
    ACTION_BY_ID = "/actors/by-id/{actor_id}/actions/{action}"
    HANDLER = "/actors/{name}/{key}/http"
    HANDLER_BY_ID = "/actors/by-id/{actor_id}/http"
    INSPECTOR = "/inspector"
    WEBSOCKET = "/actors/{websocket}"
    """A WebSocket route (``/connect``, ``/ws``) asked without an upgrade: 426."""
    NOT_FOUND = "other"
    BAD_REQUEST = "invalid"
    """A request head that could not be parsed (400, 431): no route could be read from it."""


@attrs.frozen(slots=True)
class HttpRoute:
    """A parsed HTTP request target."""

    kind: RouteKind
    name: str | None = None
    """The actor definition's name (key routes)."""
    key: str | None = None
    """The actor key (key routes)."""
    actor_id: str | None = None
    """The actor id (by-id routes)."""
    action: str | None = None
    """The action (action routes)."""
    subpath: str = "/"
    """For handler routes, what follows ``/http`` (``/`` at least); for the inspector, what
    follows ``/inspector``."""
    query: str = ""
    """The raw query string."""


_NOT_FOUND: Final = HttpRoute(RouteKind.NOT_FOUND)


def _decode(raw: str) -> str | None:
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return None
    return value if value and len(value) <= MAX_SEGMENT else None


def parse_http_route(target: str) -> HttpRoute:
    """The route ``target`` names (a ``NOT_FOUND`` route for anything else)."""
    if len(target) > MAX_TARGET:
        return _NOT_FOUND
    try:
        parts = urlsplit(target)
    except ValueError:
        return _NOT_FOUND
    path, query = parts.path, parts.query
    simple = {"/healthz": RouteKind.HEALTHZ, "/readyz": RouteKind.READYZ}
    simple["/metrics"] = RouteKind.METRICS
    if path in simple:
        return HttpRoute(simple[path], query=query)
    if path == "/inspector" or path.startswith("/inspector/"):
        return HttpRoute(RouteKind.INSPECTOR, subpath=path[len("/inspector") :] or "/", query=query)
    segments = path.split("/")
    # "", "actors", a, b, verb, ...
    if len(segments) < 5 or segments[0] != "" or segments[1] != "actors":
        return _NOT_FOUND
    first, second = _decode(segments[2]), _decode(segments[3])
    if first is None or second is None:
        return _NOT_FOUND
    by_id = segments[2] == "by-id"
    verb, rest = segments[4], segments[5:]
    if verb == "actions" and len(rest) == 1:
        action = _decode(rest[0])
        if action is None:
            return _NOT_FOUND
        if by_id:
            return HttpRoute(RouteKind.ACTION_BY_ID, actor_id=second, action=action, query=query)
        return HttpRoute(RouteKind.ACTION, name=first, key=second, action=action, query=query)
    if verb == "http":
        subpath = "/" + "/".join(rest) if rest else "/"
        if by_id:
            return HttpRoute(RouteKind.HANDLER_BY_ID, actor_id=second, subpath=subpath, query=query)
        return HttpRoute(RouteKind.HANDLER, name=first, key=second, subpath=subpath, query=query)
    if verb in ("connect", "ws"):
        return HttpRoute(RouteKind.WEBSOCKET)
    return _NOT_FOUND
