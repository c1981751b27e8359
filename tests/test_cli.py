"""The ``actorcore`` command line: loading MODULE:REGISTRY, serving, draining on SIGTERM."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import pytest
import trio
import trustme
from trio_websocket import ConnectionClosed, WebSocketConnection

import actorcore
from actorcore import cli
from actorcore.store import open_store

from ._clients import tcp_websocket

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


# ---------------------------------------------------------------- helpers


class Server:
    """A ``python -m actorcore serve`` subprocess and its output."""

    def __init__(self, proc: trio.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.port = 0
        self.listening_line = ""
        self.rest = ""
        """What the server printed after its listening line (read so far)."""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_listening(self) -> None:
        assert self.proc.stdout is not None
        buffer = b""
        with trio.fail_after(10):
            while b"\n" not in buffer:
                chunk = await self.proc.stdout.receive_some()
                assert chunk, f"server exited before listening:\n{self.stderr()}"
                buffer += chunk
        self.listening_line, self.rest = (part.decode() for part in buffer.split(b"\n", 1))
        assert self.listening_line.startswith("actorcore: serving "), self.listening_line
        address = self.listening_line.split("://", 1)[1].split(" ", 1)[0]
        self.port = int(address.rsplit(":", 1)[1])
        assert self.port > 0

    async def wait_stdout(self, text: str) -> None:
        """Read the server's output until ``text`` appears in what followed the listening
        line (bounded)."""
        assert self.proc.stdout is not None
        with trio.fail_after(10):
            while text not in self.rest:
                chunk = await self.proc.stdout.receive_some()
                assert chunk, f"server exited:\n{self.stderr()}"
                self.rest += chunk.decode()

    async def wait_stderr(self, text: str) -> None:
        with trio.fail_after(10):
            while text not in self.stderr():  # noqa: ASYNC110 - another process writes it
                await trio.sleep(0.02)

    async def exit_code(self) -> int:
        with trio.fail_after(10):
            return await self.proc.wait()


@asynccontextmanager
async def serve(tmp_path: Path, *args: str, cwd: Path = ROOT) -> AsyncIterator[Server]:
    stderr_path = tmp_path / "server.log"
    stderr: IO[bytes]
    with stderr_path.open("wb") as stderr:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "actorcore", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
        )
        try:
            yield Server(proc, stderr_path)
        finally:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
                if proc.stdout is not None:
                    await proc.stdout.aclose()


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(5):
        frame: dict[str, Any] = json.loads(await ws.get_message())
    return frame


async def call(ws: WebSocketConnection, action_id: int, name: str, *args: Any) -> Any:
    await ws.send_message(
        json.dumps({"type": "action", "id": action_id, "name": name, "args": list(args)})
    )
    while True:
        frame = await receive(ws)
        if frame.get("id") == action_id:
            assert frame["type"] == "action_result", frame
            return frame["output"]


# ---------------------------------------------------------------- serving


async def test_serve_chat_drains_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    async with serve(tmp_path, "examples.chat:registry", "--port", "0", "--store", str(db)) as srv:
        await srv.wait_listening()
        assert srv.listening_line == (
            f"actorcore: serving examples.chat:registry on ws://127.0.0.1:{srv.port} (store: {db})"
        )
        params = quote(json.dumps({"nick": "ann"}))
        async with tcp_websocket(srv.port, f"/actors/chat/room/connect?params={params}") as ws:
            init = await receive(ws)
            assert init["type"] == "init"
            await ws.send_message(json.dumps({"type": "subscribe", "event": "message"}))
            output = await call(ws, 1, "send_message", "hello")
            assert output["nick"] == "ann"
            assert output["text"] == "hello"

            srv.proc.send_signal(signal.SIGTERM)
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()  # the "message" event, then the close
            assert closed.value.reason is not None
            assert closed.value.reason.code == 1012
            assert closed.value.reason.reason == "runtime.shutdown"
        assert await srv.exit_code() == 0, srv.stderr()

    log = srv.stderr()
    assert "actorcore.lifecycle" in log
    assert "started -> sleep_grace (drain)" in log
    assert "-> asleep" in log
    async with open_store(actorcore.SQLiteStore(db)) as store:
        record = await store.get_by_key("chat", "room")
    assert record is not None and record.state is not None
    messages = json.loads(record.state)["messages"]
    assert [(m["nick"], m["text"]) for m in messages] == [("ann", "hello")]


MODULE = """
import trio
import actorcore

class Slow(actorcore.Actor):
    options = actorcore.ActorOptions(sleep_grace_period=30.0)

    @actorcore.action
    async def ping(self, ctx):
        return "pong"

    async def on_sleep(self, ctx):
        await trio.sleep(30)

