"""``sprout fit|validate|test``: the LightningCLI face of the application.

``sprout fit|validate|test --config recipes/X.yaml`` runs a recipe (``sprout.cli`` sends those
commands here). Recipes may name plugins by their registered short name (``class_path: rho1``);
the recipe loader expands it before jsonargparse checks types.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI

from sprout import plugin_names
from sprout.callbacks import ThroughputMonitor
from sprout.callbacks.downstream_eval import DownstreamEval
from sprout.callbacks.growth import Growth
from sprout.callbacks.nan_guard import NaNGuard
from sprout.callbacks.preemption import Preemption, slurm_without_auto_requeue
from sprout.callbacks.progress import StepProgressBar
from sprout.callbacks.rng import TrainingRNG
from sprout.checkpoint.resume import checkpoint_to_resume, continue_last_run
from sprout.checkpoint.run import RETENTION, AtomicCheckpointIO, SproutCheckpoint, check_checkpoint
from sprout.data.datamodule import SproutDataModule
from sprout.errors import SproutError
from sprout.module import SproutModule
from sprout.recipe_errors import explain, sprout_error_in

plugin_names.install()  # registered short names wherever a class path goes (recipes, command line)


class SproutCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Always-on callbacks with their own recipe sections: `monitor:`, `checkpoint:` and `growth:`.
        parser.add_lightning_class_args(ThroughputMonitor, "monitor")
        parser.add_lightning_class_args(SproutCheckpoint, "checkpoint")
        parser.add_lightning_class_args(Growth, "growth")  # inert unless growth.operator is set
        parser.add_lightning_class_args(ModelCheckpoint, "best_checkpoint")
        parser.set_defaults(RETENTION)  # which checkpoints each of the two keeps
        parser.add_lightning_class_args(NaNGuard, "nan_guard")  # skips non-finite steps
        parser.add_lightning_class_args(
            DownstreamEval, "eval"
        )  # inert unless eval.tasks and eval.every_n_steps are set

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as failure:  # exit_on_error=False: the parser's final error, not usage text
            raise SproutError(explain(failure, parser, sys.argv[1:] if args is None else list(args))) from None
        path = self.config.get(f"{self.config.get('subcommand')}.ckpt_path")
        if path and path not in ("last", "best", "hpc"):
            check_checkpoint(path)  # before Lightning or the growth callback read it

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit" and (last := continue_last_run(self.config["fit"])) is not None:
            check_checkpoint(last)

    def instantiate_trainer(self, **kwargs):
        config = (
            self.config_init if self.subcommand is None else self.config_init[self.subcommand]
        )  # run=False: no subcommand
        plugins = slurm_without_auto_requeue(config["trainer"].get("plugins"))
        trainer = super().instantiate_trainer(**kwargs, plugins=plugins)
        for i, callback in enumerate(trainer.callbacks):
            if type(callback) in (
                TQDMProgressBar,
                RichProgressBar,
            ):  # Lightning's default bar; keep one the recipe chose
                trainer.callbacks[i] = StepProgressBar()
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a CheckpointIO the recipe chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_fit(self) -> None:
        # A checkpoint written after growth holds the grown model: build that shape from the start
        # (ModelParallelStrategy loads weights into what configure_model built; see Growth.resume_from).
        if (path := checkpoint_to_resume(self.config["fit"])) is not None:
            self.config_init["fit"]["growth"].resume_from(path)

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        lines = ["", "Training finished."]
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and (ckpt.last_model_path or ckpt.best_model_path):
            lines.append(f"  checkpoint:  {ckpt.last_model_path or ckpt.best_model_path}")
        if trainer.logger is not None and trainer.logger.log_dir:
            root = Path(trainer.logger.save_dir)
            lines.append(f"  logs:        {trainer.logger.log_dir}")
            lines.append(f"  TensorBoard: tensorboard --logdir {root}")
        print("\n".join(lines))


TRAINER_DEFAULTS = {
    "use_distributed_sampler": False,  # the data module shards by rank itself
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "sprout"},
    },
}


class _NotSproutsConcern(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger; Sprout's runs log to TensorBoard."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence what Lightning prints on every run that no Sprout user can act on: its litlogger tip,
    and torch's deprecation of ``LeafSpec``, which Lightning's own code triggers (lightning.pytorch.utilities._pytree)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NotSproutsConcern) for f in logger.filters):
            logger.addFilter(_NotSproutsConcern())
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )


def run(args: list[str] | None = None) -> None:
    """Run a recipe command; a user's mistake ends it with one paragraph and exit status 2."""
    try:
        quiet_lightning()
        SproutCLI(
            SproutModule,
            SproutDataModule,
            args=args,
            parser_kwargs={"exit_on_error": False},
            trainer_defaults={
                **TRAINER_DEFAULTS,
                "callbacks": [
                    LearningRateMonitor(logging_interval="step"),
                    TrainingRNG(),
                    Preemption(),
                ],
            },
            save_config_kwargs={"overwrite": True},
        )
    except Exception as err:  # a plugin's SproutError arrives wrapped by jsonargparse
        problem = sprout_error_in(err)
        if problem is None:
            raise
        print(f"sprout: error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
