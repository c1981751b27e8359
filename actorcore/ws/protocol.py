"""The JSON frames of the ``/connect`` actor protocol (see ``docs/protocol.md``).

Parsing is strict: a frame that is not a JSON object with a known ``type`` and well-typed
fields raises :class:`~actorcore.InvalidMessage`, and the dispatcher closes with 1008
``protocol.invalid_message``. Encoding never fails for frames actorcore builds itself; an action
output that is not JSON-serialisable becomes an ``actor.internal_error`` error frame.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from .. import jsoncodec
from ..errors import ActorError, InternalError, InvalidMessage

__all__ = [
    "Ack",
    "ActionRequest",
    "ClientFrame",
    "Subscribe",
    "Unsubscribe",
    "encode_action_result",
    "encode_error",
    "encode_init",
    "parse_client_frame",
]

#: Largest accepted action id: integers a JavaScript client can represent exactly.
MAX_ID: Final = 2**53 - 1
MAX_ID_STR: Final = 128
MAX_NAME: Final = 256


@attrs.frozen(slots=True)
class ActionRequest:
    """``{"type": "action", "id": ..., "name": ..., "args": [...], "kwargs": {...}}``."""

    id: int | str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    ack: int | None = None
    """A piggybacked acknowledgement (see :class:`Ack`), or None."""


@attrs.frozen(slots=True)
class Ack:
    """``{"type": "ack", "seq": n}``: the client received every numbered output up to ``n``
    (see ``docs/zero-loss.md``)."""

    seq: int


@attrs.frozen(slots=True)
class Subscribe:
    """``{"type": "subscribe", "event": ...}``."""

    event: str


@attrs.frozen(slots=True)
class Unsubscribe:
    """``{"type": "unsubscribe", "event": ...}``."""

    event: str


ClientFrame = ActionRequest | Subscribe | Unsubscribe | Ack


def _seq(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise InvalidMessage(f"{field!r} must be an integer between 0 and {MAX_ID}")
    return value


def _name(frame: dict[str, Any], field: str) -> str:
    value = frame.get(field)
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise InvalidMessage(f"{field!r} must be a non-empty string of at most {MAX_NAME} chars")
    return value


def parse_client_frame(message: str | bytes) -> ClientFrame:
    """Parse one client frame; raise :class:`InvalidMessage` saying what is wrong."""
    if not isinstance(message, str):
        raise InvalidMessage("protocol frames are JSON text frames, not binary")
    try:
        frame = jsoncodec.loads(message)
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage(f"frame is not valid JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise InvalidMessage("frame must be a JSON object")
    kind = frame.get("type")
    if kind == "action":
        action_id = frame.get("id")
        if isinstance(action_id, bool) or not isinstance(action_id, int | str):
            raise InvalidMessage("'id' must be an integer or a string")
        if isinstance(action_id, int) and not 0 <= action_id <= MAX_ID:
            raise InvalidMessage(f"'id' must be between 0 and {MAX_ID}")
        if isinstance(action_id, str) and len(action_id) > MAX_ID_STR:
            raise InvalidMessage(f"'id' strings are at most {MAX_ID_STR} chars")
        args = frame.get("args", [])
        if not isinstance(args, list):
            raise InvalidMessage("'args' must be a list")
        kwargs = frame.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise InvalidMessage("'kwargs' must be an object")
        ack = frame.get("ack")
        if ack is not None:
            ack = _seq(ack, "ack")
        return ActionRequest(action_id, _name(frame, "name"), args, kwargs, ack)
    if kind == "ack":
        return Ack(_seq(frame.get("seq"), "seq"))
    if kind == "subscribe":
        return Subscribe(_name(frame, "event"))
    if kind == "unsubscribe":
        return Unsubscribe(_name(frame, "event"))
    raise InvalidMessage(
        f"unknown frame type {kind!r}" if isinstance(kind, str) else "frame has no string 'type'"
    )


def encode_init(
    actor_id: str,
    conn_id: str,
    generation: int,
    resume_token: str | None = None,
    resumed: bool = False,
) -> str:
    """The first frame the server sends on a protocol connection (with a resume token when
    the connection is resumable; ``resumed``: it took back an existing connection)."""
    frame: dict[str, Any] = {
        "type": "init",
        "actor_id": actor_id,
        "conn_id": conn_id,
        "generation": generation,
    }
    if resume_token is not None:
        frame["resume_token"] = resume_token
        frame["resumed"] = resumed
    return jsoncodec.dumps(frame)


def encode_action_result(action_id: int | str, output: Any) -> str:
    """An action's result; an output that is not JSON becomes an internal-error frame."""
    try:
        return jsoncodec.dumps({"type": "action_result", "id": action_id, "output": output})
    except (TypeError, ValueError, RecursionError):
        return encode_error(action_id, InternalError("the action's output is not JSON"))


def encode_error(action_id: int | str | None, error: ActorError) -> str:
    """An error frame for an action (``action_id`` None: an error not tied to an action)."""
    return jsoncodec.dumps({"type": "error", "id": action_id, **error.to_wire()})
