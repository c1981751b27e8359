"""Routes: which actor a WebSocket request path names.

- ``/actors/{name}/{key}/connect?params=...`` the actor protocol (get-or-create by key);
- ``/actors/{name}/{key}/ws[/anything]?params=...`` a raw WebSocket (get-or-create by key);
- ``/actors/by-id/{actor_id}/connect`` and ``/actors/by-id/{actor_id}/ws[...]`` (no create).

Name, key and id are percent-encoded path segments; ``params`` is URL-encoded JSON.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import attrs

from .. import jsoncodec
from ..conn import ConnKind
from ..errors import ActorNotFound, InvalidMessage

__all__ = ["Route", "parse_route", "route_name"]

MAX_PATH: Final = 8192
MAX_KEY: Final = 1024


@attrs.frozen(slots=True)
class Route:
    """A parsed request path."""

    kind: ConnKind
    name: str | None
    """The actor definition's name (None for by-id routes)."""
    key: str | None
    """The actor key (None for by-id routes)."""
    actor_id: str | None
    """The actor id (by-id routes only)."""
    subpath: str
    """For raw routes, what follows ``/ws`` (``""`` or ``/anything``)."""
    params: Any
    """Decoded ``params`` JSON, or None."""
    resume: str | None = None
    """``?resume=TOKEN``: take back a detached protocol connection (see
    ``docs/zero-loss.md``)."""
    ack: int | None = None
    """``&ack=N`` with ``resume``: the highest output sequence number the client got."""
    numbered: bool = False
    """``?seq=1``: the client wants its outputs numbered and acknowledges them."""


def _segment(raw: str, what: str) -> str:
    value = unquote(raw, errors="strict") if raw else ""
    if not value:
        raise ActorNotFound(f"empty {what} in route")
    if len(value) > MAX_KEY:
        raise ActorNotFound(f"{what} longer than {MAX_KEY} chars")
    return value


def _split(target: str) -> tuple[SplitResult, list[str], str, str]:
    """The parsed target, its path segments and its two decoded route segments; ActorNotFound
    for a path that is not ``/actors/{a}/{b}/...``."""
    if len(target) > MAX_PATH:
        raise ActorNotFound("request path too long")
    try:
        parts = urlsplit(target)
        segments = parts.path.split("/")
        # "", "actors", a, b, verb, ...
        if len(segments) < 5 or segments[0] != "" or segments[1] != "actors":
            raise ActorNotFound(f"no route for {parts.path[:200]!r}")
        return parts, segments, _segment(segments[2], "name"), _segment(segments[3], "key")
    except UnicodeDecodeError:
        raise ActorNotFound("route is not valid percent-encoded UTF-8") from None


def route_name(target: str) -> str | None:
    """The actor definition a key route names, without decoding its ``params``; None for a
    by-id route or a malformed path (which :func:`parse_route` refuses)."""
    try:
        _, segments, first, _ = _split(target)
    except ActorNotFound:
        return None
    return None if segments[2] == "by-id" else first


def parse_route(target: str) -> Route:
    """Parse a request target (path and query). Raises ActorNotFound for a malformed route and
    InvalidMessage for bad ``params``."""
    parts, segments, first, second = _split(target)
    verb, rest = segments[4], segments[5:]
    if verb == "connect" and not rest:
        kind = ConnKind.PROTOCOL
        subpath = ""
    elif verb == "ws":
        kind = ConnKind.RAW
        subpath = "/" + "/".join(rest) if rest else ""
    else:
        raise ActorNotFound(f"no route for {parts.path[:200]!r}")
    params: Any = None
    query = parse_qs(parts.query, keep_blank_values=True)
    if "params" in query:
        try:
            params = jsoncodec.loads(query["params"][-1])
        except (ValueError, RecursionError):
            raise InvalidMessage("params is not valid JSON") from None
    resume: str | None = None
    ack: int | None = None
    if "resume" in query:
        if kind is not ConnKind.PROTOCOL:
            raise InvalidMessage("resume applies to /connect routes only")
        resume = query["resume"][-1][:512]
        if "ack" in query:
            raw = query["ack"][-1]
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 16):
                raise InvalidMessage("ack must be a non-negative integer")
            ack = int(raw)
    numbered = query.get("seq", [""])[-1] == "1"
    if segments[2] == "by-id":
        return Route(kind, None, None, second, subpath, params, resume, ack, numbered)
    return Route(kind, first, second, None, subpath, params, resume, ack, numbered)
