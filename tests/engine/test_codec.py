"""The envoy protocol codec (``actorcore.engine.bare`` over ``schema_v8``) against the npm
codec the engine's own TypeScript runtime uses: the same bytes for the same value, both ways,
for every variant of both directions, and for random values drawn from the schema."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actorcore.engine import bare
from actorcore.engine.bare import BareError, Variant
from actorcore.engine.schema_v8 import TYPES, VERSION

from ._paths import envoy_protocol_js

TOP = ("ToRivet", "ToEnvoy")
_INT_RANGE = {
    "u8": (0, 2**8 - 1),
    "u16": (0, 2**16 - 1),
    "u32": (0, 2**32 - 1),
    "u64": (0, 2**64 - 1),
    "i64": (-(2**63), 2**63 - 1),
    "uint": (0, 2**53 - 1),  # bare-ts reads lengths as "safe" integers
}


def spec_of(ref: Any) -> Any:
    if isinstance(ref, tuple):
        return ref
    if ref in TYPES:
        return TYPES[ref]
    return ("primitive", ref)


# ---------------------------------------------------------------- values <-> the npm JSON form


def to_js(ref: Any, value: Any) -> Any:
    spec = spec_of(ref)
    kind = spec[0]
    if kind == "alias":
        return to_js(spec[1], value)
    if kind == "primitive":
        name = spec[1]
        if name in ("u64", "i64"):
            return {"$big": str(value)}
        if name == "data":
            return {"$bytes": value.hex()}
        if name == "u32_array":
            return {"$u32": value}
        return value
    if kind == "fixed":
        return {"$bytes": value.hex()}
    if kind == "struct":
        return {name: to_js(field, value[name]) for name, field in spec[1]}
    if kind == "union":
        for _, name, field in spec[1]:
            if name == value.tag:
                return {"tag": name, "val": None if field is None else to_js(field, value.val)}
        raise AssertionError(value.tag)
    if kind == "enum":
        return value
    if kind == "optional":
        return None if value is None else to_js(spec[1], value)
    if kind == "list":
        return [to_js(spec[1], item) for item in value]
    if kind == "map":
        return {"$map": [[to_js(spec[1], k), to_js(spec[2], v)] for k, v in value.items()]}
    raise AssertionError(kind)


def from_js(ref: Any, value: Any) -> Any:
    spec = spec_of(ref)
    kind = spec[0]
    if kind == "alias":
        return from_js(spec[1], value)
    if kind == "primitive":
        if isinstance(value, dict) and "$big" in value:
            return int(value["$big"])
        if isinstance(value, dict) and "$bytes" in value:
            return bytes.fromhex(value["$bytes"])
        if spec[1] == "u32_array":
            return list(value["$u32"])
        return value
    if kind == "fixed":
        return bytes.fromhex(value["$bytes"])
    if kind == "struct":
        return {name: from_js(field, value[name]) for name, field in spec[1]}
    if kind == "union":
        for _, name, field in spec[1]:
            if name == value["tag"]:
                return Variant(name, None if field is None else from_js(field, value["val"]))
        raise AssertionError(value)
    if kind == "enum":
        return value
    if kind == "optional":
        return None if value is None else from_js(spec[1], value)
    if kind == "list":
        return [from_js(spec[1], item) for item in value]
    if kind == "map":
        return {from_js(spec[1], k): from_js(spec[2], v) for k, v in value["$map"]}
    raise AssertionError(kind)


# ---------------------------------------------------------------- values drawn from the schema


def sample(ref: Any, variant: int = 0, depth: int = 0) -> Any:
    """A deterministic value of ``ref``; ``variant`` picks each union's variant (mod its
    count), so a case per top-level variant covers every message."""
    spec = spec_of(ref)
    kind = spec[0]
    if kind == "alias":
        return sample(spec[1], variant, depth)
    if kind == "primitive":
        name = spec[1]
        if name in _INT_RANGE:
            lo, hi = _INT_RANGE[name]
            return hi if variant % 2 else max(lo, 1) + depth
        return {
            "bool": variant % 2 == 0,
            "str": f"s{depth}-é",
            "data": bytes([depth, 0xFF, 0]),
            "u32_array": [1, 2**32 - 1],
        }[name]
    if kind == "fixed":
        return bytes(range(spec[1]))
    if kind == "struct":
        return {name: sample(field, variant, depth + 1) for name, field in spec[1]}
    if kind == "union":
        _, name, field = spec[1][variant % len(spec[1])]
        return Variant(name, None if field is None else sample(field, 0, depth + 1))
    if kind == "enum":
        return spec[1][variant % len(spec[1])]
    if kind == "optional":
        return None if variant % 2 else sample(spec[1], variant, depth + 1)
    if kind == "list":
        return [sample(spec[1], variant, depth + 1), sample(spec[1], variant + 1, depth + 1)]
    if kind == "map":
        return {sample(spec[1], 0, depth + 1): sample(spec[2], 0, depth + 1)}
    raise AssertionError(kind)


def values(ref: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Random values of ``ref``."""
    spec = spec_of(ref)
    kind = spec[0]
    if kind == "alias":
        return values(spec[1], depth)
    if kind == "primitive":
        name = spec[1]
        if name in _INT_RANGE:
            return st.integers(*_INT_RANGE[name])
        if name == "u32_array":
            return st.lists(st.integers(0, 2**32 - 1), max_size=3)
        return {
            "bool": st.booleans(),
            "str": st.text(max_size=8),
            "data": st.binary(max_size=8),
        }[name]
    if kind == "fixed":
        return st.binary(min_size=spec[1], max_size=spec[1])
    if kind == "struct":
        return st.fixed_dictionaries(
            {name: st.deferred(lambda f=field: values(f, depth + 1)) for name, field in spec[1]}
        )
    if kind == "union":
        return st.one_of(
            *(
                st.just(Variant(name))
                if field is None
                else values(field, depth + 1).map(lambda v, n=name: Variant(n, v))
                for _, name, field in spec[1]
            )
        )
    if kind == "enum":
        return st.sampled_from(spec[1])
    if kind == "optional":
        return st.none() | values(spec[1], depth + 1)
    if kind == "list":
        return st.lists(values(spec[1], depth + 1), max_size=0 if depth > 6 else 2)
    if kind == "map":
        return st.dictionaries(values(spec[1], depth + 1), values(spec[2], depth + 1), max_size=2)
    raise AssertionError(kind)