registry = actorcore.Registry([Slow])

def make_registry():
    return registry
"""


async def test_second_signal_exits_without_draining(tmp_path: Path) -> None:
    (tmp_path / "slowapp.py").write_text(textwrap.dedent(MODULE))
    async with serve(
        tmp_path, "slowapp:make_registry", "--port", "0", "--store", ":memory:", cwd=tmp_path
    ) as srv:
        await srv.wait_listening()
        assert srv.listening_line.endswith("(store: :memory:)")
        async with tcp_websocket(srv.port, "/actors/slow/a/connect") as ws:
            await receive(ws)
            assert await call(ws, 1, "ping") == "pong"
            srv.proc.send_signal(signal.SIGINT)
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason is not None
            assert closed.value.reason.code == 1012
        await srv.wait_stderr("sleep_grace (drain)")  # on_sleep now holds the drain up
        srv.proc.send_signal(signal.SIGTERM)
        assert await srv.exit_code() == 128 + signal.SIGTERM
    assert "SIGTERM again: exiting without draining" in srv.stderr()


# ---------------------------------------------------------------- usage


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    assert "serve" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in ("MODULE:REGISTRY", "--host", "--port", "--store", "--log-level"):
        assert flag in out


@pytest.mark.parametrize("flag", ["--http-request-timeout", "--http-keepalive-timeout"])
def test_a_zero_http_timeout_is_a_usage_error(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "examples.chat:registry", flag, "0"])
    assert exited.value.code == 2
    assert "must be a finite number > 0" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("examples.chat", "expected MODULE:REGISTRY"),
        ("no_such_module_xyz:registry", "could not import module 'no_such_module_xyz'"),
        ("examples.nope:registry", "no module named 'examples.nope'"),
        ("examples.chat:nope", "module 'examples.chat' has no attribute 'nope'"),
        ("examples.chat:HISTORY", "is a int, not an actorcore.Registry"),
        ("examples.chat:ChatRoom", "returned a ChatRoom, not an actorcore.Registry"),
    ],
)
def test_bad_target(
    target: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["serve", target]) == 2
    err = capsys.readouterr().err
    assert "usage: actorcore serve" in err
    assert "actorcore: error: " in err
    assert message in err, err


def test_bad_target_exit_code_from_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "actorcore", "serve", "no_such_module_xyz:registry"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "actorcore: error: could not import module 'no_such_module_xyz'" in result.stderr
    assert "Traceback" not in result.stderr


def test_factory_and_store_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "factoryapp.py").write_text(
        textwrap.dedent(
            """
            import actorcore

            class A(actorcore.Actor):
                pass

            def make():
                return actorcore.Registry([A])

            own = actorcore.Registry([A], actorcore.SQLiteStore("own.db"))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    registry = cli.load_registry("factoryapp:make")
    assert isinstance(registry, actorcore.Registry)
    assert "a" in registry.definitions
    # Built without a store: the default SQLite file, unless --store says otherwise.
    store, desc = cli._choose_store(registry, None)
    assert isinstance(store, actorcore.SQLiteStore) and desc == cli.DEFAULT_STORE
    store, desc = cli._choose_store(registry, ":memory:")
    assert isinstance(store, actorcore.MemoryStore) and desc == ":memory:"
    # A store the module chose is kept unless --store is given.
    own = cli.load_registry("factoryapp:own")
    assert cli._choose_store(own, None) == (None, "SQLiteStore set by the module")
    store, desc = cli._choose_store(own, "other.db")
    assert isinstance(store, actorcore.SQLiteStore) and desc == "other.db"


def test_module_that_raises_shows_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "brokenapp.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["serve", "brokenapp:registry"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "importing module 'brokenapp' failed" in err


# ---------------------------------------------------------------- the README


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    fence = f"```{language}\n"
    return [part.split("```", 1)[0] for part in text.split(fence)[1:]]


