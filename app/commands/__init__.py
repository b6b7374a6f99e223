"""Sprout's commands that need no Trainer: ``sprout prepare``, ``sprout export``, ...

Each is one function in ``app/commands/`` (or wherever its concept lives), run as a jsonargparse
CLI: its parameters are the options, its docstring the help, and ``--config`` and
``--print_config`` work as for ``sprout fit``. ``COMMANDS`` names each function by its import path
so ``sprout --help`` lists them without importing any (they import torch: seconds); adding a
command is one row. The benchmarks and experiments in ``tools/`` run through ``run_function`` too.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sprout.errors import SproutError


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"
    purpose: str  # one line, for `sprout --help`
    positional: bool = True  # required parameters are positional arguments (else --options)


COMMANDS = {
    "prepare": Command("sprout.commands.prepare:prepare_data", "tokenize corpora into per-domain token shards", False),
    "score": Command("sprout.commands.score:score_reference", "score prepared shards with a reference model, for Rho-1", False),
    "fit-bimix": Command("sprout.commands.fit_bimix:fit_bimix", "fit the BiMix law to proxy runs; print the best mixture", False),
    "plan-growth": Command("sprout.commands.plan_growth:plan_growth", "how many tokens to train before growing (Du et al. 2024)", False),
    "eval": Command("sprout.commands.evaluate:evaluate", "score a checkpoint on lm-evaluation-harness tasks"),
    "export": Command("sprout.commands.export:export", "write a checkpoint as a Hugging Face Llama folder"),
    "import": Command("sprout.commands.import_hf:import_hf", "read a Hugging Face Llama folder into a Sprout checkpoint"),
    "consolidate": Command("sprout.commands.consolidate:consolidate", "gather a sharded (distributed) checkpoint into one file"),
    "dynamics": Command("sprout.commands.dynamics:token_dynamics", "classify tokens by how their loss moves across checkpoints", False),
    "memory": Command("sprout.commands.memory:estimate", "per-GPU training memory of a model shape or recipe"),
    "verify": Command("sprout.data.verify:verify", "check prepared shards (a folder or URL) against their checksums"),
}  # fmt: skip


def run(name: str, args: list[str] | None = None) -> Any:
    """``sprout NAME ARGS``: the command's function as a CLI, its module docstring (the examples) as the description."""
    # imported here: `sprout --help` and `sprout plugins` need none of this
    from argparse import RawDescriptionHelpFormatter

    from jsonargparse import DefaultHelpFormatter

    class HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
        """Keeps the example commands of a module's docstring as written."""

    command = COMMANDS[name]
    module_name, _, function_name = command.target.partition(":")
    with user_errors(f"sprout {name}"):  # a dependency of the wrong version says so in words
        module = importlib.import_module(module_name)
    return run_function(
        getattr(module, function_name),
        args,
        prog=f"sprout {name}",
        as_positional=command.positional,
        description=module.__doc__,
        formatter_class=HelpFormatter,
    )


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """A ``SproutError`` inside prints ``<prog>: error: ...`` and exits 2, without a traceback."""
    try:
        yield
    except SproutError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run_function(function: Callable, args: list[str] | None = None, prog: str | None = None, **cli_kwargs: Any) -> Any:
    """``auto_cli(function)`` under ``user_errors``; ``prog`` defaults to the function's file name."""
    from jsonargparse import auto_cli

    prog = prog or Path(inspect.getfile(function)).stem
    with user_errors(prog):
        return auto_cli(function, args=args, prog=prog, **cli_kwargs)
