"""How every tool runs: a jsonargparse CLI over one function, user errors as one line."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse import auto_cli

from app.errors import SproutError


def run_tool(function: Callable, args: list[str] | None = None, **cli_kwargs: Any) -> Any:
    """``auto_cli(function)``; a ``SproutError`` prints ``<tool>: error: ...`` and exits 2."""
    try:
        return auto_cli(function, args=args, **cli_kwargs)
    except SproutError as error:
        print(f"{Path(inspect.getfile(function)).stem}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
