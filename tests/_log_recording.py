"""Route actorcore's log records into a test harness (the random-sequence tests use it)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class LogSink(Protocol):
    """What a harness offers: a place for records, and a way to fail the example."""

    def on_log(self, record: logging.LogRecord) -> None: ...

    def violation(self, what: str) -> None: ...


class LogRecorder(logging.Handler):
    def __init__(self, harness: LogSink) -> None:
        super().__init__(logging.DEBUG)
        self.harness = harness

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.harness.on_log(record)
        except Exception as exc:  # a bug in the harness must fail the test, not vanish
            self.harness.violation(f"log handler crashed: {exc!r}")


@contextmanager
def recording_logs(harness: LogSink) -> Iterator[None]:
    """Send every ``actorcore`` record (INFO and up) to ``harness`` and nowhere else."""
    logger = logging.getLogger("actorcore")
    handler = LogRecorder(harness)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # hundreds of records per example; the harness keeps a tail
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
