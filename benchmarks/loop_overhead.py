"""actorcore's own CPU per raw message, in-process, without sockets or WebSocket framing.

``python -m benchmarks.loop_overhead [--n N] [--reps R]``

A connection to a raw actor whose ``on_ws_message`` does nothing is fed N messages by a
transport whose ``receive`` returns at once (no I/O, no scheduling round); the same transport
then feeds a bare loop that only awaits the hook. The difference per message is what the
dispatcher's read loop adds: check point 3 (``admit``), work tracking, the watchdog's
``hook_timeout``, counters. Run it pinned to one CPU (``taskset -c 0``) for stable numbers.
It is a profile aid, not a row of ``docs/benchmarks.md``: over sockets the same message also
pays trio-websocket's framing and a scheduling round per message.

It then times actions over ``/connect`` the same way, one frame at a time (the next frame is
read once the previous answer was sent): an action without ``await`` (run in the read loop)
and the same action after one checkpoint (run in a task of its own), per action.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import trio

from actorcore import Actor, ActorContext, ActorOptions, Conn, Registry
from actorcore.conn import TransportClosed
from actorcore.ws.dispatch import ConnectRequest, Dispatcher
from benchmarks.server import _actors

MSG = "x" * 32


class _Noop(Actor):
    name = "noop"
    options = ActorOptions(sleep_timeout=3600, state_save_interval=3600)

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        pass


class _Feed:
    """A transport that hands out ``n`` messages without blocking, then closes; it times the
    span from the first message to the close."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.n = n
        self.started = 0.0
        self.seconds = 0.0

    async def receive(self) -> str | bytes:
        if self.left == self.n:
            self.started = time.perf_counter()
        if self.left == 0:
            self.seconds = time.perf_counter() - self.started
            raise TransportClosed(1000, "")
        self.left -= 1
        return MSG

    async def send(self, message: str | bytes) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        pass

    async def abort(self) -> None:
        pass


class _ActionFeed(_Feed):
    """Hands out ``n`` action frames, each once the previous one's answer was sent."""

    def __init__(self, n: int, name: str) -> None:
        super().__init__(n)
        self.frame = json.dumps({"type": "action", "id": 1, "name": name, "args": []})
        self.answered = trio.Event()
        self.answered.set()

    async def receive(self) -> str | bytes:
        await self.answered.wait()
        self.answered = trio.Event()
        await super().receive()
        return self.frame

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith('{"type": "action_result"'):
            self.answered.set()


async def _measure_action(n: int, name: str) -> float:
    """Microseconds per action ``name`` of the benchmark server's ``counter`` (the actor of
    the ``action`` rows) over ``/connect``, answer included."""
    counter = [a for a in _actors() if a.name == "counter"]
    async with Registry(counter) as registry:
        feed = _ActionFeed(n, name)

        async def accept() -> Any:
            return feed

        path = "/actors/counter/a/connect"
        with trio.fail_after(120):  # an answer that never comes (an error frame) ends here
            await Dispatcher(registry).handle(path, ConnectRequest(path=path, headers=()), accept)
        registry.request_shutdown()
    return feed.seconds / n * 1e6


async def _measure(n: int) -> tuple[float, float]:
    """(actorcore, bare loop) microseconds per message."""
    async with Registry([_Noop]) as registry:
        feed = _Feed(n)

        async def accept() -> Any:
            return feed

        path = "/actors/noop/a/ws"
        await Dispatcher(registry).handle(path, ConnectRequest(path=path, headers=()), accept)
        bare = _Feed(n)
        hook = _Noop().on_ws_message
        try:
            while True:
                await hook(None, None, await bare.receive())  # type: ignore[arg-type]
        except TransportClosed:
            pass
        registry.request_shutdown()
    return feed.seconds / n * 1e6, bare.seconds / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop_overhead")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    runs = [trio.run(_measure, args.n) for _ in range(args.reps)]
    ours = statistics.median(r[0] for r in runs)
    bare = statistics.median(r[1] for r in runs)
    print(
        f"raw message, in-process (median of {args.reps} x {args.n:,}): read loop "
        f"{ours:.2f} us, bare loop {bare:.2f} us, actorcore adds {ours - bare:.2f} us"
    )
    n = max(1, args.n // 4)
    inline, task = (
        statistics.median(trio.run(_measure_action, n, name) for _ in range(args.reps))
        for name in ("increment", "increment_awaiting")
    )
    print(
        f"action over /connect, in-process (median of {args.reps} x {n:,}): "
        f"in the read loop {inline:.2f} us, in a task of its own {task:.2f} us"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
