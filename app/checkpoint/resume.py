"""Continuing a run: which checkpoint to resume from, and what a checkpoint stored.

``--ckpt_path last`` must mean "the newest last checkpoint of this recipe's runs", but
Lightning looks only in the checkpoint folder of the *new* logger version, which is empty,
and then silently starts from scratch. ``continue_last_run`` finds the newest ``last.ckpt``
under the logger's folder instead and, with TensorBoard, continues in that run's version
folder (its checkpoints, its retention, one curve). The same command line serves the first
launch and every restart.

Components read their own part of a stored checkpoint through ``callback_state`` with their
own state key (``sprout.growth.reshape``, ``sprout.counter``); nothing outside a component
spells its key.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from sprout.checkpoint.safe_load import load_file

_LAST = re.compile(rf"^{ModelCheckpoint.CHECKPOINT_NAME_LAST}(-v\d+)?{re.escape(ModelCheckpoint.FILE_EXTENSION)}$")


def find_last_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest ``last*.ckpt`` in ``<root>/*/checkpoints`` (one folder per logger version)."""
    candidates = [p for p in Path(root).glob("*/checkpoints/*.ckpt") if _LAST.match(p.name)]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def continue_last_run(config: Any) -> Path | None:
    """For ``ckpt_path: last``, resume from the newest last checkpoint of the recipe's logger folder.

    ``config`` is the parsed ``fit`` namespace; its ``ckpt_path`` becomes that file. With
    TensorBoard (which appends to a run's folder) the logger also gets that run's version,
    so the run continues in its own folder; other loggers (CSV rewrites its file) start a
    new version. When there is none yet, the run starts from scratch and says so in one line
    (instead of Lightning's hint to set ``save_last``, which Sprout always does), so one command
    serves the first launch too. A fixed ``checkpoint.dirpath`` is left to Lightning when it
    holds a ``last.ckpt``, and so is a logger without ``save_dir``/``name``.
    """
    if config.get("ckpt_path") != "last":
        return None
    if config.get("checkpoint.dirpath"):
        folder = Path(config["checkpoint.dirpath"])
        if not any(_LAST.match(p.name) for p in folder.glob("*.ckpt")):
            _start_from_scratch(config, folder)
        return None
    logger = config.get("trainer.logger")
    args = getattr(logger, "init_args", None)
    if args is None or not {"save_dir", "name", "version"} <= set(vars(args)) or args.version is not None:
        return None
    root = Path(args.save_dir or ".") / (args.name or "")
    last = find_last_checkpoint(root)
    if last is None:
        _start_from_scratch(config, root)
        return None
    config.ckpt_path = str(last)
    module, _, name = logger.class_path.rpartition(".")
    if issubclass(getattr(importlib.import_module(module), name), TensorBoardLogger):
        args.version = last.parent.parent.name
    return last


def _start_from_scratch(config: Any, folder: Path) -> None:
    config.ckpt_path = None
    if rank_zero_only.rank == 0:
        print(f"sprout: no checkpoint yet in {folder}; starting from scratch", file=sys.stderr, flush=True)


def checkpoint_to_resume(config: Any) -> str | None:
    """The checkpoint file ``fit`` will resume from, where it exists yet (``config``: the parsed ``fit`` namespace)."""
    path = config.get("ckpt_path")
    if path == "last" and config.get("checkpoint.dirpath"):
        path = str(Path(config["checkpoint.dirpath"]) / "last.ckpt")
    return path if path and Path(path).exists() else None


def stored_entries(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint's entries (a file, or a distributed-checkpoint folder's ``meta.pt``)
    without reading its tensors; empty for a folder without ``meta.pt`` (a Hugging Face model)."""
    path = Path(path)
    file = path / "meta.pt" if path.is_dir() else path
    if not file.is_file():
        return {}
    return load_file(file, map_location="cpu", mmap=not path.is_dir())


def callback_state(checkpoint: dict[str, Any], state_key: str) -> dict[str, Any] | None:
    """The state a callback stored in ``checkpoint`` (its ``state_dict()``), by its ``state_key``;
    ``None`` when it stored none (a ``save_model`` file, or a run without that callback)."""
    return (checkpoint.get("callbacks") or {}).get(state_key)
