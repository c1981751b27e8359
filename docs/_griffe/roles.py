"""A griffe extension for the API reference (``mkdocs.yml``): the docstrings of actorcore use
reST roles (``:class:`~actorcore.Registry```), which Markdown would show as written. Each
role becomes inline code of its target (the last component only after a ``~``, as Sphinx
shows it). The docstrings themselves are not changed; this runs when mkdocstrings loads them.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class RolesToCode(griffe.Extension):
    """Rewrite reST roles in every docstring to inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
