"""Lightning's ``ModelCheckpoint`` internals ``SproutCheckpoint`` uses to save ``last.ckpt`` at the end of a run.

``ModelCheckpoint`` writes ``last.ckpt`` at the end of training only if it wrote no checkpoint
before, and has no public method to save ``last`` now; ``save_last_checkpoint`` runs its own
code for that (the file name from ``monitor_candidates``, the previous ``last`` removed), and
``last_saved_step`` reads which step it saved last.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from sprout.compat import require

require(
    "lightning",
    "2.6",
    "2.7",
    "SproutCheckpoint saves last.ckpt at the end of a run through ModelCheckpoint's private "
    "_save_last_checkpoint, _monitor_candidates and _last_global_step_saved (app/compat/lightning.py)",
)


def last_saved_step(callback: ModelCheckpoint) -> int:
    """The global step of the checkpoint ``callback`` saved last (0 before any)."""
    return callback._last_global_step_saved


def save_last_checkpoint(callback: ModelCheckpoint, trainer: Any) -> None:
    """Save ``last.ckpt`` now, as ``callback`` names and replaces it."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
