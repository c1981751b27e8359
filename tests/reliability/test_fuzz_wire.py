"""Bad input: fuzzing everything that crosses the wire.

* protocol frames: random JSON values, frames of the right shape with wrong types, unknown
  message types, huge ids, deep nesting, random text, binary frames and oversized frames;
* request targets: odd names and keys (percent-encoding, unicode, very long, empty, ``..``),
  odd verbs, bad ``params`` JSON, and targets that are not valid HTTP at all;
* raw WebSocket frames: random opcodes, reserved bits, unmasked frames, fragments, invalid
  UTF-8, and plain random bytes after the upgrade.

Each hypothesis example is one ``trio.run`` on the virtual clock with a fresh registry served on
in-memory streams. An *oracle* written from the protocol's documentation (not from the parser)
predicts what each input must get: an ``action_result``, an error frame with a known code, no
answer (subscriptions), a close with the documented code for its input class, or an HTTP
refusal. After every example a bystander connection that was open throughout, and a new
connection, must still be served, and no handler or generation may have crashed.

Profiles: see ``_support.fuzz_settings`` (``ACTORCORE_HYPOTHESIS_PROFILE=long``).
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import json
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any, Final
from urllib.parse import quote

import attrs
import pytest
import trio
from hypothesis import assume, example, given
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, WebSocketConnection

import actorcore
from actorcore import ActorContext, ActorOptions, Conn
from actorcore.testing import serve_loopback

from ._support import (
    StreamServer,
    call,
    close_code,
    fuzz_settings,
    receive_frame,
    run_virtual,
    serve_streams,
    tally,
)
from ._wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    RawClient,
    encode_frame,
    split_frame,
    upgrade_request,
)

MAX_MESSAGE: Final = 64 * 1024
MAX_ID: Final = 2**53 - 1
MAX_ID_STR: Final = 128
MAX_NAME: Final = 256
MAX_PATH: Final = 8192
MAX_KEY: Final = 1024
#: A frame far beyond every limit (16 MiB).
LIBRARY_MAX_MESSAGE: Final = 16 * 2**20

CONNECT: Final = "/actors/fuzz/k/connect"

INVALID: Final = (1008, "protocol.invalid_message")
NOT_FOUND: Final = (1008, "actor.not_found")
TOO_LARGE: Final = (1009, "message.too_large")


class Fuzz(actorcore.Actor):
    name = "fuzz"
    options = ActorOptions(
        max_message_size=MAX_MESSAGE,
        hook_timeout=1.0,
        close_timeout=0.5,
        sleep_timeout=1000.0,
    )

    async def create_conn_state(self, ctx: ActorContext, params: Any) -> Any:
        return {"params": params}

    async def on_ws_message(self, ctx: ActorContext, conn: Conn, message: str | bytes) -> None:
        await conn.send(message)

    @actorcore.action
    async def echo(self, ctx: ActorContext, *args: Any, **kwargs: Any) -> Any:
        return [list(args), kwargs]

    @actorcore.action
    async def strict(self, ctx: ActorContext, n: Any) -> int:
        if not isinstance(n, int) or isinstance(n, bool):
            raise actorcore.UserError("n must be an integer", code="fuzz.not_int")
        return n + 1

    @actorcore.action
    async def params(self, ctx: ActorContext) -> Any:
        conn = ctx.conn
        assert conn is not None
        return conn.state["params"]


ACTIONS: Final = {"echo": Fuzz.echo, "strict": Fuzz.strict, "params": Fuzz.params}


# --------------------------------------------------------------------------- crash watch


class _Crashes(logging.Handler):
    """Collects log records that say a handler or a generation crashed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "crashed" in message:
            self.records.append(message)


@contextlib.contextmanager
def no_crashes() -> Iterator[None]:
    handler = _Crashes()
    logger = logging.getLogger("actorcore")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.records, handler.records


