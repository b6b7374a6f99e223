"""Writing checkpoints so that a crash never leaves one that looks valid, and finding the last one.

A week-long run is killed at random moments, sometimes in the middle of a save, and disks
fill up. ``AtomicCheckpointIO`` writes every checkpoint (periodic, last, preemption) through
``app.files.replacing``: a hidden temporary file in the same folder, flushed to disk, then
renamed over the target, so a reader sees the old file or the complete new one, never half of one. A failed
write (disk full) removes the temporary file and says what to do. ``SproutCheckpoint`` makes
sure the final step of a run is in ``last.ckpt``.

``--ckpt_path last`` must mean "the newest last checkpoint of this recipe's runs", but
Lightning looks only in the checkpoint folder of the *new* logger version, which is empty,
and then silently starts from scratch. ``continue_last_run`` finds the newest ``last.ckpt``
under the logger's folder instead and, with TensorBoard, continues in that run's version
folder (its checkpoints, its retention, one curve). The same command line serves the first
launch and every restart.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from app.errors import SproutError
from app.files import remove_stale_temporaries, replacing

_LAST = re.compile(rf"^{ModelCheckpoint.CHECKPOINT_NAME_LAST}(-v\d+)?{re.escape(ModelCheckpoint.FILE_EXTENSION)}$")


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err``: torch.save reports a failed write as a RuntimeError of its zip writer."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file, fsync, rename; clear errors on failed saves and loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)  # object stores: fsspec's transaction
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with replacing(path, durable=True) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, f)
        except BaseException as err:
            cause = _os_error(err)
            if cause is None:
                raise
            if cause.errno in (errno.ENOSPC, errno.EDQUOT):
                fix = "Free space on that disk, set checkpoint.dirpath to a folder on a larger one, or keep fewer checkpoints (checkpoint.save_top_k)"
            else:
                fix = "Make that folder writable or set checkpoint.dirpath to one that is"
            raise SproutError(
                f"Could not write checkpoint {path}: {cause.strerror or cause}. Nothing was written there, and the checkpoints already in "
                f"{path.parent} are intact. {fix}, then resume with --ckpt_path last."
            ) from None
        remove_stale_temporaries(path.parent)  # they can be as large as a checkpoint

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        check_checkpoint(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def check_checkpoint(path: str | os.PathLike) -> None:
    """A clear error for a checkpoint file that is missing or cut off, before anything reads it.

    ``torch.save`` writes a zip archive whose directory is at its end, so a truncated or
    overwritten file has none. Folders (distributed checkpoints) and remote paths are left to
    their readers.
    """
    fs = get_filesystem(path)
    if not fs.exists(path):
        raise SproutError(f"Checkpoint {path} does not exist. Pass an existing .ckpt file to --ckpt_path, or `--ckpt_path last` to resume the newest run of this recipe.")
    if isinstance(fs, LocalFileSystem) and Path(path).is_file() and not zipfile.is_zipfile(path):
        raise SproutError(
            f"Checkpoint {path} cannot be read: it is truncated or corrupt (not a complete archive). "
            f"Resume from another checkpoint in {Path(path).parent} instead (pass its path to --ckpt_path)."
        )


class SproutCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the final step of a run.

    Lightning writes ``last.ckpt`` at the end of training only if it wrote none before, so a
    run whose ``max_steps`` falls between two saves would lose its final steps.
    """

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)


def checkpoint_dir(trainer: Any) -> str:
    """The run's checkpoint folder: that of its first ``ModelCheckpoint``, where ``--ckpt_path last`` looks."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return callback.dirpath
    return os.path.join(trainer.default_root_dir, "checkpoints")


def find_last_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest ``last*.ckpt`` in ``<root>/*/checkpoints`` (one folder per logger version)."""
    candidates = [p for p in Path(root).glob("*/checkpoints/*.ckpt") if _LAST.match(p.name)]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def continue_last_run(config: Any) -> Path | None:
    """For ``ckpt_path: last``, resume from the newest last checkpoint of the recipe's logger folder.

    ``config`` is the parsed ``fit`` namespace; its ``ckpt_path`` becomes that file. With
    TensorBoard (which appends to a run's folder) the logger also gets that run's version,
    so the run continues in its own folder; other loggers (CSV rewrites its file) start a
    new version. Does nothing when ``checkpoint.dirpath`` is fixed (Lightning finds the file
    there itself), when the logger has no ``save_dir``/``name``, or when nothing is found
    (then Lightning warns and starts from scratch, so one command serves the first launch too).
    """
    if config.get("ckpt_path") != "last" or config.get("checkpoint.dirpath"):
        return None
    logger = config.get("trainer.logger")
    args = getattr(logger, "init_args", None)
    if args is None or not {"save_dir", "name", "version"} <= set(vars(args)) or args.version is not None:
        return None
    last = find_last_checkpoint(Path(args.save_dir or ".") / (args.name or ""))
    if last is None:
        return None
    config.ckpt_path = str(last)
    module, _, name = logger.class_path.rpartition(".")
    if issubclass(getattr(importlib.import_module(module), name), TensorBoardLogger):
        args.version = last.parent.parent.name
    return last
