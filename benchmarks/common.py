"""Settings shared by the benchmark server, client and runner."""

from __future__ import annotations

import os
import resource
from typing import Any, Final

HOST: Final = "127.0.0.1"
"""All traffic stays on loopback."""

HARD_TIMEOUT: Final = 300.0
"""Upper bound on the life of any server or client process (seconds)."""

MAX_MESSAGE_SIZE: Final = 16 * 2**20
"""trio-websocket ``max_message_size`` on every server and client (actorcore's server uses
16 MiB for its library limit; the baseline server is given the same)."""

RECEIVE_BUFFER_SIZE: Final = 4096
"""trio-websocket ``receive_buffer_size`` on every server and client: actorcore's server reads
4 KiB at a time (``actorcore.ws.server.RECEIVE_BUFFER``, which keeps the heap from fragmenting
under thousands of idle connections); the baseline server and all clients use the same."""

CLOSE_TIMEOUT: Final = 2.0
"""``disconnect_timeout`` of the baseline server (actorcore's server derives 2 s too)."""

MSG32: Final = "x" * 32

SERVER_CPU: Final = 0
CLIENT_CPU: Final = 1


def ws_options() -> dict[str, Any]:
    """Keyword arguments for trio-websocket's server and client functions."""
    return {"max_message_size": MAX_MESSAGE_SIZE, "receive_buffer_size": RECEIVE_BUFFER_SIZE}


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def pin(cpu: int) -> None:
    """Pin this process to ``cpu`` when the machine has it (a no-op on one CPU)."""
    if hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})