async def still_served(server: StreamServer, bystander: WebSocketConnection) -> None:
    """The connection that was open throughout, and a new one, are both served."""
    assert (await call(bystander, "bystander", "echo", 1))["output"] == [[1], {}]
    async with server.connect(CONNECT) as ws:
        assert (await receive_frame(ws))["type"] == "init"
        assert (await call(ws, "fresh", "strict", 41))["output"] == 42


# --------------------------------------------------------------------------- the frame oracle


@attrs.frozen
class Reply:
    """An expected answer frame: ``kind`` is ``action_result`` or ``error``; ``value`` the output
    or the error code. ``certain``: queued before the next frame is read (error frames that the
    dispatcher writes itself), so it precedes any close."""

    kind: str
    id: Any
    value: Any
    certain: bool

    def key(self) -> str:
        return json.dumps([self.kind, self.id, self.value], sort_keys=True)


@attrs.frozen
class Expect:
    reply: Reply | None = None
    close: tuple[int, str] | None = None


def _valid_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def _valid_id(value: Any) -> bool:
    if type(value) is int:
        return 0 <= value <= MAX_ID
    return type(value) is str and len(value) <= MAX_ID_STR


def _bindable(name: str, args: list[Any], kwargs: dict[str, Any]) -> bool:
    try:
        inspect.signature(ACTIONS[name]).bind(None, None, *args, **kwargs)
    except TypeError:
        return False
    return True


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def expect_frame(message: str | bytes) -> Expect:
    """What the protocol documentation says one client frame gets."""
    if len(message) > MAX_MESSAGE:
        return Expect(close=TOO_LARGE)
    if isinstance(message, bytes):
        return Expect(close=INVALID)  # protocol frames are JSON text
    try:
        # Strict JSON, as documented: NaN and Infinity are not JSON.
        frame = json.loads(message, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return Expect(close=INVALID)
    if not isinstance(frame, dict):
        return Expect(close=INVALID)
    kind = frame.get("type")
    if kind in ("subscribe", "unsubscribe"):
        return Expect() if _valid_name(frame.get("event")) else Expect(close=INVALID)
    if kind != "action":
        return Expect(close=INVALID)
    action_id, name = frame.get("id"), frame.get("name")
    args, kwargs = frame.get("args", []), frame.get("kwargs", {})
    if not (
        _valid_id(action_id)
        and _valid_name(name)
        and isinstance(args, list)
        and isinstance(kwargs, dict)
    ):
        return Expect(close=INVALID)
    if name not in ACTIONS:
        return Expect(Reply("error", action_id, "actor.action_not_found", certain=True))
    if not _bindable(name, args, kwargs):
        return Expect(Reply("error", action_id, "actor.internal_error", certain=False))
    if name == "echo":
        return Expect(Reply("action_result", action_id, [args, kwargs], certain=False))
    if name == "strict":
        bound = inspect.signature(Fuzz.strict).bind(None, None, *args, **kwargs)
        n = bound.arguments["n"]
        if isinstance(n, int) and not isinstance(n, bool):
            return Expect(Reply("action_result", action_id, n + 1, certain=False))
        return Expect(Reply("error", action_id, "fuzz.not_int", certain=False))
    return Expect(Reply("action_result", action_id, None, certain=False))  # params: none


def reply_key(frame: dict[str, Any]) -> str:
    value = frame.get("output") if frame["type"] == "action_result" else frame.get("code")
    return json.dumps([frame["type"], frame.get("id"), value], sort_keys=True)


# --------------------------------------------------------------------------- frame strategies

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=10,
)
#: Nesting depths far from the interpreter's recursion limit (near it, where exactly
#: ``json.loads`` gives up depends on the caller's stack depth, not on the input).
DEPTH = st.integers(1, 800) | st.integers(1200, 30_000)
IDS = st.one_of(
    st.integers(-3, 1000),
    st.sampled_from([MAX_ID, MAX_ID + 1, -(2**63), 2**64, 10**40]),
    st.text(max_size=MAX_ID_STR + 3),
    st.sampled_from(["", "x" * MAX_ID_STR, "x" * (MAX_ID_STR + 1)]),
    JSON,
)
NAMES = st.one_of(
    st.sampled_from(["echo", "strict", "params", "missing", "", "x" * MAX_NAME, "y" * 257]),
    st.sampled_from(["__init__", "on_wake", "create_state", "echo ", "ECHO"]),
    JSON,
)
ARGS = st.lists(JSON, max_size=3) | JSON
KWARGS = st.dictionaries(
    st.sampled_from(["n", "self", "ctx", "args", "x"]) | TEXT, JSON, max_size=3
)
ACTION = st.fixed_dictionaries(
    {"type": st.just("action")},
    optional={"id": IDS, "name": NAMES, "args": ARGS, "kwargs": KWARGS | JSON, "extra": JSON},
)
SUBSCRIBE = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe"])}, optional={"event": NAMES}
)
#: Well-formed frames, so that answers (not only closes) are exercised too.
VALID_ACTION = st.fixed_dictionaries(
    {
        "type": st.just("action"),
        "id": st.integers(0, 10**6) | st.text(max_size=20),
        "name": st.sampled_from(["echo", "strict", "params", "missing", "sleep"]),
    },
    optional={
        "args": st.lists(JSON, max_size=3),
        "kwargs": st.dictionaries(st.sampled_from(["n", "x", "self", "args"]), JSON, max_size=2),
    },
)
VALID_SUBSCRIBE = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe"]), "event": st.text(min_size=1)}
)
ODD_TYPE = st.fixed_dictionaries(
    {"type": st.sampled_from(["", "Action", "teleport", "event", "init", "action_result"]) | JSON},
    optional={"id": IDS, "name": NAMES},
)


