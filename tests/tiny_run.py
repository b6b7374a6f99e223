"""A tiny but real Sprout run for the reliability tests: prepared shards, a recipe, its losses.

The data are the shared ``tiny_data`` fixture (two stdlib domains, a 320-token BPE, prepared by
``sprout.data.prepare``); the model is the ``micro`` Llama. A whole run of a dozen steps takes a
few seconds on one CPU core.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sprout.callbacks.preemption import Preemption
from sprout.checkpoint.run import AtomicCheckpointIO
from sprout.checkpoint.weights import save_model
from sprout.cli import main
from sprout.data.tokenizer import Tokenizer
from sprout.model import Llama, LlamaConfig
from sprout.protocols import TokenSelector

VOCAB, SEQ = 320, 32  # the tiny_data tokenizer's size


def recipe(path: Path, data_dir: Path, runs_dir: Path, steps: int = 12, **sections) -> Path:
    """Write a deterministic recipe; ``sections`` are merged into its top-level sections."""
    config = {
        "seed_everything": 1,
        "trainer": {
            "max_steps": steps,
            "val_check_interval": 4,
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 1,
            "gradient_clip_val": 1.0,
            "deterministic": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(runs_dir), "name": "tiny"},
            },
        },
        "model": {
            "arch": "micro",
            "arch_overrides": {"vocab_size": VOCAB, "block_size": SEQ},
            "optimizer": {
                "class_path": "torch.optim.AdamW",
                "init_args": {"lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
            },
            "schedule": {
                "warmup_steps": 3,
                "min_lr": 3e-4,
                "max_steps": steps,
            },  # fixed, so a shorter first leg keeps it
        },
        "data": {
            "data_dir": str(data_dir),
            "seq_len": SEQ,
            "batch_size": 4,
            "val_blocks": 4,
            "mixture": {"class_path": "uniform"},
        },
        "monitor": {"peak_flops": 1.0e12},  # skip measuring the machine's matmul peak
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sprout(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """``sprout <args>`` in this process: (exit status, what it wrote to stderr)."""
    err = io.StringIO()
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stderr(err):
            main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    finally:
        os.chdir(old)
    sys.stderr.write(err.getvalue())
    return code, err.getvalue()


def scalars(run_dir: Path, tag: str = "train/loss") -> dict[int, float]:
    """``{step: value}`` of one TensorBoard scalar over every event file of a run folder."""
    values: dict[int, float] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


def logged_steps(run_dir: Path, tag: str = "train/loss") -> list[int]:
    """The steps of one scalar as TensorBoard shows a run folder: its event files read in order, a
    resumed run's steps replacing those the killed one had logged past its checkpoint. A step
    logged twice, or never, shows here."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


class KilledAfterSaving(AtomicCheckpointIO):
    """Saves like Sprout, then dies by SIGKILL right after writing ``name`` at ``step``: a kill at
    the worst moment (a checkpoint complete, everything after it lost), at a known point."""

    def __init__(self, step: int, name: str = "last.ckpt") -> None:
        super().__init__()
        self.step = step
        self.name = name

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        if Path(path).name == self.name and checkpoint["global_step"] == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def save_reference(data_dir: Path, path: Path) -> Path:
    """A frozen micro model to score reference losses (what doremi and rho1 compare against)."""
    torch.manual_seed(123)
    model = Llama(LlamaConfig.from_name("micro", vocab_size=VOCAB, block_size=SEQ))
    model.init_weights()
    return save_model(model, path, {"tokenizer": Tokenizer.load(data_dir / "tokenizer.json").identity})


class GlobalRandomTokens(TokenSelector):
    """Keeps each token with probability 1/2, drawn from the *global* torch generator.

    The built-in selectors seed their own generators; this one stands for any plugin that
    does not, so a test can see that the checkpoint carries the global generator states.
    """

    def token_weights(self, token_loss, batch):
        return (torch.rand(token_loss.shape) < 0.5).to(token_loss.dtype)


class PauseAt(L.Callback):
    """Prints ``paused at step N`` and waits there until a signal has been noticed.

    Lets a test send a signal to a real training process at a known point: after training
    step ``step`` or, with ``during="validation"``, in the first validation batch after it.
    The run goes on as soon as Lightning (SIGTERM) or the preemption callback (SIGUSR1) has
    seen the signal, however long that takes on a loaded machine (the test kills a process
    that never gets one).
    """

    def __init__(self, step: int, during: str = "training") -> None:
        self.step = step
        self.during = during

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.during == "training" and trainer.global_step == self.step:
            self._pause(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if (
            self.during == "validation"
            and not trainer.sanity_checking
            and trainer.global_step == self.step
            and batch_idx == 0
            and dataloader_idx == 0
        ):
            self._pause(trainer)

    def _pause(self, trainer) -> None:
        print(f"paused at step {self.step}", flush=True)
        preemption = next(cb for cb in trainer.callbacks if isinstance(cb, Preemption))
        while not (trainer.received_sigterm or preemption.received):
            time.sleep(0.02)


class NaNAt(TokenSelector):
    """Every token counts, except that the batches numbered in ``batches`` get NaN weights.

    A stand-in for a corrupt batch or an overflow: the step's objective and gradients are NaN.
    ``from_batch`` makes every batch from that number on bad (a diverged run).
    """

    def __init__(self, batches: list[int] | None = None, from_batch: int | None = None) -> None:
        self.batches = set(batches or [])
        self.from_batch = from_batch

    def token_weights(self, token_loss, batch):
        b = int(batch["batch_no"][0])
        bad = b in self.batches or (self.from_batch is not None and b >= self.from_batch)
        return torch.full_like(token_loss, float("nan") if bad else 1.0)
