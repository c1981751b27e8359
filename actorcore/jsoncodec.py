"""Strict JSON, in one place: what actorcore writes and reads is standard JSON (RFC 8259).

Python's ``json`` module reads and writes ``NaN``, ``Infinity`` and ``-Infinity`` by default,
which no other JSON parser accepts: a client would be sent a frame it cannot parse, and state
saved with them could not be read by other tools. Here encoding them raises ``ValueError``
(like any value that is not JSON), and decoding them raises ``ValueError`` too, also when they
are spelled as numbers too large for a float (``1e999`` is infinity to Python: accepted, it
would make any state it reached unsaveable). Integers longer than Python's limit on digits
(4,300) raise ``ValueError`` as well.

The encoders are made once: ``json.dumps`` with keyword arguments builds a new encoder on every
call, which is measurable on the per-message path.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

__all__ = ["dumps", "dumps_compact", "loads"]


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


_frame_encoder = json.JSONEncoder(allow_nan=False)
_compact_encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range for a float")
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)

dumps = _frame_encoder.encode
"""Encode a wire frame; ``TypeError``/``ValueError`` if ``value`` is not strict JSON."""

dumps_compact = _compact_encoder.encode
"""Encode without spaces (persisted state and input)."""


def loads(text: str | bytes) -> Any:
    """Decode strict JSON; ``ValueError`` (``json.JSONDecodeError`` for syntax) if it is not."""
    if isinstance(text, bytes):
        text = text.decode()
    return _decoder.decode(text)
