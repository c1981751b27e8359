"""A small HTTP/1.1 client over a real loopback socket (h11), for the HTTP tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import h11
import trio


@attrs.frozen
class Reply:
    """A parsed response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One HTTP/1.1 connection (keep-alive): ``await client.request("GET", "/healthz")``."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        close: bool = False,
    ) -> Reply:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("host", self.host), *headers]
        if body or method in ("POST", "PUT"):
            all_headers.append(("content-length", str(len(body))))
        if close:
            all_headers.append(("connection", "close"))
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        return await self.read_reply()

    async def read_reply(self) -> Reply:
        response: h11.Response | None = None
        chunks: list[bytes] = []
        with trio.fail_after(10):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise trio.BrokenResourceError("server closed")
        assert response is not None
        headers: dict[str, str] = {}
        for name, value in response.headers:
            headers[name.decode()] = value.decode()
        return Reply(response.status_code, headers, b"".join(chunks))

    async def closed_by_server(self) -> bool:
        """Whether the server closes the connection (waits up to 10 s)."""
        with trio.fail_after(10):
            return await self.stream.receive_some(1) == b""


async def request(
    port: int,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    host: str | None = None,
) -> Reply:
    """One request on a fresh connection (``Connection: close``)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        client = Client(stream, host or f"127.0.0.1:{port}")
        return await client.request(method, target, body=body, headers=headers, close=True)


async def post_action(port: int, path: str, args: list[Any] | None = None, **kw: Any) -> Reply:
    """POST ``{"args": args}`` to an action route."""
    body = json.dumps({"args": args}).encode() if args is not None else b""
    return await request(port, "POST", path, body=body, **kw)
