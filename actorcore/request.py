"""What the server knows of an incoming request before any actor is looked up or created.

The same values reach the registry's ``authorize`` gate and an actor's ``on_before_connect``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs

__all__ = ["ClientAddress", "ConnectRequest"]


class ClientAddress(NamedTuple):
    """The peer address of a connection (the socket's, never a proxy header's)."""

    host: str
    port: int


@attrs.frozen
class ConnectRequest:
    """An incoming WebSocket request, as ``authorize`` and ``on_before_connect`` see it."""

    path: str
    """The request target, query string included."""
    headers: tuple[tuple[bytes, bytes], ...]
    """Request headers, names lower-cased."""
    subprotocols: tuple[str, ...] = ()
    """Subprotocols the client proposed."""
    client: ClientAddress | None = None
    """The peer's address (the socket's; None for in-memory streams)."""
    name: str | None = None
    """The actor definition the route names (None for by-id routes)."""
    key: str | None = None
    """The actor key of a key route (None for by-id routes)."""
    actor_id: str | None = None
    """The actor id of a by-id route (None for key routes)."""
    params: Any = None
    """The decoded ``?params=`` JSON, or None."""
