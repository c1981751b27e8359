"""The interleaved runs of the throughput benchmarks (``benchmarks.client.paired``): both
servers get the same load, in alternating chunks, and the result names each side's rate.
Real loopback sockets, two actorcore servers standing in for the two sides."""

from __future__ import annotations

import trio

import actorcore
from actorcore import ActorContext, Conn
from actorcore.testing import serve_loopback
from benchmarks import client


class Echo(actorcore.Actor):
    name = "echo"

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        await conn.send(message)


async def test_paired_rtt_loads_both_servers_alike_in_chunks() -> None:
    first, second = actorcore.Registry([Echo]), actorcore.Registry([Echo])
    n, warmup = 200, 10
    with trio.fail_after(30):
        async with serve_loopback(first) as a, serve_loopback(second) as b:
            result = await client.paired(
                "rtt", (a.port, b.port), "/actors/echo/k/ws", n, warmup, "", baseline=False
            )
            alone = await client.paired(
                "rtt", (a.port,), "/actors/echo/k/ws", n, warmup, "", baseline=False
            )
    assert result["msgs_per_s"] > 0 and result["baseline_msgs_per_s"] > 0
    assert len(result["chunk_ratios"]) == client.PAIR_CHUNKS
    assert all(ratio > 0 for ratio in result["chunk_ratios"])
    # Every message of the run, on each side: the warm-up plus all chunks.
    assert first.statistics().messages_in == 2 * (warmup + n)
    assert second.statistics().messages_in == warmup + n
    assert set(alone) == {"msgs_per_s", "us_per_unit"}
