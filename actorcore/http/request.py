"""``actorcore.Request`` and ``actorcore.Response``: what an actor's ``on_request`` hook
receives and returns."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from .. import jsoncodec

__all__ = ["Headers", "Request", "Response"]


class Headers(Mapping[str, str]):
    """Request headers as a read-only, case-insensitive mapping (repeated headers are joined
    with ``", "``); :meth:`raw` keeps every pair as sent, names lower-cased."""

    __slots__ = ("_map", "_raw")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self._raw = tuple((bytes(n).lower(), bytes(v)) for n, v in raw)
        merged: dict[str, str] = {}
        for name, value in self._raw:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            merged[key] = f"{merged[key]}, {text}" if key in merged else text
        self._map = merged

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def raw(self) -> tuple[tuple[bytes, bytes], ...]:
        """The headers as sent: ``(name, value)`` byte pairs, names lower-cased."""
        return self._raw

    def __repr__(self) -> str:
        return f"Headers({self._map!r})"


@attrs.frozen
class Request:
    """An HTTP request to an actor's ``on_request`` hook
    (``/actors/{name}/{key}/http[/...]`` or ``/actors/by-id/{actor_id}/http[/...]``)."""

    method: str
    """The request method, upper case (``GET``, ``POST``...)."""
    path: str
    """The path after ``/http``, percent-encoded as sent; ``/`` at least."""
    query: str
    """The raw query string (without ``?``; empty if none)."""
    headers: Headers
    """The request headers (case-insensitive)."""
    body: bytes
    """The request body (bounded by the actor's ``max_message_size``)."""

    def json(self) -> Any:
        """The body decoded as JSON (ValueError if it is not)."""
        return jsoncodec.loads(self.body)


def _body(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


@attrs.frozen
class Response:
    """An HTTP response from ``on_request``: ``Response(status=200, body=b"" | str,
    headers={...})`` (a ``str`` body is sent as UTF-8, ``text/plain`` unless the headers set
    ``Content-Type``), or :meth:`json`."""

    status: int = 200
    """The status code (100-599; 1xx answers are not supported and become 500)."""
    body: bytes = attrs.field(default=b"", converter=_body)
    """The body (a ``str`` is encoded as UTF-8)."""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    """Response headers (``Content-Length`` is set by the server)."""

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        """A JSON response (``application/json``, UTF-8)."""
        return cls(
            status=status,
            body=jsoncodec.dumps(obj).encode(),
            headers={"content-type": "application/json"},
        )
