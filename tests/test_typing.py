"""The package is typed for its users (PEP 561): a user's module, checked by ``mypy --strict``
against the package **as installed from its wheel**, has no errors. Without ``py.typed`` that
check gave "Class cannot subclass 'Actor' (has type Any)" and "Untyped decorator" on every
``@action``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import actorcore

HERE = Path(__file__).parent
ROOT = HERE.parent


def test_public_names_are_listed_and_internal_modules_are_not() -> None:
    names = set(actorcore.__all__)
    assert {"Actor", "Registry", "ConnectRequest", "ClientAddress", "Forbidden"} <= names
    assert all(hasattr(actorcore, name) for name in names)
    assert not names & {"gcpause", "watchdog", "jsoncodec", "logfmt", "ratelimit"}


def test_a_users_module_passes_mypy_strict_against_the_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = wheels.glob("actorcore-*.whl")
    # A bare environment holding the wheel's files, and the project's dependencies through a
    # .pth file (not the checkout: the editable install's path is not followed from there).
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    assert (site / "actorcore" / "py.typed").is_file()
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "user"
    work.mkdir()
    shutil.copy(HERE / "typed" / "user_actors.py", work)
    shutil.copy(HERE / "typed" / "wrong_state.py", work)
    (work / "mypy.ini").write_text("[mypy]\n")  # not the project's own configuration

    def check(module: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "mypy",
                "--strict",
                "--no-incremental",
                "--config-file",
                "mypy.ini",
                "--python-executable",
                str(python),
                module,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=work,
        )

    result = check("user_actors.py")
    assert result.returncode == 0, result.stdout + result.stderr
    # Typed state is checked: the two misuses in wrong_state.py are both reported.
    wrong = check("wrong_state.py")
    expected = {
        i + 1
        for i, line in enumerate((work / "wrong_state.py").read_text().splitlines())
        if line.rstrip().endswith(("# error: a str is not an int", "# error: no such key"))
    }
    reported = {int(line.split(":")[1]) for line in wrong.stdout.splitlines() if ": error:" in line}
    assert len(expected) == 2 and reported == expected, wrong.stdout


async def test_a_typed_actor_runs_like_any_other(autojump_clock: object) -> None:
    from typing import Any, TypedDict

    from actorcore import ActorContext

    class WalletState(TypedDict):
        balance: int

    class Wallet(actorcore.Actor[WalletState]):
        async def create_state(self, ctx: ActorContext[WalletState], input: Any) -> WalletState:
            return {"balance": int(input)}

        @actorcore.action
        async def deposit(self, ctx: ActorContext[WalletState], amount: int) -> int:
            ctx.state["balance"] += amount
            return ctx.state["balance"]

    async with actorcore.Registry([Wallet]) as registry:
        wallet = await registry.get_or_create("wallet", "w", input=5)
        assert await wallet.call("deposit", 3) == 8
        assert actorcore.Actor[WalletState] is not actorcore.Actor  # a real generic alias