def test_readme_counter_is_the_example_and_runs_as_written(tmp_path: Path) -> None:
    counter = readme_blocks("python")[0]
    example = (ROOT / "examples" / "counter.py").read_text()
    assert example.endswith(counter), "README's counter and examples/counter.py differ"
    (tmp_path / "counter.py").write_text(counter)
    result = subprocess.run(
        [sys.executable, "counter.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\n6\n6\n"


def test_readme_commands_match_ci() -> None:
    commands = readme_blocks("sh")[0]
    assert "pip install -e . && actorcore serve examples.chat:registry" in commands
    assert "pip install -e '.[test]' && python -m pytest -q" in commands
    assert "\npython -m pytest -q\n" in (ROOT / ".ci" / "run").read_text()


async def test_readme_protocol_client_talks_to_the_served_counter(tmp_path: Path) -> None:
    client = next(b for b in readme_blocks("python") if "open_websocket_url" in b)
    async with serve(
        tmp_path, "examples.counter:registry", "--port", "0", "--store", ":memory:"
    ) as srv:
        await srv.wait_listening()
        (tmp_path / "client.py").write_text(client.replace(":8080/", f":{srv.port}/"))
        with trio.fail_after(20):
            result = await trio.run_process(
                [sys.executable, "client.py"], cwd=tmp_path, capture_stdout=True, check=False
            )
        srv.proc.send_signal(signal.SIGTERM)
        assert await srv.exit_code() == 0, srv.stderr()
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 0, lines
    assert "'type': 'init'" in lines[0]
    assert sorted(lines[1:]) == sorted(
        [
            "{'type': 'event', 'name': 'changed', 'args': [2]}",
            "{'type': 'action_result', 'id': 1, 'output': 2}",
        ]
    )


@pytest.mark.parametrize("argv", [["serve", "--version"], ["--version"]])
def test_version_is_printed_by_a_real_process(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "actorcore", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"actorcore {actorcore.__version__}"


async def test_limits_and_origins_from_the_command_line(tmp_path: Path) -> None:
    async with serve(
        tmp_path,
        "examples.echo:registry",
        "--port",
        "0",
        "--store",
        ":memory:",
        "--max-connections-per-client",
        "1",
        "--allow-origin",
        "https://app.example",
        "--ping-interval",
        "0.2",
        "--ping-timeout",
        "0.2",
    ) as server:
        await server.wait_listening()
        async with tcp_websocket(server.port, "/actors/echo/a/ws") as first:
            await first.send_message("hi")
            with trio.fail_after(5):
                assert await first.get_message() == "hi"
            async with tcp_websocket(server.port, "/actors/echo/a/ws") as second:
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):
                    await second.get_message()
                assert closed.value.reason is not None
                assert (closed.value.reason.code, closed.value.reason.reason) == (
                    1013,
                    "actor.overloaded",
                )
            # Pings every 0.2 s are answered by the client: still connected after several.
            await trio.sleep(1.0)
            await first.send_message("still")
            with trio.fail_after(5):
                assert await first.get_message() == "still"
        # (Another address: 127.0.0.1 may still be closing its last one.)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port, local_address="127.0.0.2")
        async with stream:
            await stream.send_all(
                b"GET /actors/echo/b/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n"
            )
            data = b""
            with trio.fail_after(5):
                while b"auth.forbidden" not in data:
                    chunk = await stream.receive_some()
                    assert chunk, data
                    data += chunk
        server.proc.send_signal(signal.SIGTERM)
        assert await server.exit_code() == 0


async def test_wss_from_the_command_line(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "chain.pem"))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with serve(
        tmp_path,
        "examples.counter:registry",
        "--port",
        "0",
        "--store",
        ":memory:",
        "--certfile",
        str(tmp_path / "chain.pem"),
        "--keyfile",
        str(tmp_path / "key.pem"),
    ) as server:
        await server.wait_listening()
        assert " on wss://" in server.listening_line
        url = f"wss://127.0.0.1:{server.port}"
        async with actorcore.connect(url, "counter", "tls", ssl_context=client_context) as actor:
            assert await actor.call("increment") == 1
        server.proc.send_signal(signal.SIGTERM)
        assert await server.exit_code() == 0


def test_certfile_without_keyfile_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "examples.counter:registry", "--certfile", "x.pem"]) == 2
    assert "--certfile and --keyfile go together" in capsys.readouterr().err


@pytest.mark.parametrize(
    "urls", ["127.0.0.1:6420", "http://127.0.0.1:6420,ws://127.0.0.1:6421", ",", " "]
)
def test_engine_urls_must_be_http(urls: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "examples.counter:registry", "--engine", urls]) == 2
    assert "--engine must be http:// URLs" in capsys.readouterr().err


def test_the_server_defaults_are_stated_once() -> None:
    """``Registry.serve`` spells out each server option for its users; its defaults must be
    those of ``ServerOptions`` (which the CLI takes its defaults from)."""
    import inspect

    from actorcore.ws.server import ServerOptions

    defaults = ServerOptions()
    parameters = inspect.signature(actorcore.Registry.serve).parameters
    for field in attrs_fields(ServerOptions):
        assert parameters[field].default == getattr(defaults, field), field
    args = cli._parser().parse_args(["serve", "x:y"])
    assert args.max_connections_per_client == defaults.max_connections_per_client
    assert args.ping_interval == defaults.ping_interval


def attrs_fields(cls: type) -> list[str]:
    import attrs

    return [f.name for f in attrs.fields(cls)]
