"""actorcore: stateful actors on trio.

Actors are plain Python classes; a :class:`Registry` runs them through an explicit lifecycle
(:mod:`actorcore.lifecycle`), persists their state in a :class:`Store`, and serves them over
WebSockets. This module only re-exports the public names.
"""

from __future__ import annotations

from .actor import Actor as Actor
from .actor import ActorDefinition as ActorDefinition
from .actor import action as action
from .alarms import AlarmStatistics as AlarmStatistics
from .authority import LifecycleAuthority as LifecycleAuthority
from .authority import LifecycleCommands as LifecycleCommands
from .authority import LifecycleRequest as LifecycleRequest
from .authority import LocalAuthority as LocalAuthority
from .client import ActorConnection as ActorConnection
from .client import ActorEvent as ActorEvent
from .client import CallTimeout as CallTimeout
from .client import ClientOptions as ClientOptions
from .client import ConnectionLost as ConnectionLost
from .client import Gateway as Gateway
from .client import RemoteError as RemoteError
from .client import connect as connect
from .conn import Conn as Conn
from .conn import ConnKind as ConnKind
from .context import ActorContext as ActorContext
from .errors import ActionNotFound as ActionNotFound
from .errors import ActionTimeout as ActionTimeout
from .errors import ActorDestroyed as ActorDestroyed
from .errors import ActorError as ActorError
from .errors import ActorNotFound as ActorNotFound
from .errors import ActorOverloaded as ActorOverloaded
from .errors import ActorReadyTimeout as ActorReadyTimeout
from .errors import ActorStartFailed as ActorStartFailed
from .errors import ActorStopping as ActorStopping
from .errors import DefinitionError as DefinitionError
from .errors import Forbidden as Forbidden
from .errors import InternalError as InternalError
from .errors import InvalidMessage as InvalidMessage
from .errors import LifecycleError as LifecycleError
from .errors import MessageTooLarge as MessageTooLarge
from .errors import ResumeRefused as ResumeRefused
from .errors import RuntimeShutdown as RuntimeShutdown
from .errors import SaveTimeout as SaveTimeout
from .errors import ScheduleError as ScheduleError
from .errors import ScheduleLimit as ScheduleLimit
from .errors import StaleGeneration as StaleGeneration
from .errors import StateError as StateError
from .errors import StoreError as StoreError
from .errors import SubscriptionLimit as SubscriptionLimit
from .errors import UserError as UserError
from .http.request import Request as Request
from .http.request import Response as Response
from .lifecycle import Admission as Admission
from .lifecycle import LifecycleEvent as LifecycleEvent
from .lifecycle import LifecycleState as LifecycleState
from .lifecycle import WorkKind as WorkKind
from .lifecycle import admit as admit
from .lookup import ActorLookup as ActorLookup
from .options import ActorOptions as ActorOptions
from .ratelimit import CreateRate as CreateRate
from .registry import ActorHandle as ActorHandle
from .registry import Registry as Registry
from .registry import RegistryStatistics as RegistryStatistics
from .request import ClientAddress as ClientAddress
from .request import ConnectRequest as ConnectRequest
from .schedule import Alarm as Alarm
from .schedule import Schedule as Schedule
from .store import ActorRecord as ActorRecord
from .store import AlarmRecord as AlarmRecord
from .store import MemoryStore as MemoryStore
from .store import SQLiteStore as SQLiteStore
from .store import Store as Store
from .store import StoreStatistics as StoreStatistics
from .ws.dispatch import Dispatcher as Dispatcher

__all__ = [
    "ActionNotFound",
    "ActionTimeout",
    "Actor",
    "ActorConnection",
    "ActorContext",
    "ActorDefinition",
    "ActorDestroyed",
    "ActorError",
    "ActorEvent",
    "ActorHandle",
    "ActorLookup",
    "ActorNotFound",
    "ActorOptions",
    "ActorOverloaded",
    "ActorReadyTimeout",
    "ActorRecord",
    "ActorStartFailed",
    "ActorStopping",
    "Admission",
    "Alarm",
    "AlarmRecord",
    "AlarmStatistics",
    "CallTimeout",
    "ClientAddress",
    "ClientOptions",
    "Conn",
    "ConnKind",
    "ConnectRequest",
    "ConnectionLost",
    "CreateRate",
    "DefinitionError",
    "Dispatcher",
    "Forbidden",
    "Gateway",
    "InternalError",
    "InvalidMessage",
    "LifecycleAuthority",
    "LifecycleCommands",
    "LifecycleError",
    "LifecycleEvent",
    "LifecycleRequest",
    "LifecycleState",
    "LocalAuthority",
    "MemoryStore",
    "MessageTooLarge",
    "Registry",
    "RegistryStatistics",
    "RemoteError",
    "Request",
    "Response",
    "ResumeRefused",
    "RuntimeShutdown",
    "SQLiteStore",
    "SaveTimeout",
    "Schedule",
    "ScheduleError",
    "ScheduleLimit",
    "StaleGeneration",
    "StateError",
    "Store",
    "StoreError",
    "StoreStatistics",
    "SubscriptionLimit",
    "UserError",
    "WorkKind",
    "__version__",
    "action",
    "admit",
    "connect",
]

__version__ = "0.1.0"
