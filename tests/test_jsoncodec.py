"""Strict JSON on the wire and in the store: NaN and Infinity are refused both ways."""

from __future__ import annotations

import json
import math

import pytest

import actorcore
from actorcore import jsoncodec
from actorcore.conn import Conn, ConnKind
from actorcore.ws.protocol import encode_action_result, parse_client_frame
from actorcore.ws.routes import parse_route


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_refused_when_read(constant: str) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        jsoncodec.loads(f"[{constant}]")
    frame = f'{{"type": "action", "id": 1, "name": "a", "args": [{constant}]}}'
    with pytest.raises(actorcore.InvalidMessage, match="not valid JSON"):
        parse_client_frame(frame)
    with pytest.raises(actorcore.InvalidMessage):
        parse_route(f"/actors/a/k/connect?params=%5B{constant}%5D")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_json_floats_are_refused_when_written(value: float) -> None:
    frame = json.loads(encode_action_result(7, {"x": value}))
    assert frame["type"] == "error" and frame["id"] == 7
    assert frame["code"] == "actor.internal_error"
    conn = Conn(id="c", actor_id="a", kind=ConnKind.PROTOCOL, params=None, hibernatable=True)
    with pytest.raises(ValueError, match="JSON compliant"):
        conn.send_nowait([value])
    with pytest.raises(ValueError):
        jsoncodec.dumps_compact({"state": value})


def test_ordinary_values_round_trip() -> None:
    value = {"a": [1, 2.5, "é", None, True], "b": {"c": -1e300}}
    assert jsoncodec.loads(jsoncodec.dumps(value)) == value
    assert jsoncodec.loads(jsoncodec.dumps_compact(value).encode()) == value
    assert jsoncodec.dumps_compact(value) == json.dumps(value, separators=(",", ":"))
