"""Preemption: a SIGTERM or SIGUSR1 ends the run at the next step boundary with a checkpoint.

Schedulers warn before they kill: SLURM sends SIGUSR1 some time before the end of a job
(``#SBATCH --signal=USR1@120``) and SIGTERM when it preempts or cancels one; Kubernetes and
most clouds send SIGTERM. Lightning already catches SIGTERM: it sets
``trainer.received_sigterm`` and stops at the next step boundary, which is reused here.
Lightning's own SIGUSR1 handler (SLURM auto-requeue) is not: it saves from inside the
signal handler, in the middle of a step, so the checkpoint mixes two steps' state. In a SLURM
job ``slurm_without_auto_requeue`` gives the Trainer ``SLURMEnvironment(auto_requeue=False)``,
so Lightning installs no SIGUSR1 handler at all and this callback's is the only one.

The checkpoint is written at the end of the training step during which the signal came, as
``last.ckpt`` in the run's checkpoint folder, so ``--ckpt_path last`` continues from it. The
callback is a Lightning ``Checkpoint`` so that Lightning runs it after every other callback
(a mixture's feedback, the periodic checkpoint) has finished with that step; the process
leaves once Lightning has logged that step, before any validation or the next step. A
SIGTERM during validation stops it after the current batch (Lightning's behaviour, so the
grace period goes to saving): the training state is saved and that validation is lost.
The process then exits with status 128 + the signal number, the shell's convention for
"ended by this signal", so a job script can tell a preempted run from a finished one.

In a SLURM batch job, SIGUSR1 (the time-limit warning the job script asked for) also requeues
the job, as Lightning's own handler would: rank 0 runs ``scontrol requeue`` once the checkpoint
is saved, and the requeued job's ``--ckpt_path last`` continues from it. SIGTERM does not
requeue: it is a cancel or a preemption, which SLURM's own preemption mode requeues or not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sprout.checkpoint.run import checkpoint_dir
from sprout.compat.lightning import log_step_before_saving


class Preemption(Checkpoint):
    """On SIGTERM or SIGUSR1: finish the current step, save ``last.ckpt``, exit with a message."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._stepped = False  # a training step finished in this process, so there is new state to save
        self._exit_code: int | None = None  # set once the checkpoint is saved

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # SIGTERM stays Lightning's (its handler also stops DDP launchers); SIGUSR1 is ours
        # (Lightning's auto-requeue is off: slurm_without_auto_requeue).
        self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._handle)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _pending(self, trainer: L.Trainer) -> signal.Signals | None:
        if self.received is None and trainer.received_sigterm:
            self.received = signal.SIGTERM
        return self.received

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._stepped = True
        # every rank must agree to stop, or the others would wait forever in the next collective
        if not trainer.strategy.reduce_boolean_decision(self._pending(trainer) is not None, all=False):
            return
        if 0 <= trainer.max_steps <= trainer.global_step:
            return  # the last step: the run ends normally and saves last.ckpt itself
        log_step_before_saving(trainer)
        self._exit_code = self._save(trainer, during="training")

    # The exit waits until Lightning has logged the step just saved; it skips any validation.
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._exit_code is not None:
            raise SIGTERMException(self._exit_code)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._exit_code is not None:
            raise SIGTERMException(self._exit_code)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning raises SIGTERMException itself when SIGTERM comes during validation; the
        # training state is whole there as well.
        if not isinstance(exception, SIGTERMException) or self._pending(trainer) is None:
            return
        if self._exit_code is None:
            self._exit_code = self._save(trainer, during="validation")
        exception.code = self._exit_code

    def _save(self, trainer: L.Trainer, during: str) -> int:
        """Save (if a step finished here), tell the user, return the exit status."""
        sig = self.received or signal.SIGTERM
        self._restore_handlers()
        if self._stepped:
            path = os.path.join(
                checkpoint_dir(trainer), ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
            )
            trainer.save_checkpoint(
                path, weights_only=False
            )  # the whole run state; said, so Lightning does not log its default
            what = f"saved {path} at step {trainer.global_step}"
        else:
            what = "no training step finished since the start, so there was nothing new to save"
        if trainer.is_global_zero:
            job = slurm_batch_job() if sig == signal.SIGUSR1 else None
            then = _requeue(job) if job else "Resume with the same command and --ckpt_path last."
            print(f"sprout: received {sig.name} during {during}; {what}. {then}", file=sys.stderr, flush=True)
        return 128 + sig.value


def slurm_without_auto_requeue(plugins: Any) -> list | None:
    """The Trainer's ``plugins`` plus ``SLURMEnvironment(auto_requeue=False)`` where Lightning would
    choose SLURM's environment itself (under ``srun``, not TorchElastic, no environment given):
    ``Preemption`` saves at a step boundary and requeues, which Lightning's handler would do mid-step."""
    given = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(p, ClusterEnvironment) for p in given) or TorchElasticEnvironment.detect():
        return plugins
    if not SLURMEnvironment.detect():
        return plugins
    return [*given, SLURMEnvironment(auto_requeue=False)]


def slurm_batch_job() -> str | None:
    """The id ``scontrol requeue`` takes for this SLURM batch job (an array task's own id), or
    None outside SLURM and in an interactive allocation (``salloc`` / ``srun --pty bash``)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else job


def _requeue(job: str) -> str:
    """Requeue the SLURM job; what the user should know about it."""
    try:
        run = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        problem = (run.stderr.strip() or f"exit status {run.returncode}") if run.returncode else None
    except (OSError, subprocess.TimeoutExpired) as error:
        problem = str(error)
    if problem:
        return f"Requeueing SLURM job {job} failed ({problem}); requeue it with `scontrol requeue {job}` or resubmit the job script, which resumes with --ckpt_path last."
    return f"Requeued SLURM job {job}; the job script's --ckpt_path last resumes from here."