def _deep(depth: int, shape: str) -> str:
    if shape == "list":
        return "[" * depth + "]" * depth
    if shape == "object":
        return '{"a":' * depth + "1" + "}" * depth
    inner = "[" * depth + "]" * depth
    return json.dumps({"type": "action", "id": 1, "name": "echo"})[:-1] + f', "args": [{inner}]}}'


WELL_FORMED: Final = (VALID_ACTION | VALID_SUBSCRIBE).map(json.dumps)
FRAMES: Final = st.one_of(
    WELL_FORMED,
    (ACTION | SUBSCRIBE | ODD_TYPE).map(json.dumps),
    JSON.map(json.dumps),
    st.text(max_size=40),
    st.builds(_deep, DEPTH, st.sampled_from(["list", "object", "args"])),
    st.integers(MAX_MESSAGE + 1, MAX_MESSAGE + 64).map(
        lambda n: json.dumps({"type": "action", "id": 1, "name": "echo", "args": ["x" * n]})
    ),
    st.binary(max_size=40),
)


def _frame_class(message: str | bytes, expect: Expect) -> str:
    if expect.close is not None:
        return f"close {expect.close[0]} {expect.close[1]}"
    if expect.reply is None:
        return "no answer"
    return f"{expect.reply.kind} {expect.reply.value if expect.reply.kind == 'error' else ''}"


