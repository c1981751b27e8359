"""Which living tasks run actorcore code, and which of them are actor work, derived from the
code: the functions actorcore starts as tasks (``start_soon``, ``start``, ``spawn``) in the
modules that run actors. A task's top frame is the function it was started with, so the
living tasks are matched by their coroutine's qualified name.
"""

from __future__ import annotations

import ast
import os
from typing import Final

import trio

import actorcore

ACTORCORE_DIR: Final = os.path.dirname(actorcore.__file__) + os.sep

#: The modules whose tasks are actor work (generations, hooks, background work, saves,
#: actions, buffered deliveries, alarms).
ACTOR_MODULES: Final = (
    "host.py",
    "generation.py",
    "alarms.py",
    os.path.join("ws", "dispatch.py"),
)

#: Started there, but not actor work: the registry's own lifetime (``run`` sets "stopped" as
#: its last step, and the store task is cancelled just before it), and a connection's writer,
#: whose close handshake belongs to the server and may outlive the registry by close_timeout.
NOT_ACTOR_WORK: Final = frozenset(
    {"RegistryHost.run", "RegistryHost._run_store", "_ConnHandler._write"}
)

#: Wrappers that run another task function (the first argument after the wrapper): a task
#: started through one is identified by the function it wraps.
WRAPPERS: Final = frozenset({"_ConnHandler._guarded"})


def spawned_functions() -> frozenset[str]:
    """``Class.method`` of every ``self.method`` that the actor modules start as a task."""
    names: set[str] = set()
    for module in ACTOR_MODULES:
        with open(os.path.join(ACTORCORE_DIR, module), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
            for call in (node for node in ast.walk(cls) if isinstance(node, ast.Call)):
                func = call.func
                if not (
                    isinstance(func, ast.Attribute)
                    and func.attr in ("start_soon", "start", "spawn", "_spawn")
                    and call.args
                ):
                    continue
                for target in call.args[:2]:
                    if (
                        isinstance(target, ast.Attribute)
                        and isinstance(target.value, ast.Name)
                        and target.value.id == "self"
                    ):
                        name = f"{cls.name}.{target.attr}"
                        names.add(name)
                        if name not in WRAPPERS:
                            break  # the second argument is a task function only after one
                    else:
                        break
    return frozenset(names - WRAPPERS)


ACTOR_WORK: Final = spawned_functions() - NOT_ACTOR_WORK


def _living_tasks() -> list[trio.lowlevel.Task]:
    """Every living task, from the root down."""
    found: list[trio.lowlevel.Task] = []
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


def actorcore_tasks() -> list[str]:
    """Qualified names of the living tasks whose top frame is actorcore code."""
    found: list[str] = []
    for task in _living_tasks():
        code = getattr(task.coro, "cr_code", None)
        if code is not None and code.co_filename.startswith(ACTORCORE_DIR):
            found.append(code.co_qualname)
    return found


def _frames(coro: object) -> list[tuple[str, int]]:
    """The actorcore frames a coroutine is suspended in, outermost first."""
    frames: list[tuple[str, int]] = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None and frame.f_code.co_filename.startswith(ACTORCORE_DIR):
            frames.append((frame.f_code.co_qualname, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def actor_work() -> list[str]:
    """The living tasks that are actor work, each with where it is suspended."""
    found: list[str] = []
    for task in _living_tasks():
        frames = _frames(task.coro)
        if not frames:
            continue
        name = frames[0][0]
        if name in WRAPPERS and len(frames) > 1:
            name = frames[1][0]  # what the wrapper runs
        if name in ACTOR_WORK:
            where = " > ".join(f"{qualname}:{line}" for qualname, line in frames)
            found.append(f"{name} (at {where})")
    return found
