"""The ``actorcore`` command line: ``actorcore serve MODULE:REGISTRY``.

``MODULE:REGISTRY`` names a module-level :class:`~actorcore.Registry` (or a zero-argument
factory returning one), imported with the current directory first on ``sys.path``. The
registry is served over WebSockets until SIGINT (Ctrl-C) or SIGTERM; the first signal drains
(connections get 1012 ``runtime.shutdown``, awake actors sleep with their state saved), a
second one exits at once without draining.

Store: ``--store PATH`` picks an SQLite file (``:memory:`` for an in-process store). Without
it, a registry the module built with a store of its own keeps it; otherwise actors persist in
``./actorcore.db``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import logging
import os
import signal
import ssl
import sys
import traceback
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import trio

from .errors import ActorError, StoreError
from .registry import Registry
from .store import MemoryStore, SQLiteStore, Store
from .ws.server import ServerOptions

__all__ = ["DEFAULT_STORE", "LoadError", "load_registry", "main"]

log = logging.getLogger("actorcore.cli")

DEFAULT_STORE: Final = "./actorcore.db"
"""The SQLite file used when neither ``--store`` nor the module chose a store."""

MEMORY: Final = ":memory:"

LOG_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2


class LoadError(Exception):
    """``MODULE:REGISTRY`` could not be resolved to a Registry (the message says why)."""


# ---------------------------------------------------------------- arguments


#: The server's defaults, from one place (the CLI shows and passes the same values).
_SERVER_DEFAULTS: Final = ServerOptions()


def _version() -> str:
    """The installed distribution's version (the package's own if it is not installed)."""
    try:
        return importlib.metadata.version("actorcore")
    except importlib.metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actorcore",
        description="Stateful actors on trio, served over WebSockets.",
    )
    version = f"actorcore {_version()}"
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a registry over WebSockets",
        description=(
            "Serve the actors of a Registry over WebSockets until Ctrl-C or SIGTERM. "
            "The first signal drains (connections close with 1012, actors sleep with their "
            "state saved); a second one exits at once."
        ),
    )
    serve.add_argument("--version", action="version", version=version)
    serve.add_argument(
        "target",
        metavar="MODULE:REGISTRY",
        help="a module-level Registry (or zero-argument factory), e.g. examples.chat:registry",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port to bind, 0 for any free one (default %(default)s)",
    )
    serve.add_argument(
        "--store",
        metavar="PATH",
        default=None,
        help=(
            f"SQLite file actors persist in, or {MEMORY} for an in-process store "
            f"(default: the module's own store if it set one, else {DEFAULT_STORE})"
        ),
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default %(default)s)",
    )
    engine = serve.add_argument_group(
        "Rivet engine (docs/distribution.md): run as an envoy of an engine instead of listening"
    )
    engine.add_argument(
        "--engine",
        metavar="URL",
        default=None,
        help="the engine's URL, e.g. http://127.0.0.1:6420, or the URLs of several nodes of "
        "one engine cluster separated by commas (tried in turn); clients connect through its "
        "gateway",
    )
    engine.add_argument(
        "--status-port",
        type=int,
        default=None,
        metavar="PORT",
        help="with --engine: serve /healthz, /readyz and /metrics on --host:PORT (0 for any "
        "free one; default: none)",
    )
    engine.add_argument(
        "--namespace", default="default", help="engine namespace (default %(default)s)"
    )
    engine.add_argument(
        "--pool", default="default", help="engine pool this envoy serves (default %(default)s)"
    )
    engine.add_argument(
        "--token",
        default=os.environ.get("ACTORCORE_ENGINE_TOKEN"),
        help="the engine's admin token, if it has one (default: $ACTORCORE_ENGINE_TOKEN)",
    )
    limits = serve.add_argument_group("limits and timers (docs/security.md)")
    limits.add_argument(
        "--max-connections",
        type=_positive_int,
        default=_SERVER_DEFAULTS.max_connections,
        help="upgraded connections at once; more are refused with 1013 (default %(default)s)",
    )
    limits.add_argument(
        "--max-connections-per-client",
        type=_positive_int,
        default=_SERVER_DEFAULTS.max_connections_per_client,
        help="connections from one client address; more are refused with 1013 "
        "(default %(default)s)",
    )
    limits.add_argument(
        "--max-handshakes",
        type=_positive_int,
        default=_SERVER_DEFAULTS.max_handshakes,
        help="opening handshakes in progress at once (default %(default)s)",
    )
    limits.add_argument(
        "--ping-interval",
        type=_seconds,
        default=_SERVER_DEFAULTS.ping_interval,
        help="seconds between keepalive pings, 0 disables them (default %(default)s)",
    )
    limits.add_argument(
        "--ping-timeout",
        type=_seconds,
        default=_SERVER_DEFAULTS.ping_timeout,
        help="drop a peer silent this long after a ping, 0 never (default %(default)s)",
    )
    limits.add_argument(
        "--allow-origin",
        metavar="ORIGIN",
        action="append",
        default=None,
        help="a browser origin (scheme://host[:port]) allowed to connect; repeatable; * for "
        "any (default: same-origin browser requests only); applies through the engine's "
        "gateway too",
    )
    http = serve.add_argument_group("HTTP on the same port (docs/http.md)")
    http.add_argument(
        "--http-request-timeout",
        type=_positive_seconds,
        default=_SERVER_DEFAULTS.http_request_timeout,
        help="bound on one HTTP request, head to answer (default %(default)s)",
    )
    http.add_argument(
        "--http-keepalive-timeout",
        type=_positive_seconds,
        default=_SERVER_DEFAULTS.http_keepalive_timeout,
        help="close an HTTP connection idle this long between requests (default %(default)s)",
    )
    http.add_argument(
        "--http-max-requests",
        type=_positive_int,
        default=_SERVER_DEFAULTS.http_max_requests,
        help="requests answered on one HTTP connection (default %(default)s)",
    )
    http.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        help="do not serve GET /metrics (nothing is counted for it)",
    )
    http.add_argument(
        "--inspector",
        action="store_true",
        help="serve the live inspector at /inspector",
    )
    http.add_argument(
        "--inspector-token",
        metavar="TOKEN",
        default=os.environ.get("ACTORCORE_INSPECTOR_TOKEN") or None,
        help="token the inspector asks for (?token= or Authorization: Bearer); without one "
        "only loopback clients may use it (default: $ACTORCORE_INSPECTOR_TOKEN)",
    )
    tls = serve.add_argument_group("TLS (serve wss:// directly)")
    tls.add_argument("--certfile", metavar="PEM", help="server certificate chain (PEM)")
    tls.add_argument("--keyfile", metavar="PEM", help="private key of --certfile (PEM)")
    serve.set_defaults(run=_cmd_serve, subparser=serve)
    return parser


# ---------------------------------------------------------------- loading


def load_registry(target: str) -> Registry:
    """Import ``MODULE:ATTR`` (``ATTR`` may be dotted) and return the Registry it names.

    ``ATTR`` is a Registry or a zero-argument callable returning one. The current directory is
    put first on ``sys.path``, as ``python -m`` would. Raises :class:`LoadError`; an exception
    raised by the module's own code is chained as its ``__cause__``.
    """
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise LoadError(f"expected MODULE:REGISTRY (e.g. examples.chat:registry), got {target!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only a missing target module is a usage error; a missing dependency of it is a bug
        # in that module and keeps its traceback.
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise LoadError(
                f"could not import module {module_name!r} (from {cwd}): no module named {missing!r}"
            ) from None
        raise LoadError(f"importing module {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise LoadError(f"importing module {module_name!r} failed: {exc}") from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LoadError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if isinstance(obj, Registry):
        return obj
    if not callable(obj):
        raise LoadError(
            f"{target} is a {type(obj).__name__}, not an actorcore.Registry "
            "or a zero-argument factory returning one"
        )
    try:
        made = obj()
    except Exception as exc:
        raise LoadError(f"calling the factory {target}() failed: {exc}") from exc
    if not isinstance(made, Registry):
        raise LoadError(f"{target}() returned a {type(made).__name__}, not an actorcore.Registry")
    return made


def _choose_store(registry: Registry, store_arg: str | None) -> tuple[Store | None, str]:
    """The store to install (None: keep the registry's own) and how to describe it."""
    if store_arg is None:
        if not registry.store_is_default:
            return None, f"{type(registry.store).__name__} set by the module"
        store_arg = DEFAULT_STORE
    if store_arg == MEMORY:
        return MemoryStore(), MEMORY
    return SQLiteStore(store_arg), store_arg


# ---------------------------------------------------------------- serving


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bound_port(server: Any, requested: int) -> int:
    try:
        return int(server.port)
    except RuntimeError:  # several listeners (e.g. IPv4 and IPv6): report the first
        for listener in server.listeners:
            port = getattr(listener, "port", None)
            if isinstance(port, int):
                return port
        return requested


async def _watch_signals(signals: AsyncIterator[int], registry: Registry, target: str) -> None:
    """First SIGINT/SIGTERM: drain. Second: exit at once."""
    first = True
    async for signum in signals:
        name = signal.Signals(signum).name
        if first:
            first = False
            log.info("%s: draining %s (send it again to exit at once)", name, target)
            registry.request_shutdown()
        else:
            log.warning("%s again: exiting without draining", name)
            logging.shutdown()
            sys.stdout.flush()
            os._exit(128 + signum)


async def _serve(
    registry: Registry,
    target: str,
    host: str,
    port: int,
    store_desc: str,
    options: dict[str, Any],
) -> None:
    scheme = "wss" if options.get("ssl_context") is not None else "ws"
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as signal_nursery:
            signal_nursery.start_soon(_watch_signals, signals, registry, target)
            async with trio.open_nursery() as serve_nursery:
                server = await serve_nursery.start(
                    functools.partial(registry.serve, host, port, **options)
                )
                bound = _bound_port(server, port)
                print(
                    f"actorcore: serving {target} on {scheme}://{_url_host(host)}:{bound} "
                    f"(store: {store_desc})",
                    flush=True,
                )
                if options.get("inspector"):
                    web = "https" if scheme == "wss" else "http"
                    print(
                        f"actorcore: inspector at {web}://{_url_host(host)}:{bound}/inspector"
                        + (" (token required)" if options.get("inspector_token") else ""),
                        flush=True,
                    )
            # serve() returned: the registry drained and stopped.
            signal_nursery.cancel_scope.cancel()
    log.info("drained and stopped")


async def _serve_engine(
    registry: Registry,
    target: str,
    options: Any,
    host: str,
    status_port: int | None,
    allowed_origins: tuple[str, ...] | None,
) -> None:
    # Only engine mode needs the engine package.
    from .engine.runtime import EngineRuntime
    from .engine.status import serve_status

    runtime = EngineRuntime(registry, options, allowed_origins=allowed_origins)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as signal_nursery:
            signal_nursery.start_soon(_watch_signals, signals, registry, target)
            async with trio.open_nursery() as status_nursery:
                async with trio.open_nursery() as serve_nursery:
                    await serve_nursery.start(runtime.run)
                    status = ""
                    if status_port is not None:
                        bound = await status_nursery.start(serve_status, runtime, host, status_port)
                        status = f"; status on http://{_host_in_url(host)}:{bound}"
                    print(
                        f"actorcore: serving {target} as envoy {options.envoy_key} of "
                        f"{', '.join(options.urls)} (namespace {options.namespace}, "
                        f"pool {options.pool}; store: the engine{status})",
                        flush=True,
                    )
                status_nursery.cancel_scope.cancel()  # the registry stopped
            signal_nursery.cancel_scope.cancel()
    log.info("drained and stopped")


def _host_in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _serve_engine_command(registry: Registry, args: argparse.Namespace) -> int:
    from .engine.link import EnvoyOptions

    if args.store is not None:
        _error("--store does not apply with --engine (actors keep their state in the engine)")
        return EXIT_USAGE
    urls = [url.strip() for url in args.engine.split(",") if url.strip()]
    for url in urls or [args.engine]:
        if not url.startswith("http://"):
            _error(f"--engine must be http:// URLs, not {url!r}")
            return EXIT_USAGE
    options = EnvoyOptions(
        url=urls[0],
        fallback_urls=tuple(urls[1:]),
        namespace=args.namespace,
        pool=args.pool,
        token=args.token or None,
    )
    try:
        origins = tuple(args.allow_origin) if args.allow_origin is not None else None
        trio.run(
            _serve_engine, registry, args.target, options, args.host, args.status_port, origins
        )
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as group:
        error = _lone_error(group)
        _error(f"{type(error).__name__}: {error}")
        return EXIT_ERROR
    return EXIT_OK


def _lone_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _error(message: str) -> None:
    print(f"actorcore: error: {message}", file=sys.stderr, flush=True)


def _cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        registry = load_registry(args.target)
    except LoadError as exc:
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, ActorError):
            traceback.print_exception(cause, file=sys.stderr)
        parser.print_usage(sys.stderr)
        _error(str(exc))
        return EXIT_USAGE
    if registry.running:
        _error(f"{args.target} is already running")
        return EXIT_USAGE
    if (args.certfile is None) != (args.keyfile is None):
        parser.print_usage(sys.stderr)
        _error("--certfile and --keyfile go together")
        return EXIT_USAGE
    options: dict[str, Any] = {
        "max_connections": args.max_connections,
        "max_connections_per_client": args.max_connections_per_client,
        "max_handshakes": args.max_handshakes,
        "ping_interval": args.ping_interval,
        "ping_timeout": args.ping_timeout,
        "allowed_origins": args.allow_origin,
        "http_request_timeout": args.http_request_timeout,
        "http_keepalive_timeout": args.http_keepalive_timeout,
        "http_max_requests": args.http_max_requests,
        "metrics": args.metrics,
        "inspector": args.inspector,
        "inspector_token": args.inspector_token,
    }
    if args.certfile is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as exc:
            _error(f"could not load --certfile/--keyfile: {exc}")
            return EXIT_USAGE
        options["ssl_context"] = context
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    if args.engine is not None:
        return _serve_engine_command(registry, args)
    if args.status_port is not None:
        _error("--status-port applies with --engine only (the listener serves /healthz itself)")
        return EXIT_USAGE
    store, store_desc = _choose_store(registry, args.store)
    if store is not None:
        if not registry.store_is_default:
            log.warning(
                "--store %s replaces the %s set by %s",
                store_desc,
                type(registry.store).__name__,
                args.target,
            )
        registry.use_store(store)
    try:
        trio.run(_serve, registry, args.target, args.host, args.port, store_desc, options)
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        return 128 + signal.SIGINT
    except Exception as group:
        error = _lone_error(group)
        if isinstance(error, OSError):
            _error(f"could not listen on {args.host}:{args.port}: {error}")
        elif isinstance(error, StoreError):
            _error(f"store {store_desc}: {error}")
        elif isinstance(error, ActorError):
            _error(f"{type(error).__name__}: {error}")
        else:
            log.critical("the server crashed", exc_info=group)
        return EXIT_ERROR
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``argv`` defaults to ``sys.argv[1:]``); return the exit code.

    ``--help`` and argument errors exit through :class:`SystemExit` (codes 0 and 2), as
    argparse does.
    """
    args = _parser().parse_args(argv)
    code: int = args.run(args, args.subparser)
    return code