async def _frames_example(frames: list[str | bytes]) -> None:
    expects = [expect_frame(f) for f in frames]
    wanted: list[Reply] = []
    close: tuple[int, str] | None = None
    for expect in expects:
        if expect.reply is not None:
            wanted.append(expect.reply)
        if expect.close is not None:
            close = expect.close
            break
    registry = actorcore.Registry([Fuzz])
    async with serve_streams(registry) as server, server.connect(CONNECT) as bystander:
        await receive_frame(bystander)
        async with server.connect(CONNECT) as ws:
            await receive_frame(ws)
            for message in frames:
                try:
                    await ws.send_message(message)
                except ConnectionClosed:
                    break
            got: list[str] = []
            if close is None:
                control = "control-" + "z" * 100
                await ws.send_message(json.dumps({"type": "action", "id": control, "name": "echo"}))
                with trio.fail_after(10):
                    while True:
                        frame = json.loads(await ws.get_message())
                        if frame.get("id") == control:
                            break
                        got.append(reply_key(frame))
                assert collections.Counter(got) == collections.Counter(r.key() for r in wanted)
            else:
                with trio.fail_after(10):
                    while True:
                        try:
                            got.append(reply_key(json.loads(await ws.get_message())))
                        except ConnectionClosed as exc:
                            assert exc.reason is not None
                            assert (exc.reason.code, exc.reason.reason) == close
                            break
                # Answers queued before the close arrive; answers of actions still running
                # when the close was queued may be dropped; nothing else may arrive.
                assert not collections.Counter(got) - collections.Counter(r.key() for r in wanted)
                for reply in wanted:
                    if reply.certain:
                        assert reply.key() in got
        await still_served(server, bystander)
    for message, expect in zip(frames, expects, strict=False):
        tally(f"input: protocol frame -> {_frame_class(message, expect)}")
        if expect.close is not None:
            break  # the frames after it are not read


@fuzz_settings(1.5)
@given(
    frames=st.tuples(st.lists(WELL_FORMED, max_size=4), st.lists(FRAMES, max_size=2))
    .map(lambda parts: parts[0] + parts[1])
    .filter(bool)
)
@example(frames=['{"type": "action", "id": 9007199254740992, "name": "echo"}'])
@example(frames=['{"type": "action", "id": 1, "name": "echo", "args": [NaN]}'])
@example(frames=['{"type": "action", "id": 1, "name": "echo", "args": [-Infinity]}'])
@example(frames=['{"type": "action", "id": 1, "name": "strict", "kwargs": {"self": 1}}'])
@example(frames=["[" * 50_000])
@example(frames=[b'{"type": "action", "id": 1, "name": "echo"}'])
def test_protocol_frames_get_their_documented_outcome(frames: list[str | bytes]) -> None:
    with no_crashes():
        run_virtual(partial(_frames_example, frames))


# --------------------------------------------------------------------------- request targets

SEGMENT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=16),
    st.sampled_from(["..", ".", "%", "%2F", "a/b", "by-id", " ", "\x00", "é", "\U0001f642"]),
    st.sampled_from(["?", "#", "k?params=1", "%ff", "+", ";", "a%2Fb", "\\"]),
    st.integers(MAX_KEY - 2, MAX_KEY + 2).map(lambda n: "k" * n),
    st.integers(1, 700).map(lambda n: "\U0001f642" * n),  # long once percent-encoded
)
NAMES_IN_ROUTES = st.sampled_from(["fuzz", "nope", "by-id", "FUZZ", "fuzz "]) | SEGMENT
VERBS = st.sampled_from(["connect", "ws", "ws/sub/path", "ws/", "bogus", "", "connect/x"])
PARAMS = st.one_of(
    st.none(),
    JSON.map(json.dumps),
    st.text(max_size=20),
    st.just(""),
    st.builds(_deep, DEPTH, st.just("list")),
)


@attrs.frozen
class RouteCase:
    name: str
    key: str
    verb: str
    params: str | None

    def target(self) -> str:
        path = f"/actors/{quote(self.name, safe='')}/{quote(self.key, safe='')}/{self.verb}"
        if self.params is None:
            return path
        return f"{path}?params={quote(self.params, safe='')}"


#: h11's limit on an incomplete request head. The server reads 4 KiB at a time, so a head
#: longer than limit + 4 KiB is always refused with HTTP 431 before any WebSocket exists, one
#: of at most the limit never is, and in between it depends on how the bytes arrive.
H11_HEAD_LIMIT = 16 * 1024
READ_SIZE = 4096


