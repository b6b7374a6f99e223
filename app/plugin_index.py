"""The registered plugins, listed without importing them: entry points, and each class's docstring read with ``ast``.

``sprout plugins`` should answer at once, but importing a plugin imports torch (and its package
may import Lightning): seconds. The entry-point metadata names each plugin's module and class;
``importlib.util.find_spec`` finds the module's source without running it, and the class's
docstring there gives the description (its first line). The docstring stays the one place where
a plugin says what it does, as ``--help`` and the recipe reference show it, so no second
description has to be kept in step with the code. What only running a module reveals (an import
that fails, a class that does not implement its protocol) is what ``sprout plugins --check``
adds: it loads every plugin as a run does.

Imports nothing outside the standard library, on purpose.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "sprout.plugins"


@dataclass(frozen=True)
class Listed:
    kind: str
    name: str
    package: str  # the distribution that declared it
    target: str  # "module:Class" as written in the entry point
    description: str  # first line of the class docstring
    problem: str | None = None  # why it cannot be used, as far as reading its source tells


def listed() -> list[Listed]:
    """Every entry point of ``sprout.plugins``, sorted by kind and name."""
    rows = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kind, _, name = ep.name.partition(".")
        package = ep.dist.name if ep.dist is not None else "unknown package"
        description, problem = _read_class_doc(ep.value)
        rows.append(Listed(kind, name, package, ep.value, description, problem))
    return sorted(rows, key=lambda r: (r.kind, r.name))


def _read_class_doc(target: str) -> tuple[str, str | None]:
    """(description, problem) of ``module:Class`` from the module's source, without running it."""
    module, _, attr = target.partition(":")
    try:
        spec = importlib.util.find_spec(module)  # runs the parent packages' __init__, not the module
    except (ImportError, ValueError) as err:
        return "", f"cannot find module {module} ({type(err).__name__}: {err})"
    if spec is None:
        return "", f"module {module} is not installed"
    if not spec.origin or not spec.origin.endswith(".py"):
        return "", None  # compiled or namespace module: only importing it could tell
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as err:
        return "", f"cannot read {spec.origin} ({type(err).__name__}: {err})"
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == attr:
            doc = ast.get_docstring(node)
            return (doc.strip().splitlines()[0] if doc else ""), None
    return "", None  # imported into the module from elsewhere: only importing it could tell


def table(rows: list[tuple[str, str, str, str]]) -> str:
    """KIND, NAME, PACKAGE and DESCRIPTION columns."""
    header = ("KIND", "NAME", "PACKAGE", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in [header, *rows])
