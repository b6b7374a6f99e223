"""A training step's logged values reach the loggers, flushed, before any checkpoint of that step is written.

Lightning sends a step's ``self.log`` values to the loggers only after every ``on_train_batch_end``
hook has run, and the checkpoint callbacks write their saves inside that hook. A run killed
right after such a save resumes at the next step, so the step just before the checkpoint would
never be logged: a hole in every preempted run's curves. ``log_step_before_saving`` sends the
pending values at once, flushes every logger, and makes the loop's own send for that step a
no-op, so the logs are complete up to every checkpoint and each step is logged once.

Lightning has no public call for this (the values live in its logger connector), so the one
use of its internals is here, checked against the versions it was written for.
"""

from __future__ import annotations

import lightning

from sprout.errors import SproutError

WRITTEN_FOR = ("2.6",)  # lightning major.minor versions whose training loop this was read against


def _check_lightning() -> None:
    found = ".".join(lightning.__version__.split(".")[:2])
    if found not in WRITTEN_FOR:
        raise SproutError(
            f"lightning {lightning.__version__} is installed, but app/checkpoint/step_logs.py was written for lightning "
            f"{' or '.join(WRITTEN_FOR)}.x: it logs a training step before that step's checkpoint through Lightning's "
            "logger connector, which has no public API and may change between versions. Install the version in "
            "pyproject.toml (pip install -e .), or check that module against the new loop and add the version."
        )


_check_lightning()


def log_step_before_saving(trainer: lightning.Trainer) -> None:
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
