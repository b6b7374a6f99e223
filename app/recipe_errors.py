"""Recipe mistakes caught by the argument parser, said in one paragraph: which file, which key, what to do.

jsonargparse reports a typo in a recipe as a page of usage text followed by a nested, typed
message that names neither the recipe file nor the fix. The CLI's parser is made with
``exit_on_error=False``, so it raises its final error (``ArgumentError``) instead of printing,
and ``explain`` rewrites it: the YAML problem with its line and column, the
unknown key with the closest known one, the unknown plugin with the registered ones (from
the registry), the wrong value with the expected type, or the plugin's own ``SproutError``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, ArgumentParser

from sprout import registry
from sprout.errors import SproutError
from sprout.protocols import KINDS

HELP = "`sprout fit --help` lists every option with its type"


WORKER_TRACEBACK = re.compile(
    r"Caught SproutError in DataLoader worker process \d+\.\nOriginal Traceback .*\n(?:[\w.]+\.)?SproutError: (.*?)\n?",
    re.S,
)


def sprout_error_in(err: BaseException | None) -> SproutError | None:
    """The ``SproutError`` a plugin or loader raised, wherever jsonargparse wrapped it, and with
    its own message when a DataLoader worker raised it (torch re-raises it in the main process
    with the worker's whole traceback as the message)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, SproutError):
            worker = WORKER_TRACEBACK.fullmatch(str(err))
            return SproutError(worker.group(1)) if worker else err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _config_files(args: list[str]) -> list[Path]:
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(Path(args[i + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    return files


def _keys(tree: Any, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return set()
    found = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        found.add(path)
        found |= _keys(value, path + ".")
    return found


def _where(key: str, args: list[str]) -> str:
    """Where ``key`` was last set, as the parser reads arguments: a recipe file or the command line."""
    where = None
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args) or arg.startswith("--config="):
            path = Path(args[i + 1] if "=" not in arg else arg.split("=", 1)[1])
            try:
                if key in _keys(yaml.safe_load(path.read_text())):
                    where = f"the recipe {path}"
            except (OSError, yaml.YAMLError):
                continue
        elif arg == f"--{key}" or arg.startswith((f"--{key}=", f"--{key}.")):
            where = "the command line"
    return where or " and ".join(f"the recipe {p}" for p in _config_files(args)) or "the command line"


def _yaml_problem(files: list[Path]) -> str | None:
    for path in files:
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            parts = [
                (getattr(err, "context", None), getattr(err, "context_mark", None)),
                (getattr(err, "problem", None), getattr(err, "problem_mark", None)),
            ]
            said = ", ".join(
                f"{text} at line {mark.line + 1}, column {mark.column + 1}" if mark else text
                for text, mark in parts
                if text
            )
            return (
                f"The recipe {path} is not valid YAML: {said or str(err).splitlines()[0]}. Fix the syntax there: "
                "indentation, a missing ':' after a key, or an unclosed bracket or quote."
            )
        except OSError as err:
            return f"Cannot read the recipe {path}: {err.strerror}. Check the path given to --config."
    return None


def _condense(message: str) -> str:
    """jsonargparse's nested message as one line, without its type bookkeeping."""
    noise = (
        "Subtypes:",
        "Given value",
        "Does not validate against any of the Union subtypes",
        "Errors:",
        "- Expected a <class 'NoneType'>",
    )
    lines = [line.strip() for line in message.splitlines()]
    text = "; ".join(line.lstrip("- ") for line in lines if line and not line.startswith(noise))
    text = re.sub(r"Expected an? <class '([\w.]+)'>\. Got value: (.*?)(?=;|$)", r"expected \1, got \2", text)
    return re.sub(r"<class '([\w.]+)'>", r"\1", text)


def _kind(message: str) -> str | None:
    for kind, protocol in KINDS.items():
        if f"{protocol.__module__}.{protocol.__name__}" in message:
            return kind
    return None


def _init_args(class_path: str) -> list[str]:
    module, _, name = class_path.rpartition(".")
    try:
        signature = inspect.signature(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [p.name for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _option_keys(parser: ArgumentParser, cause: BaseException | None) -> list[str]:
    """The options of the parser that failed: a subcommand's (jsonargparse marks its error with
    that parser), else the one given."""
    parser = getattr(cause, "subcommand_parser", None) or parser
    try:
        return list(parser.get_defaults().keys())
    except (ArgumentError, TypeError, KeyError, ValueError):
        return []


def explain(failure: ArgumentError, parser: ArgumentParser, args: list[str]) -> str:
    """One paragraph: what is wrong, where (file or command line, key), and how to fix it."""
    files = _config_files(args)
    message = str(failure)
    sprout = sprout_error_in(failure.__cause__)
    if "Problems parsing config" in message:
        problem = _yaml_problem(files)
        if problem:
            return problem
        if sprout is not None:
            return f"In {' and '.join(str(p) for p in files) or 'the command line'}: {sprout}"
    keyed = re.match(r'Parser key "([^"]+)":', message)
    key = keyed.group(1) if keyed else None
    if sprout is not None:
        return f"{key} in {_where(key, args)}: {sprout}" if key else str(sprout)

    unknown = re.search(r"does not accept option '([^']+)'", message) or re.search(
        r"Key '([^']+)' is not expected", message
    )
    if unknown:
        key = unknown.group(1)
        close = difflib.get_close_matches(key, _option_keys(parser, failure.__cause__), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"Unknown option '{key}' in {_where(key, args)}{hint}. Fix or remove it; {HELP}."

    required = re.search(r"arguments are required: (?:\w+\.)?([\w.]+)", message)
    if required:
        key = required.group(1)
        section, _, field = key.rpartition(".")
        return f"Missing option {key}: set it in the recipe ({section}: {{{field}: ...}}) or on the command line with --{key}; {HELP}."
    negative = next(
        (f"{a}={b}" for a, b in zip(args, args[1:]) if a.startswith("--") and re.fullmatch(r"-\.?\d.*", b)), None
    )
    if "expected one argument" in message and negative:
        key, value = negative.split("=", 1)
        return (
            f"The option {key} on the command line got no value: argparse reads {value} as another option because it starts "
            f"with '-'. Write it as {key}={value}."
        )
    missing = re.search(r"File does not exist: '([^']+)'", message)
    if missing:
        return f"The recipe file {missing.group(1)} does not exist. Check the path given to --config."

    where = (
        f"{key} in {_where(key, args)}" if key else " and ".join(f"the recipe {p}" for p in files) or "the command line"
    )
    init_key = re.search(
        r"Problem with given class_path '([\w.]+)'.*?(?:Option|Key) '([\w]+)[^']*' is not (?:accepted|expected)",
        message,
        re.S,
    )
    if init_key:
        class_path, name = init_key.groups()
        accepted = _init_args(class_path)
        close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"Unknown init_args key '{name}' for {class_path} at {where}{hint}. It takes: {', '.join(accepted) or 'no arguments'}."
    plugin = re.search(r"(?:Expected a dot import path string:|Import path)\s+'?([A-Za-z_][\w.]*)", message)
    kind = _kind(message)
    if plugin and kind:
        try:
            registry.resolve(kind, plugin.group(1))
        except SproutError as err:
            return f"{where}: {err}"
    return (
        f"Invalid value for {where}: {_condense(message[keyed.end() :] if keyed else message)}. Fix that value; {HELP}."
    )
