"""Where the pinned Rivet engine and its npm codec are (installed by ``.ci/install-engine``).

Tests that need them skip when they are missing, unless ``ACTORCORE_REQUIRE_ENGINE=1`` (set
by ``.ci/run``), where a missing engine is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ENGINE_VERSION = "2.3.19"

_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
INSTALL_DIR = Path(
    os.environ.get("ACTORCORE_ENGINE_DIR", _CACHE / "actorcore" / f"engine-{ENGINE_VERSION}")
)


def _require(what: str) -> None:
    message = f"{what} is not installed (run .ci/install-engine)"
    if os.environ.get("ACTORCORE_REQUIRE_ENGINE") == "1":
        pytest.fail(message)
    pytest.skip(message)


def envoy_protocol_js() -> Path:
    """The npm codec's ``dist/index.js`` (skips or fails the test if it is missing)."""
    path = Path(
        os.environ.get(
            "ACTORCORE_ENVOY_PROTOCOL_JS",
            INSTALL_DIR / "node_modules/@rivetkit/engine-envoy-protocol/dist/index.js",
        )
    )
    if not path.is_file() or shutil.which("node") is None:
        _require("the npm envoy codec (or node)")
    return path


def engine_binary() -> Path:
    """The ``rivet-engine`` binary (skips or fails the test if it is missing)."""
    path = Path(
        os.environ.get(
            "ACTORCORE_RIVET_ENGINE",
            INSTALL_DIR / "node_modules/@rivetkit/engine-cli-linux-x64-musl/rivet-engine",
        )
    )
    if not path.is_file():
        _require("the Rivet engine")
    return path
