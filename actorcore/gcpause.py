"""Pausing CPython's cyclic garbage collector around mass teardowns.

Why: when thousands of connections and tasks are torn down at once (a registry drain, the
finalize of an actor holding thousands of connections), the collector's full passes over a heap
of a million or more tracked objects (0.3-2 s each, almost nothing collected: the heap is live
connections) stall the event loop and push close handshakes past their bounds. Each teardown
is bounded by its deadlines, so the cyclic garbage it leaves is collected soon after, when the
collector is back on. Pauses nest (across registries and generations); a collector the
application turned off itself stays off.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["pause", "paused", "resume"]

_pauses = 0
_was_enabled = False


def pause() -> None:
    """Turn the collector off until the matching :func:`resume`."""
    global _pauses, _was_enabled
    if _pauses == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _pauses += 1


def resume() -> None:
    """Undo one :func:`pause`; the last one restores the collector as it was."""
    global _pauses
    _pauses -= 1
    if _pauses == 0 and _was_enabled:
        gc.enable()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector is paused inside the block."""
    pause()
    try:
        yield
    finally:
        resume()
