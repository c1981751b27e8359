"""Client-controlled strings in log lines, and refusals logged without flooding the log.

Keys, routes and origins come from anyone who can open a socket: a 1 KB key, a key holding
``/`` (which reads like a path) or a control character must not reach a log line as it is,
and a client refused thousands of times a second must not write thousands of lines.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Final

import trio

__all__ = ["RefusalLog", "quoted"]

#: What a key may look like to be logged as it is.
_PLAIN: Final = re.compile(r"[A-Za-z0-9_.:@+=-]{1,64}")
#: Characters of a client-controlled string kept in a log line.
LOG_LIMIT: Final = 64


def quoted(value: object, limit: int = LOG_LIMIT) -> str:
    """``value`` as it may appear in a log line: plain short names as they are; anything
    else quoted (``repr``, so ``/``, quotes and control characters are visible) and cut to
    ``limit`` characters, with the original length."""
    text = value if isinstance(value, str) else str(value)
    if _PLAIN.fullmatch(text):
        return text
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} chars)"


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # outside trio (a refusal logged by plain code)
        return time.monotonic()


class RefusalLog:
    """Logs refused connections at most once per ``interval`` seconds per reason; the next
    line says how many were left out. Bounded: at most ``max_reasons`` reasons are tracked."""

    def __init__(
        self, logger: logging.Logger, interval: float = 1.0, max_reasons: int = 256
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_reasons = max_reasons
        self._last: dict[str, tuple[float, int]] = {}
        self.suppressed = 0
        """Refusals not logged so far (all reasons)."""

    def note(self, reason: str, client: str | None, target: str) -> None:
        """A connection was refused for ``reason`` (an error code)."""
        now = _now()
        last, skipped = self._last.get(reason, (-float("inf"), 0))
        if 0 <= now - last < self.interval:  # (a clock that went back: a new trio run)
            self._last[reason] = (last, skipped + 1)
            self.suppressed += 1
            return
        if reason not in self._last and len(self._last) >= self.max_reasons:
            self._last.pop(next(iter(self._last)))
        self._last[reason] = (now, 0)
        more = f" ({skipped} more like it not logged)" if skipped else ""
        self.logger.info(
            "refused %s from %s: %s%s",
            quoted(target, 100),
            client or "-",
            reason,
            more,
            extra={"refusal": reason},
        )
