"""EngineAdmin: the few calls of the engine's HTTP API an envoy needs (h11 over trio).

``ensure_runner_config`` (the engine refuses an envoy whose pool has none), and the calls the
tests and the CLI use to look at actors. Each request is one connection, bounded by
``timeout``; an answer other than 2xx raises :class:`EngineApiError` with the status and
the engine's message.
"""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import quote, urlsplit

import h11
import trio

__all__ = ["EngineAdmin", "EngineApiError"]

#: Bound on one answer's body.
MAX_BODY: Final = 4 * 1024 * 1024


class EngineApiError(Exception):
    """The engine's API answered with an error (or not at all)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"engine API: {status} {message}")
        self.status = status


class EngineAdmin:
    """Calls to the engine's HTTP API at ``url`` (its guard port)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"engine URL must be http://host:port, not {url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._token = token
        self._timeout = timeout

    async def request(self, method: str, target: str, body: Any = None) -> Any:
        """One request; the decoded JSON answer (None for an empty body)."""
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [
            ("host", f"{self._host}:{self._port}"),
            ("content-length", str(len(payload))),
            ("connection", "close"),
        ]
        if body is not None:
            headers.append(("content-type", "application/json"))
        if self._token:
            headers.append(("authorization", f"Bearer {self._token}"))
        conn = h11.Connection(h11.CLIENT)
        try:
            with trio.fail_after(self._timeout):
                stream = await trio.open_tcp_stream(self._host, self._port)
                async with stream:
                    await stream.send_all(
                        conn.send(h11.Request(method=method, target=target, headers=headers))
                        + conn.send(h11.Data(data=payload))
                        + conn.send(h11.EndOfMessage())
                    )
                    status, data = await _read_response(conn, stream)
        except (OSError, trio.TooSlowError, h11.ProtocolError) as exc:
            raise EngineApiError(0, f"{method} {target}: {exc!r}") from None
        text = data.decode("utf-8", "replace")
        if not 200 <= status < 300:
            raise EngineApiError(status, text[:500])
        return json.loads(text) if text.strip() else None

    async def ensure_runner_config(self, namespace: str, pool: str) -> None:
        """Give ``pool`` a runner config in ``namespace`` if it has none (the engine refuses
        envoys of a pool without one)."""
        if pool in await self.runner_configs(namespace, pool):
            return
        await self.request(
            "PUT",
            f"/runner-configs/{quote(pool)}?namespace={quote(namespace)}",
            {"datacenters": {"default": {"normal": {}}}},
        )

    async def get_or_create_actor(
        self, namespace: str, name: str, key: str, pool: str, input: str | None = None
    ) -> dict[str, Any]:
        """The actor of definition ``name`` and ``key`` in ``namespace``, created (on an envoy
        of ``pool``) if there is none: the engine's view of it (``actor_id``, ``start_ts``...).
        The engine places it only if an envoy of the pool is connected; otherwise it is
        created asleep (``error: no_capacity``) and starts on the next request."""
        body: dict[str, Any] = {
            "name": name,
            "key": key,
            "runner_name_selector": pool,
            "crash_policy": "sleep",
        }
        if input is not None:
            body["input"] = input
        answer = await self.request("PUT", f"/actors?namespace={quote(namespace)}", body)
        actor: dict[str, Any] = answer["actor"]
        return actor

    async def runner_configs(self, namespace: str, pool: str) -> dict[str, Any]:
        """The runner configs of ``pool`` in ``namespace`` (by pool name; empty if none)."""
        answer = await self.request(
            "GET", f"/runner-configs?namespace={quote(namespace)}&runner_names={quote(pool)}"
        )
        configs: dict[str, Any] = answer.get("runner_configs", {}) if answer else {}
        return configs

    async def actors(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The engine's actors of definition ``name`` (its view: ``start_ts``, ``sleep_ts``,
        ``destroy_ts``, ``connectable_ts``, ``error``...)."""
        answer = await self.request("GET", f"/actors?namespace={namespace}&name={name}")
        actors: list[dict[str, Any]] = answer.get("actors", []) if answer else []
        return actors

    async def envoys(self, namespace: str) -> list[dict[str, Any]]:
        """The envoys connected to the engine in ``namespace``."""
        answer = await self.request("GET", f"/envoys?namespace={namespace}")
        envoys: list[dict[str, Any]] = answer.get("envoys", []) if answer else []
        return envoys


async def _read_response(conn: h11.Connection, stream: trio.SocketStream) -> tuple[int, bytes]:
    status = 0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            chunk = await stream.receive_some(65536)
            conn.receive_data(chunk)
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("engine answer too large")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, bytes(body)
