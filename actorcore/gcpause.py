"""Pausing CPython's cyclic garbage collector around mass teardowns (opt-in).

Why: when thousands of connections and tasks are torn down at once (a registry drain, the
finalize of an actor holding thousands of connections), the collector's full passes over a heap
of a million or more tracked objects (0.3-2 s each, almost nothing collected: the heap is live
connections) stall the event loop and push close handshakes past their bounds.

The collector belongs to the whole process, so a library must not switch it off on its own:
this is used only when the application asks (``Registry(pause_gc=True)``). Pauses are blocks
(:func:`paused`), so each one ends with the teardown it covers, which its own deadlines bound;
they nest (across registries and generations), and the last one to end restores the collector
only if it is still the way the first one left it: a collector the application turned off
before stays off, and one it turned back on meanwhile is left alone.

The application's own tool for the same problem is ``gc.freeze()`` after warm-up: objects that
live for the whole process (modules, actor classes, long-lived connections) then leave the
collector's passes altogether (see ``docs/guide/deploying.md``).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused"]

_pauses = 0
_turned_off = False
"""The first pause found the collector on and turned it off."""


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector is off inside the block (if it was on when the first pause began)."""
    global _pauses, _turned_off
    if _pauses == 0:
        _turned_off = gc.isenabled()
        if _turned_off:
            gc.disable()
    _pauses += 1
    try:
        yield
    finally:
        _pauses -= 1
        if _pauses == 0 and _turned_off:
            _turned_off = False
            if not gc.isenabled():  # the application may have turned it on meanwhile
                gc.enable()
