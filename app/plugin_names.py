"""Registered plugin short names (``rho1``, ``entropy``, ``gstack``) wherever jsonargparse takes a class path.

jsonargparse turns a value without a dot into a class path in exactly one place,
``resolve_class_path_by_name(base_type, name)``: for a recipe's ``class_path: rho1``, for
``--model.selector rho1``, ``--model.selector.class_path rho1``, ``--model.selector.help rho1``
and for defaults. It knows the type the option expects, so it tells which plugin kind a
name belongs to: a name registered under two kinds is not ambiguous here. On its own it only
matches the class names of subclasses already imported (``Rho1``), and it has no public hook;
``install`` wraps it (through ``sprout.compat.jsonargparse``, checked against the jsonargparse
versions it was written for) so that a registered name of the expected kind comes first and an unknown
name fails with the registered ones listed. Rewriting the YAML or ``argv`` instead would need
to know each option's type from the outside and would miss the paths the parser takes inside
(help, defaults, values nested in a ``--model '{...}'`` string).
"""

from __future__ import annotations

import functools
import warnings

from sprout import registry
from sprout.compat.jsonargparse import wrap_class_path_resolution
from sprout.protocols import KINDS

# Module paths from before Sprout's modules were installed as one ``sprout`` package (issue 26).
RENAMED = (("app.", "sprout."), ("plugins.", "sprout.plugins."))


def current_path(name: str) -> str:
    """``name`` with a module path from before the rename replaced by today's, said in a warning."""
    for old, new in RENAMED:
        if name.startswith(old):
            path = new + name[len(old) :]
            warnings.warn(
                f"class_path {name} is now {path}: write that in the recipe (Sprout's modules are the package `sprout`).",
                FutureWarning,
                stacklevel=2,
            )
            return path
    return name


def plugin_kind(base: type | tuple) -> str | None:
    """The plugin kind whose protocol the option's type is (or derives from), if any."""
    for cls in base if isinstance(base, tuple) else (base,):
        for kind, protocol in KINDS.items():
            if isinstance(cls, type) and issubclass(cls, protocol):
                return kind
    return None


def resolver(jsonargparse_resolve):
    """``jsonargparse_resolve`` with registered short names first, for plugin-typed options."""

    @functools.wraps(jsonargparse_resolve)
    def resolve_class_path_by_name(base, name: str) -> str:
        name = current_path(name)
        kind = plugin_kind(base)
        if kind is None or "." in name:
            return jsonargparse_resolve(base, name)
        if any(p.kind == kind and p.name == name for p in registry.plugins()):
            cls = registry.resolve(kind, name)  # one that failed to load raises its own error here
            return f"{cls.__module__}.{cls.__qualname__}"
        path = jsonargparse_resolve(base, name)  # a class name, e.g. Rho1
        if "." not in path:
            registry.resolve(kind, name)  # raises: unknown name, with the registered ones listed
        return path

    return resolve_class_path_by_name


def install() -> None:
    """Make jsonargparse resolve registered short names (idempotent)."""
    wrap_class_path_resolution(resolver)
