"""Resumable protocol connections: tokens, the numbered output journal, detached connections.

A protocol connection whose store keeps connection records (``Store.keeps_conns``) has a
:class:`Journal`: its resume token's secret (hashed), the sequence numbers of its outputs, the
outputs its client has not acknowledged, and the answers of its actions by id. The journal
outlives the socket: when the socket goes away without the client closing, the connection is
*detached* (:class:`DetachedConn`) and a client that comes back with ``?resume=TOKEN`` takes
it over, with every unacknowledged output sent again and every action it sends again answered
from the journal instead of being run twice. See ``docs/zero-loss.md``.

Nothing here does I/O: the generation writes journals with the actor's state (one
transaction), the dispatcher attaches and detaches them.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import attrs

from . import jsoncodec
from .errors import ResumeRefused
from .store.base import ConnRecord

if TYPE_CHECKING:
    from .conn import Conn

__all__ = ["DetachedConn", "Journal", "ResumeToken", "decode_record", "encode_record"]

_TOKEN_PART: Final = re.compile(r"[0-9A-Za-z_-]{1,128}")

ActionId = int | str


@attrs.frozen
class ResumeToken:
    """A parsed resume token: ``{actor_id}.{conn_id}.{secret}``."""

    actor_id: str
    conn_id: str
    secret: str

    @classmethod
    def parse(cls, token: str) -> ResumeToken:
        """Parse ``token``; :class:`ResumeRefused` ``resume.invalid`` if it is malformed."""
        parts = token.split(".")
        if len(parts) != 3 or not all(_TOKEN_PART.fullmatch(part) for part in parts):
            raise ResumeRefused("the resume token is malformed", code="resume.invalid")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.actor_id}.{self.conn_id}.{self.secret}"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


#: Answers kept for a connection that does not number its outputs (no ``?seq=1``): it never
#: acknowledges, so only the latest few can be replayed after a resume.
UNNUMBERED_ANSWERS: Final = 16


@attrs.define(eq=False, slots=True)
class Journal:
    """The resumable part of one protocol connection (see the module docstring).

    A *numbered* connection (its client connected with ``?seq=1``) gets a ``seq`` on every
    answer, event and message, keeps them until acknowledged (at most ``limit``, the oldest
    go first) and has them sent again after a resume. Any resumable connection keeps the
    answers of its actions by id (a numbered one until acknowledged, another one the latest
    :data:`UNNUMBERED_ANSWERS`), so that an action sent again after a resume is answered
    from the journal instead of running twice.
    """

    secret_hash: str
    """SHA-256 of the token's secret: the store never holds a usable token."""
    limit: int
    """Unacknowledged outputs kept at most (``ActorOptions.max_unacked_outputs``)."""
    numbered: bool = False
    next_seq: int = 1
    acked: int = 0
    """The highest sequence number the client acknowledged."""
    dropped: int = 0
    """Unacknowledged outputs dropped because the journal was full."""
    attached: Conn | None = None
    """The connection carrying the journal now (None while detached)."""
    on_change: Callable[[], None] | None = None
    """Told when the connection's record must be written again; set by whoever holds the
    connection now (its actor, attached or detached)."""
    _outputs: collections.deque[tuple[int, str, ActionId | None]] | None = None
    """``(seq, numbered frame, action id or None)``, oldest first (numbered journals; made on
    first use, like the two below: an idle connection keeps none)."""
    _answers: dict[ActionId, str] | None = None
    """The answer of each action still kept, by id (insertion order: oldest first)."""
    _running: dict[ActionId, int] | None = None
    """Actions of this connection running now, by id, with how many runs (made on first
    use)."""
    replays: bool = False
    """Action ids are deduplicated: the client numbers its outputs, or the connection was
    resumed (its client may send again what it sent before). Otherwise ids are the client's
    business and a repeated one runs again, as on any connection."""

    @classmethod
    def new(cls, limit: int, *, numbered: bool) -> tuple[Journal, str]:
        """A fresh journal and the token secret its client gets (kept only as a hash)."""
        secret = secrets.token_hex(16)
        journal = cls(_digest(secret), limit, numbered)
        journal.replays = numbered
        return journal, secret

    def verify(self, secret: str) -> bool:
        """Whether ``secret`` is this journal's (in constant time)."""
        return hmac.compare_digest(_digest(secret), self.secret_hash)

    def record(self, frame: str, action_id: ActionId | None = None) -> str | None:
        """An output (``action_id``: the answer of that action) of this connection: returns
        the frame to send (numbered, on a numbered journal), kept until acknowledged. None:
        nothing to send or keep (an event or message of an unnumbered journal that has no
        socket: its client could not tell it from a resent one)."""
        if not self.numbered:
            if action_id is not None:
                answers = self._answers
                if answers is None:
                    answers = self._answers = {}
                answers.pop(action_id, None)
                answers[action_id] = frame
                if len(answers) > UNNUMBERED_ANSWERS:
                    del answers[next(iter(answers))]
            elif self.attached is None:
                return None
            return frame
        seq = self.next_seq
        self.next_seq = seq + 1
        numbered = f'{frame[:-1]}, "seq": {seq}}}'
        outputs = self._outputs
        if outputs is None:
            outputs = self._outputs = collections.deque()
        outputs.append((seq, numbered, action_id))
        if action_id is not None:
            if self._answers is None:
                self._answers = {}
            self._answers[action_id] = numbered
        if len(outputs) > self.limit:
            self._forget(outputs.popleft())
            self.dropped += 1
        return numbered

    def ack(self, seq: int) -> bool:
        """The client received every output up to ``seq``: forget them. True if anything
        was forgotten."""
        outputs = self._outputs
        if seq <= self.acked or outputs is None:
            return False
        self.acked = min(seq, self.next_seq - 1)
        forgot = False
        while outputs and outputs[0][0] <= seq:
            self._forget(outputs.popleft())
            forgot = True
        return forgot

    def _forget(self, output: tuple[int, str, ActionId | None]) -> None:
        _, frame, action_id = output
        answers = self._answers
        if action_id is not None and answers is not None and answers.get(action_id) is frame:
            del answers[action_id]

    def unacked(self) -> list[str]:
        """The numbered outputs the client has not acknowledged, oldest first (what a resume
        sends again; nothing for an unnumbered journal)."""
        return [frame for _, frame, _ in self._outputs or ()]

    def replayed(self, action_id: ActionId) -> str | None:
        """An action frame arrived. On a journal that :attr:`replays`: its recorded answer if
        it ran already, ``""`` if it is running now (that run answers it); None: run it."""
        running = self._running
        if self.replays:
            answer = self._answers.get(action_id) if self._answers is not None else None
            if answer is not None:
                return answer
            if running is not None and action_id in running:
                return ""
        if running is None:
            running = self._running = {}
        running[action_id] = running.get(action_id, 0) + 1
        return None

    def end(self, action_id: ActionId) -> None:
        """The action ``action_id`` has been answered (or refused)."""
        running = self._running
        if running is not None and action_id in running:
            if running[action_id] <= 1:
                del running[action_id]
                if not running:
                    self._running = None
            else:
                running[action_id] -= 1

    def to_json(self) -> dict[str, Any]:
        """What the store keeps of the journal (running actions are not kept: after a crash
        they did not complete)."""
        data: dict[str, Any] = {
            "secret": self.secret_hash,
            "numbered": self.numbered,
            "seq": self.next_seq,
            "acked": self.acked,
        }
        if self.numbered:
            data["out"] = [[seq, frame, action_id] for seq, frame, action_id in self._outputs or ()]
        else:
            answers = self._answers or {}
            data["answers"] = [[action_id, frame] for action_id, frame in answers.items()]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], limit: int) -> Journal:
        """The journal :meth:`to_json` described."""
        journal = cls(
            str(data["secret"]), limit, bool(data["numbered"]), int(data["seq"]), int(data["acked"])
        )
        journal.replays = True  # only a resume reads a journal back
        outputs: collections.deque[tuple[int, str, ActionId | None]] = collections.deque()
        answers: dict[ActionId, str] = {}
        for seq, frame, action_id in data.get("out", ()):
            outputs.append((int(seq), str(frame), action_id))
            if action_id is not None:
                answers[action_id] = str(frame)
        for action_id, frame in data.get("answers", ()):
            answers[action_id] = str(frame)
        journal._outputs = outputs or None
        journal._answers = answers or None
        return journal