# ---------------------------------------------------------------- the npm codec


class NpmCodec:
    """One node process running tests/engine/npm_codec.mjs (a request per line)."""

    def __init__(self) -> None:
        import os
        import pathlib

        script = pathlib.Path(__file__).with_name("npm_codec.mjs")
        env = dict(os.environ, ACTORCORE_ENVOY_PROTOCOL_JS=str(envoy_protocol_js()))
        self._process = subprocess.Popen(
            ["node", str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        assert line, "the npm codec exited"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def encode(self, type_name: str, value: Any) -> bytes:
        answer = self.ask({"op": "encode", "type": type_name, "value": to_js(type_name, value)})
        assert "hex" in answer, answer
        return bytes.fromhex(answer["hex"])

    def decode(self, type_name: str, data: bytes) -> Any:
        answer = self.ask({"op": "decode", "type": type_name, "hex": data.hex()})
        if "error" in answer:
            raise BareError(answer["error"])
        return from_js(type_name, answer["value"])

    def close(self) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.close()
        self._process.wait(timeout=10)
        self._process.stdout.close()


@pytest.fixture(scope="module")
def npm() -> Iterator[NpmCodec]:
    codec = NpmCodec()
    yield codec
    codec.close()


def test_the_schema_is_the_pinned_version_and_has_both_directions() -> None:
    assert VERSION == 8
    for top in TOP:
        assert TYPES[top][0] == "union"
    names = {name for _, name, _ in TYPES["ToEnvoy"][1]}
    assert {"ToEnvoyInit", "ToEnvoyCommands", "ToEnvoyPing", "ToEnvoyTunnelMessage"} <= names


@pytest.mark.parametrize("top", TOP)
def test_every_variant_encodes_as_the_npm_codec_does(npm: NpmCodec, top: str) -> None:
    variants = TYPES[top][1]
    for index in range(len(variants)):
        for flavour in (0, 1):  # optionals present/absent, other integer extremes
            value = sample(top, index)
            if flavour:
                value = Variant(value.tag, sample(variants[index][2], 1) if value.val else None)
            ours = bare.encode(top, value)
            assert ours == npm.encode(top, value), (top, value.tag)
            assert npm.decode(top, ours) == value
            assert bare.decode(top, npm.encode(top, value)) == value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_messages_round_trip_with_the_npm_codec(npm: NpmCodec, data: st.DataObject) -> None:
    top = data.draw(st.sampled_from(TOP))
    value = data.draw(values(top))
    ours = bare.encode(top, value)
    assert ours == npm.encode(top, value)
    assert bare.decode(top, ours) == value


@pytest.mark.parametrize("top", TOP)
def test_truncated_or_hostile_bytes_are_a_bare_error(top: str) -> None:
    for index in range(len(TYPES[top][1])):
        whole = bare.encode(top, sample(top, index))
        for cut in range(len(whole)):
            try:
                bare.decode(top, whole[:cut])
            except BareError:
                continue
            # A prefix may itself be a whole shorter value; never anything but BareError.
    with pytest.raises(BareError, match="unknown union tag"):
        bare.decode(top, b"\x7f")
    with pytest.raises(BareError, match="trailing"):
        bare.decode(top, bare.encode(top, sample(top, 0)) + b"\x00")
    with pytest.raises(BareError, match="varint"):
        bare.decode(top, b"\xff" * 11)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_bare_error(data: bytes) -> None:
    for top in TOP:
        with contextlib.suppress(BareError):
            bare.decode(top, data)


def test_values_that_do_not_fit_are_refused_when_encoding() -> None:
    pong = Variant("ToRivetPong", {"ts": 2**63})
    with pytest.raises(BareError, match="does not fit"):
        bare.encode("ToRivet", pong)
    with pytest.raises(BareError, match="no variant"):
        bare.encode("ToRivet", Variant("ToRivetNothing"))
    with pytest.raises(BareError, match="missing field"):
        bare.encode("ToRivet", Variant("ToRivetPong", {}))


def test_the_message_types_are_generated_from_the_schema() -> None:
    """``messages_v8.py`` (the TypedDicts the engine code is checked against) is what
    ``tools/gen_envoy_types.py`` makes of the schema now, formatted by ruff."""
    root = Path(__file__).resolve().parent.parent.parent
    generated = subprocess.run(
        [sys.executable, str(root / "tools" / "gen_envoy_types.py")],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    formatted = subprocess.run(
        [ruff, "format", "--stdin-filename", "actorcore/engine/messages_v8.py", "-"],
        input=generated,
        capture_output=True,
        check=True,
        cwd=root,
        timeout=60,
    ).stdout
    assert formatted == (root / "actorcore" / "engine" / "messages_v8.py").read_bytes()