def expect_route(case: RouteCase) -> str:
    """``init``, ``open`` (raw), ``close <code> <reason>`` or ``http 400``: from the route
    documentation."""
    target = case.target()
    head = len(upgrade_request(target.encode()))
    assume(not H11_HEAD_LIMIT < head <= H11_HEAD_LIMIT + READ_SIZE)  # either outcome is right
    if head > H11_HEAD_LIMIT:
        return "http 431"

    def ok(value: str) -> bool:
        return 0 < len(value) <= MAX_KEY

    verb_ok = case.verb == "connect" or case.verb == "ws" or case.verb.startswith("ws/")
    if len(target) > MAX_PATH or not (ok(case.name) and ok(case.key) and verb_ok):
        return f"close {NOT_FOUND[0]} {NOT_FOUND[1]}"
    if case.params is not None:
        try:
            # Strict JSON (RFC 8259), as the server reads it: Python's json also takes
            # NaN and Infinity, which no other parser does.
            json.loads(case.params, parse_constant=_not_json)
        except (ValueError, RecursionError):
            return f"close {INVALID[0]} {INVALID[1]}"
    if case.name != "fuzz":  # "by-id": the key is an actor id, and no actor has it
        return f"close {NOT_FOUND[0]} {NOT_FOUND[1]}"
    return "init" if case.verb == "connect" else "open"


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def _route_example(case: RouteCase, expected: str) -> None:
    registry = actorcore.Registry([Fuzz])
    async with serve_streams(registry) as server, server.connect(CONNECT) as bystander:
        await receive_frame(bystander)
        async with server.raw() as client:
            with trio.fail_after(10):
                status = await client.handshake(case.target().encode())
                assert status == (431 if expected == "http 431" else 101)
                if expected == "init":
                    init = await client.read_frame()
                    assert init is not None and json.loads(init.payload)["type"] == "init"
                    await client.send_text(
                        json.dumps({"type": "action", "id": 1, "name": "params"})
                    )
                    reply = await client.read_frame()
                    assert reply is not None
                    output = json.loads(reply.payload)["output"]
                    want = None if case.params is None else json.loads(case.params)
                    assert json.dumps(output) == json.dumps(want), "params arrive decoded"
                elif expected == "open":
                    await client.send_text("hello")
                    echo = await client.read_frame()
                    assert echo is not None and echo.payload == b"hello"
                elif expected != "http 431":
                    _, (code, reason) = await client.read_until_close()
                    assert f"close {code} {reason}" == expected
        await still_served(server, bystander)
    tally(f"input: route -> {expected}")


VALID_ROUTES = st.builds(
    RouteCase,
    st.just("fuzz"),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=24),
    st.sampled_from(["connect", "ws", "ws/a/b"]),
    st.none() | JSON.map(json.dumps),
)
ODD_ROUTES = st.builds(RouteCase, NAMES_IN_ROUTES, SEGMENT, VERBS, PARAMS)


@fuzz_settings(1.5)
@given(case=VALID_ROUTES | ODD_ROUTES)
@example(case=RouteCase("fuzz", "..", "connect", None))
@example(case=RouteCase("fuzz", "", "connect", None))
@example(case=RouteCase("fuzz", "k" * (MAX_KEY + 1), "ws", None))
@example(case=RouteCase("fuzz", "\U0001f642" * 700, "connect", None))
@example(case=RouteCase("fuzz", "k", "connect", "{oops"))
@example(case=RouteCase("by-id", "k", "connect", None))
@example(case=RouteCase("fuzz", "a/b", "ws/x", '{"nick": "\\u00e9"}'))
@example(case=RouteCase("fuzz", "0", "connect", "NaN"))  # found by a long run: strict JSON
@example(case=RouteCase("nope", "0", "connect", "-Infinity"))
def test_routes_get_their_documented_outcome(case: RouteCase) -> None:
    expected = expect_route(case)
    with no_crashes():
        run_virtual(partial(_route_example, case, expected))


def _vchar_only(target: bytes) -> bool:
    return bool(target) and all(0x21 <= b <= 0x7E for b in target)


