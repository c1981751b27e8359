"""Reports the tally of injected faults and tried inputs at the end of the session."""

from __future__ import annotations

import pytest

from ._support import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY:
        return
    terminalreporter.section("reliability tally")
    for kind, count in sorted(TALLY.items()):
        terminalreporter.write_line(f"{count:8d}  {kind}")
    terminalreporter.write_line(f"{sum(TALLY.values()):8d}  total")
