"""Where Sprout needs a dependency's internals: one module per dependency, checked against the versions it was written for.

Each module here wraps the private names of one package (``sprout.compat.torch``, ``.lightning``,
``.jsonargparse``, ``.litdata``) and calls ``require`` when it is imported: on a version
outside the range it was written and tested for, the run stops with the package, the version
found, the range expected and what the patch does, instead of patching something that has
changed. The ranges are those of ``pyproject.toml``; widening one means re-reading the patch
against the new version's source and running the tests.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

from sprout.errors import SproutError


def _release(text: str) -> tuple[int, ...]:
    """``2.14.1+cu128`` -> ``(2, 14, 1)``."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def require(package: str, at_least: str, below: str, why: str) -> str:
    """The installed version of ``package``, if ``at_least <= version < below``; else a ``SproutError``."""
    try:
        found = version(package)
    except PackageNotFoundError:
        found = "none"
    if not _release(at_least) <= _release(found) < _release(below):
        raise SproutError(
            f"Sprout needs {package} >={at_least},<{below}, found {found}: {why}, which that range was written "
            f"and tested for. Install a version in the range (pip install '{package}>={at_least},<{below}'), "
            "or the version pyproject.toml pins."
        )
    return found
