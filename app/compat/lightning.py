"""Lightning's internals that Sprout's checkpoints need: saving ``last.ckpt`` at the end of a run, and
logging a step before its checkpoint.

``ModelCheckpoint`` writes ``last.ckpt`` at the end of training only if it wrote no checkpoint
before, and has no public method to save ``last`` now; ``save_last_checkpoint`` runs its own
code for that (the file name from ``monitor_candidates``, the previous ``last`` removed), and
``last_saved_step`` reads which step it saved last.

Lightning sends a training step's ``self.log`` values to the loggers only after every
``on_train_batch_end`` hook has run, and the checkpoint callbacks write their saves inside that
hook. A run killed right after such a save resumes at the next step, so the step just before the
checkpoint would never be logged: a hole in every preempted run's curves.
``log_step_before_saving`` sends the pending values at once, flushes every logger, and makes the
loop's own send for that step a no-op, so the logs are complete up to every checkpoint and each
step is logged once. The values live in Lightning's logger connector, which has no public API.
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
    "_save_last_checkpoint, _monitor_candidates and _last_global_step_saved, and a step is logged before its "
    "checkpoint through the trainer's private _logger_connector (app/compat/lightning.py)",
)


def last_saved_step(callback: ModelCheckpoint) -> int:
    """The global step of the checkpoint ``callback`` saved last (0 before any)."""
    return callback._last_global_step_saved


def save_last_checkpoint(callback: ModelCheckpoint, trainer: Any) -> None:
    """Save ``last.ckpt`` now, as ``callback`` names and replaces it."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def log_step_before_saving(trainer: Any) -> None:
    """Log and flush this training step's values now; called by each checkpoint writer in its
    ``on_train_batch_end`` (Lightning runs checkpoint callbacks after all others, so every
    value of the step is in). Once per step: a second writer finds it done."""
    connector = trainer._logger_connector
    if "update_train_step_metrics" in vars(connector):
        return  # logged already this step, by another checkpoint callback
    type(connector).update_train_step_metrics(connector)
    for logger in trainer.loggers:
        logger.save()  # TensorBoard: flush the event file

    def already_logged() -> None:  # the loop's own call, right after the hooks: this step is in
        del connector.update_train_step_metrics

    connector.update_train_step_metrics = already_logged
