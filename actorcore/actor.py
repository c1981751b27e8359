"""The Actor base class, the ``@action`` decorator, and the checks run on a definition.

An actor is a plain Python class. Its hooks and actions are ``async def`` methods that take the
:class:`~actorcore.ActorContext` as their first argument after ``self``. A new instance is made
for every generation, so instance attributes are per-generation like ``ctx.vars``; only
``ctx.state`` is persisted.
"""

from __future__ import annotations

import dis
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from types import CodeType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeVar, cast

import attrs

from .context import ActorContext, StateT
from .errors import DefinitionError
from .options import ActorOptions

if TYPE_CHECKING:
    from .conn import Conn
    from .http.request import Request, Response

__all__ = ["Actor", "ActorDefinition", "action", "definition_of"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_ACTION_MARK: Final = "__actorcore_action__"
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_.~-]{1,128}$")

#: Hooks that must be ``async def`` when a subclass defines them.
ASYNC_HOOKS: Final = (
    "on_create",
    "on_wake",
    "on_sleep",
    "on_destroy",
    "on_before_connect",
    "on_connect",
    "on_disconnect",
    "on_ws_open",
    "on_ws_message",
    "on_ws_close",
    "on_request",
)


def action(fn: F) -> F:
    """Mark an ``async def`` method as an action callable by clients and handles."""
    if not inspect.iscoroutinefunction(cast(Any, fn)):
        raise DefinitionError(f"@action {getattr(fn, '__qualname__', fn)!r} must be async def")
    setattr(fn, _ACTION_MARK, True)
    return fn


class Actor(Generic[StateT]):
    """Base class of user actors. Every hook is optional.

    Class attributes: ``name`` (route name, default the class name in lower case) and
    ``options`` (:class:`ActorOptions`). ``Actor[S]`` types the state for the checker:
    ``ctx: ActorContext[S]`` has ``ctx.state: S`` (a plain ``Actor`` keeps ``Any``).
    """

    name: ClassVar[str] = ""
    options: ClassVar[ActorOptions] = ActorOptions()

    def create_state(self, ctx: ActorContext[StateT], input: Any) -> StateT | Awaitable[StateT]:
        """Initial state, on first creation only (plain or async). Must be JSON-serialisable."""
        return cast(StateT, {})

    async def on_create(self, ctx: ActorContext[StateT]) -> None:
        """First creation only, after ``create_state``."""

    async def on_wake(self, ctx: ActorContext[StateT]) -> None:
        """Start of every generation, the first included."""

    async def on_sleep(self, ctx: ActorContext[StateT]) -> None:
        """Sleep grace: the actor still serves work while this runs."""

    async def on_destroy(self, ctx: ActorContext[StateT]) -> None:
        """Destroy grace: new work is refused while this runs."""

    async def on_before_connect(self, ctx: ActorContext[StateT], params: Any, request: Any) -> None:
        """Before a connection is set up; raise :class:`actorcore.Forbidden` to refuse it."""

    async def create_conn_state(self, ctx: ActorContext[StateT], params: Any) -> Any:
        """Initial ``conn.state`` of a new connection (plain or async)."""
        return None

    async def on_connect(self, ctx: ActorContext[StateT], conn: Conn) -> None:
        """A connection became live (not called again after a wake for hibernated ones)."""

    async def on_disconnect(self, ctx: ActorContext[StateT], conn: Conn) -> None:
        """A connection ended (not called when a hibernatable one sleeps with its actor)."""

    async def on_ws_open(self, ctx: ActorContext[StateT], conn: Conn) -> None:
        """A raw WebSocket became live."""

    async def on_ws_message(
        self, ctx: ActorContext[StateT], conn: Conn, message: str | bytes
    ) -> None:
        """A message on a raw WebSocket; messages of one connection come one at a time."""

    async def on_ws_close(
        self, ctx: ActorContext[StateT], conn: Conn, code: int, reason: str
    ) -> None:
        """A raw WebSocket closed."""

    async def on_request(self, ctx: ActorContext[StateT], request: Request) -> Response:
        """An HTTP request to ``/actors/{name}/{key}/http[/...]`` (or the by-id route):
        return an :class:`actorcore.Response`. It runs as tracked work of the generation,
        bounded by ``action_timeout``. An actor that does not define it answers 404 (without
        being woken)."""
        from .http.request import Response

        return Response.json(
            {"code": "actor.not_found", "message": "no on_request handler", "retryable": False},
            status=404,
        )


