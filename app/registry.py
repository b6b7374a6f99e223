"""The plugin registry: every growth operator, token selector and mixture policy.

Plugins are found only through the ``sprout.plugins`` entry-point group, named
``<kind>.<name>`` (``selector.rho1 = "sprout.plugins.selectors.rho1:Rho1"``). Sprout's own
``plugins/`` package registers itself there exactly as a third-party package would, so
the registry never imports it directly.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from sprout.errors import SproutError
from sprout.plugin_index import ENTRY_POINT_GROUP
from sprout.protocols import KINDS


@dataclass(frozen=True)
class Plugin:
    kind: str
    name: str
    target: str  # "module:Class" as written in the entry point
    package: str  # the distribution that declared it
    cls: type | None = None
    error: str | None = None  # why it could not be loaded


def _load(ep) -> Plugin:
    kind, _, name = ep.name.partition(".")
    package = ep.dist.name if ep.dist is not None else "unknown package"
    info = dict(kind=kind, name=name, target=ep.value, package=package)
    if kind not in KINDS or not name:
        return Plugin(
            **info, error=f"entry point {ep.name!r} must be named '<kind>.<name>' with kind in {sorted(KINDS)}"
        )
    try:
        cls = ep.load()
    except Exception as err:  # a broken plugin must not break the others
        return Plugin(**info, error=f"{type(err).__name__}: {err}")
    if not (isinstance(cls, type) and issubclass(cls, KINDS[kind])):
        return Plugin(**info, error=f"{ep.value} is not a subclass of {KINDS[kind].__name__}")
    return Plugin(**info, cls=cls)


@functools.cache
def plugins() -> tuple[Plugin, ...]:
    """Every registered plugin, loaded once; failures are kept (with their error), not raised."""
    found = tuple(sorted((_load(ep) for ep in entry_points(group=ENTRY_POINT_GROUP)), key=lambda p: (p.kind, p.name)))
    for p in found:
        if p.error:
            warnings.warn(
                f"Sprout plugin {p.kind}.{p.name} from package {p.package!r} failed to load: {p.error}", stacklevel=2
            )
    return found


def names(kind: str) -> list[str]:
    return [p.name for p in plugins() if p.kind == kind and p.cls is not None]


def resolve(kind: str, name: str) -> type:
    """The class for a registered short name, or for a dotted ``module.Class`` path."""
    if kind not in KINDS:
        raise SproutError(f"Unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}.")
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise SproutError(
                f"Cannot import {kind} plugin class_path {name!r}: {err}. Check the module path and that its package is installed."
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, KINDS[kind])):
            raise SproutError(
                f"{name!r} is not a {kind} plugin: it must subclass sprout.protocols.{KINDS[kind].__name__}."
            )
        return cls
    for p in plugins():
        if p.kind == kind and p.name == name:
            if p.cls is None:
                raise SproutError(
                    f"The {kind} plugin {name!r} from package {p.package!r} failed to load: {p.error}. Fix or reinstall that package."
                )
            return p.cls
    raise SproutError(
        f"Unknown {kind} plugin {name!r}. Available: {', '.join(names(kind)) or 'none'}. Run `sprout plugins` to list them, or give a full class_path."
    )


def create(kind: str, name: str, **init_args: Any):
    cls = resolve(kind, name)
    try:
        return cls(**init_args)
    except TypeError as err:
        raise SproutError(f"Bad init_args for {kind} plugin {name!r}: {err}.") from None