async def _raw_target_example(target: bytes) -> None:
    registry = actorcore.Registry([Fuzz])
    async with serve_streams(registry) as server, server.connect(CONNECT) as bystander:
        await receive_frame(bystander)
        async with server.raw() as client:
            with trio.fail_after(10):
                status = await client.handshake(target)
                if not _vchar_only(target):
                    # Not a valid HTTP request target: refused before any WebSocket exists.
                    assert status == 400
                    outcome = "http 400"
                else:
                    assert status == 101
                    first = await client.read_frame()
                    assert first is not None
                    if first.opcode == OP_CLOSE:
                        code, reason = first.close_code()
                        assert (code, reason) in (NOT_FOUND, INVALID)
                        outcome = f"close {code} {reason}"
                    else:  # the target happened to name the fuzz actor
                        assert first.opcode == OP_TEXT
                        outcome = "init"
        await still_served(server, bystander)
    tally(f"input: raw request target -> {outcome}")


@fuzz_settings(1.0)
@given(
    target=st.one_of(
        st.binary(max_size=60),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60).map(str.encode),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60).map(
            lambda s: ("/actors/" + s).encode()
        ),
    )
)
@example(target=b"")
@example(target=b"*")
@example(target=b"/actors/fuzz/k k/connect")
@example(target=b"/actors/fuzz/\xc3\xa9/connect")
@example(target=b"http://elsewhere/actors/fuzz/k/connect")
@example(target=b"/actors/fuzz/k/connect?params=%7B")
def test_arbitrary_request_targets_are_refused_or_routed(target: bytes) -> None:
    with no_crashes():
        run_virtual(partial(_raw_target_example, target))


# --------------------------------------------------------------------------- raw frames

#: What a connection may end with after frames that break the WebSocket framing itself:
#: a close frame 1002 (protocol error) or 1007 (invalid UTF-8) with wsproto's description as
#: its reason (never 1006: see docs/reliability.md, *Bad input*), actorcore closes binary or
#: malformed protocol frames with 1008 and oversized ones with 1009. (A close frame the
#: client sent is echoed: see :meth:`RawFrame.echo`.)
FRAMING_OUTCOMES: Final = {INVALID, TOO_LARGE}
FRAMING_FAILURE_CODES: Final = frozenset({1002, 1007})


@attrs.frozen
class RawFrame:
    opcode: int
    payload: bytes
    fin: bool
    mask: bool
    rsv: int

    def encode(self) -> bytes:
        return encode_frame(self.opcode, self.payload, fin=self.fin, mask=self.mask, rsv=self.rsv)

    def echo(self) -> tuple[int, str] | None:
        """The close the server echoes if it accepts this frame as the client's close."""
        if self.opcode != OP_CLOSE:
            return None
        if len(self.payload) < 2:
            return (1005, "")  # "no status": an empty close is echoed empty
        return int.from_bytes(self.payload[:2], "big"), self.payload[2:].decode("utf-8", "replace")


RAW_FRAMES = st.builds(
    RawFrame,
    opcode=st.sampled_from([OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, 0x3, 0xB]),
    payload=st.binary(max_size=40) | st.text(max_size=20).map(str.encode),
    fin=st.booleans(),
    mask=st.booleans() | st.just(True),
    rsv=st.sampled_from([0, 0, 0, 1, 4]),
)


def _close_echoes_in(data: bytes) -> set[tuple[int, str]]:
    """The echoes of client close frames found by reading ``data`` as a sequence of client
    frames (random bytes can spell a valid close frame)."""
    echoes: set[tuple[int, str]] = set()
    while (split := split_frame(data)) is not None:
        frame, _, used = split
        if frame.opcode == OP_CLOSE:
            echo = RawFrame(OP_CLOSE, frame.payload, fin=True, mask=True, rsv=0).echo()
            assert echo is not None
            echoes.add(echo)
        data = data[used:]
    return echoes


