"""``python -m actorcore``: the same command line as the ``actorcore`` script."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
