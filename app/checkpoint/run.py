"""The run's checkpoint files: written so that a crash never leaves one that looks valid, newest N kept.

A week-long run is killed at random moments, sometimes in the middle of a save, and disks
fill up. ``AtomicCheckpointIO`` writes every checkpoint (periodic, last, preemption) through
``sprout.files.replacing``: a hidden temporary file in the same folder, flushed to disk, then
renamed over the target, so a reader sees the old file or the complete new one, never half of one. A failed
write (disk full) removes the temporary file and says what to do, with the checkpoint's size and the
space left. ``SproutCheckpoint`` makes
sure the final step of a run is in ``last.ckpt``. ``RETENTION`` is what the recipe's
``checkpoint:`` and ``best_checkpoint:`` sections keep unless they say otherwise.
"""

from __future__ import annotations

import errno
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint

from sprout.checkpoint.safe_load import check_distributed, load_file
from sprout.compat.lightning import last_saved_step, log_step_before_saving, save_last_checkpoint
from sprout.errors import SproutError
from sprout.files import remove_stale_temporaries, replacing

# Defaults of the recipe sections `checkpoint:` (SproutCheckpoint: every save as step<N>.ckpt, the
# newest save_top_k kept, plus last.ckpt) and `best_checkpoint:` (the best by mean validation loss).
RETENTION = {
    "checkpoint.save_last": True,
    "checkpoint.filename": "step{step:06d}",
    "checkpoint.auto_insert_metric_name": False,
    "checkpoint.monitor": "step",
    "checkpoint.mode": "max",
    "checkpoint.save_top_k": 3,
    "best_checkpoint.monitor": "val/loss",
    "best_checkpoint.mode": "min",
    "best_checkpoint.save_top_k": 1,
    "best_checkpoint.filename": "best-step{step:06d}-val{val/loss:.4f}",
    "best_checkpoint.auto_insert_metric_name": False,
}


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err``: torch.save reports a failed write as a RuntimeError of its zip writer."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def _tensor_bytes(state: Any) -> int:
    """The bytes of the tensors in a checkpoint: all but a few kB of the file ``torch.save`` writes."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_tensor_bytes(v) for v in state)
    return 0


def _size(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file, fsync, rename; clear errors on failed saves and loads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
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
                need = f" (it needs about {_size(_tensor_bytes(checkpoint))}; {path.parent} has {_size(shutil.disk_usage(path.parent).free)} free)"
                fix = "Free space on that disk, set checkpoint.dirpath to a folder on a larger one, or keep fewer checkpoints (checkpoint.save_top_k)"
            else:
                need, fix = "", "Make that folder writable or set checkpoint.dirpath to one that is"
            raise SproutError(
                f"Could not write checkpoint {path}: {cause.strerror or cause}{need}. Nothing was written there, and the checkpoints already in "
                f"{path.parent} are intact. {fix}, then resume with --ckpt_path last."
            ) from None
        remove_stale_temporaries(path.parent)  # they can be as large as a checkpoint

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        check_checkpoint(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)  # whatever Lightning asks


def check_checkpoint(path: str | os.PathLike) -> None:
    """A clear error for a checkpoint that is missing, cut off or holds more than tensors and plain
    data, before anything reads it (Lightning's loaders, ``Growth.resume_from``).

    ``torch.save`` writes a zip archive whose directory is at its end, so a truncated or
    overwritten file has none. The file's pickle is then read as ``safe_load`` reads it (its
    tensors memory-mapped, not read), and a distributed-checkpoint folder's ``.metadata`` too.
    Remote paths are left to their readers.
    """
    fs = get_filesystem(path)
    if not fs.exists(path):
        raise SproutError(
            f"Checkpoint {path} does not exist. Pass an existing .ckpt file to --ckpt_path, or `--ckpt_path last` to resume the newest run of this recipe."
        )
    if isinstance(fs, LocalFileSystem) and Path(path).is_file() and not zipfile.is_zipfile(path):
        raise SproutError(
            f"Checkpoint {path} cannot be read: it is truncated or corrupt (not a complete archive). "
            f"Resume from another checkpoint in {Path(path).parent} instead (pass its path to --ckpt_path)."
        )
    if isinstance(fs, LocalFileSystem) and Path(path).is_file():
        try:
            load_file(path, map_location="cpu", mmap=True)
        except (RuntimeError, EOFError, ValueError) as error:
            raise SproutError(
                f"Checkpoint {path} cannot be read ({str(error).splitlines()[0]}): it is not a PyTorch checkpoint or it is damaged. "
                f"Resume from another checkpoint in {Path(path).parent} instead (pass its path to --ckpt_path)."
            ) from None
    elif isinstance(fs, LocalFileSystem) and Path(path).is_dir():
        check_distributed(path)


class SproutCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the final step of a run.

    Lightning writes ``last.ckpt`` at the end of training only if it wrote none before, so a
    run whose ``max_steps`` falls between two saves would lose its final steps. A step's logged
    values are written and flushed before its checkpoint (``sprout.compat.lightning``), so a kill right after a
    save leaves no hole in the logs.
    """

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        log_step_before_saving(trainer)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.save_last and last_saved_step(self) != trainer.global_step:
            save_last_checkpoint(self, trainer)
        else:
            super().on_train_end(trainer, pl_module)


def checkpoint_dir(trainer: Any) -> str:
    """The run's checkpoint folder: that of its first ``ModelCheckpoint``, where ``--ckpt_path last`` looks."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return callback.dirpath
    return os.path.join(trainer.default_root_dir, "checkpoints")
