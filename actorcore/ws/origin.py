"""Which browser pages may open a WebSocket to the server (cross-site WebSocket hijacking).

Browsers send ``Origin`` with every WebSocket upgrade and do not apply the same-origin policy to
WebSockets, so any page a user opens could otherwise call actions on a server the user can reach
(one on ``localhost``, or on an internal network). Non-browser clients send no ``Origin`` and
are not affected.

- ``allowed_origins=None`` (the default): a request with an ``Origin`` passes only if the origin
  names the host the request was sent to (same origin). On a server bound to a loopback address
  the ``Host`` must also be a loopback name, so a DNS-rebinding page (``evil.example`` resolved
  to 127.0.0.1) is refused too.
- ``allowed_origins=[...]``: exactly these origins (``scheme://host[:port]``), and ``*`` for any.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

import attrs

__all__ = ["OriginPolicy"]

_DEFAULT_PORTS: Final = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _normal_origin(origin: str) -> str:
    """``scheme://host[:port]`` lower-cased, without a default port or a trailing slash."""
    origin = origin.strip().rstrip("/").lower()
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return origin
    if not parts.scheme or not parts.hostname:
        return origin
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(parts.scheme):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


def is_loopback_name(host: str) -> bool:
    """``localhost`` (and its subdomains) or a loopback address literal."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class OriginPolicy:
    """Decides whether an upgrade's ``Origin`` may connect (see the module docstring)."""

    allowed: frozenset[str] | None = None
    """Normalised allowed origins (``*`` allows any); None: same origin only."""
    loopback: bool = False
    """The server listens on loopback addresses only (then Host must be a loopback name)."""

    @classmethod
    def make(cls, allowed_origins: Iterable[str] | None, *, loopback: bool) -> OriginPolicy:
        """A policy from the ``allowed_origins`` option."""
        if allowed_origins is None:
            return cls(None, loopback)
        return cls(frozenset(_normal_origin(o) if o != "*" else "*" for o in allowed_origins))

    def allows(self, origin: str | None, host: str | None) -> bool:
        """True if a request with this ``Origin`` and ``Host`` header may connect."""
        if origin is None:
            return True  # not a browser: origins protect browser users only
        if self.allowed is not None:
            return "*" in self.allowed or _normal_origin(origin) in self.allowed
        if host is None:
            return False
        try:
            scheme = urlsplit(origin.strip().lower()).scheme
        except ValueError:
            return False
        origin_hp = _host_port(urlsplit(origin.strip().lower()).netloc, scheme)
        # The request went to ws(s):// on the same host and port as the page's http(s)://.
        ws_scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
        host_hp = _host_port(host, ws_scheme)
        if origin_hp is None or host_hp is None or origin_hp != host_hp:
            return False
        return not self.loopback or is_loopback_name(host_hp[0])