@attrs.define(eq=False, slots=True)
class DetachedConn:
    """A protocol connection whose socket went away without its client closing it: kept for
    ``resume_timeout`` (see the module docstring)."""

    conn_id: str
    params: Any
    state: Any
    subscriptions: tuple[str, ...]
    journal: Journal
    detached_at: float
    """When its socket went away, in seconds since the Unix epoch (what the store keeps)."""
    expires: float
    """When it ends unless resumed, on trio's clock."""


def encode_record(
    actor_id: str,
    conn_id: str,
    params: Any,
    state: Any,
    subscriptions: tuple[str, ...],
    journal: Journal,
    detached_at: float | None,
) -> ConnRecord:
    """The store's record of a connection. A ``conn.state`` that is not JSON is kept as null
    (the connection still resumes; its state does not survive a restart)."""
    try:
        encoded_state = jsoncodec.dumps_compact(state)
    except (TypeError, ValueError, RecursionError):
        encoded_state = "null"
    body = jsoncodec.dumps_compact(
        {"params": params, "subs": list(subscriptions), "journal": journal.to_json()}
    )
    # The state is spliced in already encoded, so that only it can fail to encode.
    data = f'{body[:-1]},"state":{encoded_state}}}'.encode()
    return ConnRecord(conn_id, actor_id, data, detached_at)


def decode_record(
    record: ConnRecord, limit: int, timeout: float, wall_now: float, trio_now: float
) -> DetachedConn:
    """The detached connection a store record describes: detached when the record says, or
    ``wall_now`` if it says attached; it ends ``timeout`` seconds after it was detached.
    Raises ValueError, KeyError or TypeError for a record that does not decode."""
    data = jsoncodec.loads(record.data)
    detached_at = record.detached_at if record.detached_at is not None else wall_now
    return DetachedConn(
        conn_id=record.conn_id,
        params=data["params"],
        state=data["state"],
        subscriptions=tuple(str(event) for event in data["subs"]),
        journal=Journal.from_json(data["journal"], limit),
        detached_at=detached_at,
        expires=trio_now + timeout - max(0.0, wall_now - detached_at),
    )