async def _raw_frames_example(route: str, chunks: list[RawFrame | bytes]) -> None:
    allowed = set(FRAMING_OUTCOMES)
    allowed |= {e for c in chunks if isinstance(c, RawFrame) and (e := c.echo()) is not None}
    allowed |= _close_echoes_in(b"".join(c for c in chunks if isinstance(c, bytes)))
    registry = actorcore.Registry([Fuzz])
    async with serve_streams(registry) as server, server.connect(CONNECT) as bystander:
        await receive_frame(bystander)
        async with server.raw() as client:
            with trio.fail_after(10):
                assert await client.handshake(f"/actors/fuzz/k/{route}".encode()) == 101
                if route == "connect":
                    init = await client.read_frame()
                    assert init is not None and init.opcode == OP_TEXT
                for chunk in chunks:
                    await client.send(chunk.encode() if isinstance(chunk, RawFrame) else chunk)
            # Either the server ends the connection with a documented outcome, or the bytes
            # left it open (an incomplete frame, a ping, a valid message): both are fine.
            outcome = "left open"
            with trio.move_on_after(3):
                _, close = await client.read_until_close()
                failed = close[0] in FRAMING_FAILURE_CODES and close[1] != ""
                assert close in allowed or failed, close
                outcome = f"close {close[0]} {close[1]}".rstrip()
        await still_served(server, bystander)
    tally(f"input: raw bytes on /{route} -> {outcome}")


@fuzz_settings(1.0)
@given(
    route=st.sampled_from(["connect", "ws"]),
    chunks=st.lists(RAW_FRAMES | st.binary(min_size=1, max_size=64), max_size=4),
)
@example(route="connect", chunks=[b"\x88\x80\x00\x00\x00\x00"])
@example(route="connect", chunks=[encode_frame(OP_TEXT, b"\xff\xfe{}")])
@example(route="ws", chunks=[encode_frame(OP_TEXT, b"caf\xc3")])
@example(route="ws", chunks=[encode_frame(OP_TEXT, b"{}", mask=False)])
@example(route="connect", chunks=[encode_frame(OP_BINARY, b'{"type": "action"}')])
@example(route="ws", chunks=[encode_frame(OP_TEXT, b"ab", fin=False), encode_frame(OP_CONT, b"c")])
@example(route="connect", chunks=[b"\x00" * 64])
@example(route="connect", chunks=[RawFrame(OP_CLOSE, b"", fin=True, mask=True, rsv=0)])
@example(route="ws", chunks=[RawFrame(OP_CLOSE, b"\x0f\xa0bye", fin=True, mask=True, rsv=0)])
def test_raw_frames_end_in_a_documented_way(route: str, chunks: list[RawFrame | bytes]) -> None:
    with no_crashes():
        run_virtual(partial(_raw_frames_example, route, chunks))


@pytest.mark.parametrize("route", ["connect", "ws"])
@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (MAX_MESSAGE, None),
        (MAX_MESSAGE + 1, TOO_LARGE),
        # Far beyond the limit: refused as the bytes arrive, not after buffering them.
        (LIBRARY_MAX_MESSAGE + 1, TOO_LARGE),
    ],
)
async def test_oversized_frames_close_1009(
    autojump_clock: trio.abc.Clock, route: str, size: int, expected: tuple[int, str] | None
) -> None:
    registry = actorcore.Registry([Fuzz])
    payload = ("x" * size).encode()
    if route == "connect" and expected is None:
        # The largest allowed protocol frame: a valid action padded to the limit.
        head = b'{"type": "action", "id": 1, "name": "echo", "args": ["'
        payload = head + b"x" * (size - len(head) - 3) + b'"]}'
    async with serve_streams(registry) as server, server.connect(CONNECT) as bystander:
        await receive_frame(bystander)
        async with server.raw() as client:
            with trio.fail_after(30):
                assert await client.handshake(f"/actors/fuzz/k/{route}".encode()) == 101
                if route == "connect":
                    await client.read_frame()
                await client.send(encode_frame(OP_TEXT, payload, mask_key=bytes(4)))
                if expected is None:
                    reply = await client.read_frame()
                    assert reply is not None and reply.opcode == OP_TEXT
                    if route == "ws":
                        assert reply.payload == payload
                    else:
                        assert json.loads(reply.payload)["type"] == "action_result"
                else:
                    _, close = await client.read_until_close()
                    assert close == expected
        tally("input: oversized frame")
        await still_served(server, bystander)


