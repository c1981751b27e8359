"""Synthetic check of glibc heap fragmentation from large socket reads, without actorcore.

Each of N socket pairs gets a small message; the receiver reads it with ``recv(BUFSIZE)`` and
keeps the result until its next read, as trio-websocket's reader task keeps its ``data`` local.
CPython allocates BUFSIZE bytes for each recv and shrinks the object in place, so with 64 KiB
reads every idle connection pins a small chunk carved out of a 64 KiB malloc::

    python -m tests.soak.recv_fragmentation 65536 3000 400000
    python -m tests.soak.recv_fragmentation 4096 3000 400000

prints glibc's heap (in use / free inside it) as the rounds go, then ``malloc_trim(0)``.
"""

from __future__ import annotations

import random
import socket
import sys

from tests.soak import memprobe


def main() -> None:
    bufsize, n_conns, rounds = (int(x) for x in sys.argv[1:4])
    pairs = [socket.socketpair() for _ in range(n_conns)]
    last = [b""] * n_conns
    rng = random.Random(0)
    other: list[bytes] = []  # unrelated churn: medium allocations with random lifetimes
    for i in range(rounds):
        k = rng.randrange(n_conns)
        a, b = pairs[k]
        a.send(b"x" * rng.randrange(20, 200))
        last[k] = b.recv(bufsize)
        other.append(bytes(rng.randrange(600, 3000)))
        if len(other) > 2000:
            other.pop(rng.randrange(len(other)))
        if i % (rounds // 8) == 0 or i == rounds - 1:
            m = memprobe.mallinfo() or {}
            p = memprobe.proc_status()
            print(
                f"round {i:>8} rss {p['VmRSS']:6.1f} heap_in_use {m.get('in_use')} "
                f"heap_free {m.get('free')}",
                flush=True,
            )
    memprobe.malloc_trim()
    free = (memprobe.mallinfo() or {}).get("free")
    print("after malloc_trim: rss", memprobe.proc_status()["VmRSS"], "heap_free", free)
    print("free chunks by size (MB):", (memprobe.malloc_info() or [{}])[0].get("free_by_size"))


if __name__ == "__main__":
    main()
