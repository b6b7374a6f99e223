"""One exception type for every mistake a user can fix, and the checks and warnings that raise or print it.

The CLI prints a ``SproutError`` as one paragraph without a traceback, so its message
must name the file, field or option at fault and say how to fix it. ``check_option``
refuses a recipe value that torch or a library would reject only deep inside a run
(``Invalid learning rate`` from the optimizer's constructor, a ``ZeroDivisionError`` in
the schedule); ``warn`` says that a legal setting is almost surely a mistake.
"""

from __future__ import annotations

import sys
from typing import Any


class SproutError(Exception):
    """A user-fixable problem: bad recipe, bad data, bad checkpoint, unknown plugin."""


def check_option(ok: bool, key: str, value: Any, must: str) -> None:
    """Raise a ``SproutError`` naming the recipe ``key`` unless ``ok``; ``must`` says what it must be."""
    if not ok:
        raise SproutError(
            f"{key}={value!r} is invalid: it must be {must}. Fix it in the recipe, or on the command line with --{key}."
        )


def is_count(value: Any, minimum: int = 1) -> bool:
    """An ``int`` (not a ``bool``) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: Any, minimum: float = 0.0, *, strict: bool = False) -> bool:
    """A finite real number above (``strict``) or at least ``minimum``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != value
        or value in (float("inf"), float("-inf"))
    ):
        return False
    return value > minimum if strict else value >= minimum


def warn(message: str) -> None:
    """A legal setting that is almost surely a mistake: one line on stderr, and the run goes on.
    Call it on one process only (rank zero)."""
    print(f"sprout: warning: {message}", file=sys.stderr, flush=True)