async def test_many_bad_inputs_on_one_server_leave_it_serving(
    autojump_clock: trio.abc.Clock,
) -> None:
    """One long-lived server takes a stream of bad connections (every input class above, in
    turn); then a bystander and a fresh connection are still served and nothing leaked."""
    registry = actorcore.Registry([Fuzz])
    bad_frames: list[str | bytes] = [
        "not json",
        "[" * 20_000,
        '{"type": "action", "id": -1, "name": "echo"}',
        b"\x00\x01",
        '{"type": "teleport"}',
        "x" * (MAX_MESSAGE + 1),
    ]
    bad_targets = [b"/actors/nope/k/connect", b"/actors/fuzz//connect", b"/actors/fuzz/k/bogus"]
    bad_targets += [b"/actors/fuzz/k/connect?params=%7B", b"/actors/fuzz/%ff/ws", b"/x"]
    async with serve_streams(registry) as server, server.connect(CONNECT) as bystander:
        await receive_frame(bystander)
        for round_ in range(20):
            for message in bad_frames:
                async with server.connect(CONNECT) as ws:
                    await receive_frame(ws)
                    await ws.send_message(message)
                    assert (await close_code(ws))[0] in (1008, 1009)
            for target in bad_targets:
                async with server.raw() as client:
                    assert await client.handshake(target) == 101
                    _, (code, _) = await client.read_until_close()
                    assert code == 1008
            async with server.raw() as client:
                assert await client.handshake(b"/actors/fuzz/k/ws") == 101
                await client.send(encode_frame(OP_TEXT, b"\xff" * (round_ + 1)))
                assert (await client.read_until_close())[1][0] == 1007
            tally(
                "input: bad connection on a long-lived server",
                len(bad_frames) + len(bad_targets) + 1,
            )
        await still_served(server, bystander)
        assert registry.statistics().connections == 1
        closes = registry.statistics().closes_by_code
        assert closes.get(1008, 0) == 20 * (5 + len(bad_targets))
        assert closes.get(1009, 0) == 20


async def test_framing_errors_get_a_close_frame_over_real_sockets() -> None:
    """Regression: on a frame that breaks the framing trio-websocket closed the TCP
    connection without a close frame, so the client saw 1006. Now it gets 1002 or 1007 with
    wsproto's description, and other connections are unaffected."""
    bad_frames = {
        "invalid UTF-8": (encode_frame(OP_TEXT, b"\xff\xfe"), 1007),
        "unmasked frame": (encode_frame(OP_TEXT, b"hi", mask=False), 1002),
        "reserved opcode": (encode_frame(0x3, b"x"), 1002),
        "RSV bit": (encode_frame(OP_TEXT, b"x", rsv=4), 1002),
        "stray continuation": (encode_frame(OP_CONT, b"x"), 1002),
    }
    registry = actorcore.Registry([Fuzz])
    with trio.fail_after(20):
        async with serve_loopback(registry) as server, server.connect(CONNECT) as bystander:
            await receive_frame(bystander)
            for what, (frame, code) in bad_frames.items():
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                async with RawClient(stream) as client:
                    assert await client.handshake(b"/actors/fuzz/k/ws") == 101
                    await client.send(frame)
                    _, close = await client.read_until_close()
                    assert close[0] == code and close[1], (what, close)
                tally(f"input: {what} over TCP -> close {close[0]}")
            assert (await call(bystander, 1, "echo", "here"))["output"] == [["here"], {}]
