"""jsonargparse's class-path resolution, wrapped so that registered plugin names resolve (``sprout.plugin_names``).

jsonargparse turns a value without a dot into a class path in one function,
``jsonargparse._typehints.resolve_class_path_by_name(base_type, name)``, which it looks up in
its module each time (for ``class_path:`` in a recipe, ``--model.selector NAME``, help and
defaults) and which has no public hook. ``wrap_class_path_resolution`` replaces it with a
wrapper around it, once per process.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from jsonargparse import _typehints

from sprout.compat import require
from sprout.errors import SproutError

WHY = (
    "recipes name plugins by their registered names through a wrapper around jsonargparse's internal "
    "_typehints.resolve_class_path_by_name(cls, name) (app/compat/jsonargparse.py)"
)
require("jsonargparse", "4.53", "5", WHY)

_resolve = getattr(_typehints, "resolve_class_path_by_name", None)
if _resolve is None or list(inspect.signature(_resolve).parameters) != ["cls", "name"]:
    raise SproutError(
        f"This jsonargparse has no _typehints.resolve_class_path_by_name(cls, name), which Sprout needs: {WHY}. "
        "Install jsonargparse 4.53 (pip install 'jsonargparse[signatures]==4.53.0')."
    )

Resolver = Callable[[type | tuple, str], str]


def wrap_class_path_resolution(wrap: Callable[[Resolver], Resolver]) -> None:
    """Make jsonargparse resolve class names through ``wrap(its own resolver)`` (idempotent)."""
    current = _typehints.resolve_class_path_by_name
    if not getattr(current, "sprout_wrapped", False):
        wrapped = wrap(current)
        wrapped.sprout_wrapped = True
        _typehints.resolve_class_path_by_name = wrapped