@attrs.frozen
class ActorDefinition:
    """A checked actor class: its route name, options and actions."""

    cls: type[Actor]
    name: str
    options: ActorOptions
    actions: dict[str, Callable[..., Awaitable[Any]]] = attrs.field(hash=False)
    create_state_is_async: bool
    inline_actions: frozenset[str] = frozenset()
    """Actions whose body never suspends (no ``await``, ``async with`` or ``async for``):
    the dispatcher runs them to completion in the connection's read loop instead of in a
    task of their own (see :func:`never_suspends` and :meth:`runs_inline`)."""
    inline_code: dict[str, CodeType] = attrs.field(factory=dict, hash=False)
    """The code object :func:`never_suspends` inspected, per inline action."""

    def runs_inline(self, action: str) -> bool:
        """Whether ``action`` may run inline now: it was found never to suspend, and its
        function still has the code that was inspected (autoreload tools replace
        ``__code__``; a replaced body may await, and then takes the task path)."""
        code = self.inline_code.get(action)
        return code is not None and getattr(self.actions[action], "__code__", None) is code


#: Opcodes through which a coroutine body can suspend (CPython 3.11-3.13): an ``await``
#: (GET_AWAITABLE, SEND, YIELD_VALUE), ``async with`` and ``async for``.
_SUSPENDING_OPS: Final = frozenset(
    {
        "GET_AWAITABLE",
        "SEND",
        "YIELD_VALUE",
        "BEFORE_ASYNC_WITH",
        "GET_AITER",
        "GET_ANEXT",
        "END_ASYNC_FOR",
        "ASYNC_GEN_WRAP",
    }
)


#: Whether this Python's bytecode is the one the check knows: without ``YIELD_VALUE`` (a
#: future CPython that renamed its opcodes) every action is taken to suspend (fail closed).
def _opcodes_known(opmap: Mapping[str, int]) -> bool:
    return "YIELD_VALUE" in opmap and "GET_AWAITABLE" in opmap


def never_suspends(fn: Any, *, opmap: Mapping[str, int] = dis.opmap) -> bool:
    """True if ``fn`` is an ``async def`` function whose own body contains no ``await``,
    ``async with`` or ``async for``: a call then runs to completion in one step, so running
    it inline is indistinguishable from running it in a task of its own (it could not
    interleave with anything, and no cancellation or timeout could reach it before it
    returns). A function that awaits anything, even a call that would not suspend, is not
    taken: only the body's bytecode is read. On a Python whose opcodes the check does not
    know (``opmap``, default :data:`dis.opmap`, lacks ``YIELD_VALUE``) it says False for
    every function."""
    if not _opcodes_known(opmap):
        return False
    code = getattr(fn, "__code__", None)
    if code is None or not code.co_flags & inspect.CO_COROUTINE:
        return False
    return not any(op.opname in _SUSPENDING_OPS for op in dis.get_instructions(code))


def definition_of(cls: type[Actor]) -> ActorDefinition:
    """Check ``cls`` and build its definition; raise :class:`DefinitionError` on a mistake."""
    if not (isinstance(cls, type) and issubclass(cls, Actor)):
        raise DefinitionError(f"{cls!r} is not a subclass of actorcore.Actor")
    name = cls.__dict__.get("name") or cls.__name__.lower()
    if not isinstance(name, str) or not _NAME_RE.match(name) or name == "by-id":
        raise DefinitionError(
            f"{cls.__qualname__}.name={name!r} is not a valid route name "
            "(1-128 of A-Z a-z 0-9 _ . ~ -, and not 'by-id')"
        )
    options = cls.options
    if not isinstance(options, ActorOptions):
        raise DefinitionError(f"{cls.__qualname__}.options must be an actorcore.ActorOptions")
    for hook in ASYNC_HOOKS:
        fn = getattr(cls, hook)
        if not inspect.iscoroutinefunction(fn):
            raise DefinitionError(f"{cls.__qualname__}.{hook} must be async def")
    actions: dict[str, Callable[..., Awaitable[Any]]] = {}
    for klass in reversed(cls.__mro__):
        for attr_name, value in vars(klass).items():
            if getattr(value, _ACTION_MARK, False):
                actions[attr_name] = value
            elif attr_name in actions:
                # A subclass overrode an action with a plain attribute: no longer an action.
                del actions[attr_name]
    clash = set(actions) & ({"create_state", "create_conn_state"} | set(ASYNC_HOOKS))
    if clash:
        raise DefinitionError(f"{cls.__qualname__}: hooks cannot be actions: {sorted(clash)}")
    # A serial actor's actions take a turn each: none may run inline, past the turn order.
    inline = {
        name: fn.__code__
        for name, fn in actions.items()
        if not options.serial and never_suspends(fn)
    }
    return ActorDefinition(
        cls=cls,
        name=name,
        options=options,
        actions=actions,
        create_state_is_async=inspect.iscoroutinefunction(cls.create_state),
        inline_actions=frozenset(inline),
        inline_code=inline,
    )
