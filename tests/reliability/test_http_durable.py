"""HTTP answers are durable: ``python -m actorcore serve`` with SQLite is killed with SIGKILL
while clients POST increments; every increment a client got a 200 for is in the file
afterwards (the counter never saves on its own interval: only the output gate saved it), and
the restarted server answers from there."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import h11
import pytest
import trio

from ..http._http import request
from .test_process_death import inspect_db, serve

APP = "tests.reliability._zero_loss_app:registry"
CLIENTS = 4
#: Answers each client must have had before the kill.
ANSWERED_BEFORE_KILL = 20

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


async def test_every_answered_http_increment_survives_a_sigkill(tmp_path: Path) -> None:
    db, log = tmp_path / "http.db", tmp_path / "server.log"
    answered: dict[str, int] = {}
    enough = trio.Event()
    with trio.fail_after(60):
        async with serve(db, log, APP) as server:

            async def client(key: str) -> None:
                target = f"/actors/counter/{key}/actions/increment"
                while True:
                    try:
                        reply = await request(server.port, "POST", target)
                    except (OSError, trio.BrokenResourceError, h11.RemoteProtocolError):
                        return  # the server is gone (killed while this request was out)
                    assert reply.status == 200, reply
                    value = reply.json()["output"]
                    assert value == answered.get(key, 0) + 1  # once each, in order
                    answered[key] = value
                    if len(answered) == CLIENTS and min(answered.values()) >= ANSWERED_BEFORE_KILL:
                        enough.set()

            async with trio.open_nursery() as nursery:
                for i in range(CLIENTS):
                    nursery.start_soon(client, f"h{i}")
                await enough.wait()
                server.proc.send_signal(signal.SIGKILL)
                await server.proc.wait()
        check, stored = await inspect_db(db)
        assert check == "ok"
        for key, value in answered.items():
            # Every answered increment was saved; one more may be (run, saved, not answered).
            assert value <= stored[("counter", key)] <= value + 1, (key, value, stored)
        async with serve(db, log, APP) as again:
            for key in answered:
                reply = await request(again.port, "POST", f"/actors/counter/{key}/actions/get")
                assert reply.json() == {"output": stored[("counter", key)]}
