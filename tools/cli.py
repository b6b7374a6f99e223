"""How every tool runs: a jsonargparse CLI over one function, user errors as one line."""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jsonargparse import auto_cli

from app.errors import SproutError


@contextlib.contextmanager
def user_errors(tool: str) -> Iterator[None]:
    """A ``SproutError`` inside prints ``<tool>: error: ...`` and exits 2, without a traceback."""
    try:
        yield
    except SproutError as error:
        print(f"{tool}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run_tool(function: Callable, args: list[str] | None = None, **cli_kwargs: Any) -> Any:
    """``auto_cli(function)`` under ``user_errors``, the tool named after the function's file."""
    with user_errors(Path(inspect.getfile(function)).stem):
        return auto_cli(function, args=args, **cli_kwargs)
