"""The NaN/inf guard: a step whose loss or gradient norm is not finite changes nothing.

One bad batch (a corrupt document, an overflow) must not poison the weights of a week-long
run, and a run that has diverged must stop rather than burn compute on NaNs. A bad step's
gradients are dropped before the optimizer sees them, so its update is skipped and the
weights and optimizer state stay as they were; the step is counted
(``nan_guard/skipped``) and reported. After ``max_consecutive`` bad steps in a row the run
stops with a checkpoint whose weights are from before the bad steps and an error naming
the steps, the domains in their batches and the last finite loss.

With fp16 mixed precision the grad scaler already skips overflowing steps and lowers its
scale, so there only the loss is checked.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from sprout.checkpoint.run import checkpoint_dir
from sprout.errors import SproutError
from sprout.parallel import total_norm


class NaNGuard(Checkpoint):
    """Skips updates with a non-finite loss or gradient norm; stops after ``max_consecutive`` in a row.

    A Lightning ``Checkpoint`` so that it runs after the other callbacks at the end of a step.

    Args:
        max_consecutive: bad steps in a row that stop the run (the first good step resets the count).
    """

    def __init__(self, max_consecutive: int = 5) -> None:
        if max_consecutive < 1:
            raise SproutError(f"nan_guard.max_consecutive must be at least 1, got {max_consecutive}.")
        self.max_consecutive = max_consecutive
        self.skipped = 0  # bad steps in the whole run
        self.consecutive = 0
        self.bad_steps: list[int] = []  # the current streak
        self.bad_domains: set[str] = set()
        self.last_finite: tuple[int, float] | None = None  # (step, loss)
        self._losses: list[torch.Tensor] = []  # this step's micro-batch losses
        self._domains: set[int] = set()  # domain indices in this step's batches
        self._stop_pending = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, dict) and "domain" in batch:
            self._domains.update(batch["domain"].unique().tolist())

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Once per optimizer step, after backward (and fp16 unscaling), before the update."""
        losses, domains = self._losses, self._domains
        self._losses, self._domains = [], set()
        bad = not all(bool(torch.isfinite(loss).all()) for loss in losses)
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            bad = bad or (bool(grads) and not bool(torch.isfinite(total_norm(grads))))
        # DDP ranks all-reduce gradients, so they agree on those; a rank's own loss they must be told
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        step = trainer.global_step
        if not bad:
            self.consecutive, self.bad_steps, self.bad_domains = 0, [], set()
            if losses:
                self.last_finite = (step, float(torch.stack(losses).float().mean()))
        else:
            optimizer.zero_grad(set_to_none=True)  # the optimizer skips parameters without gradients
            names = list(getattr(trainer.datamodule, "domains", None) or [])
            self.skipped += 1
            self.consecutive += 1
            self.bad_steps.append(step)
            self.bad_domains |= {names[d] if d < len(names) else str(d) for d in domains}
            shown = ", ".join(f"{float(x):g}" for x in losses)
            rank_zero_warn(
                f"Step {step}: the loss ({shown}) or the gradient norm is not finite; its update was skipped ({self.consecutive} in a row, {self.skipped} in this run)."
            )
            self._stop_pending = self.consecutive >= self.max_consecutive
        pl_module.log("nan_guard/skipped", float(self.skipped))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._stop_pending:
            self._stop_pending = False
            raise SproutError(self._stop(trainer))

    def _stop(self, trainer: L.Trainer) -> str:
        first, last = self.bad_steps[0], self.bad_steps[-1]
        path = os.path.join(checkpoint_dir(trainer), f"nonfinite-step{last:06d}.ckpt")
        trainer.save_checkpoint(
            path, weights_only=False
        )  # the whole run state; said, so Lightning does not log its default
        previous = (
            f"{self.last_finite[1]:.4f} at step {self.last_finite[0]}" if self.last_finite else "none in this run"
        )
        domains = ", ".join(sorted(self.bad_domains)) or "unknown"
        return (
            f"Training stopped: the loss or gradient norm was not finite in {self.consecutive} steps in a row (steps {first}-{last}; "
            f"domains in those batches: {domains}); the last finite loss was {previous}. Their updates were skipped, so {path} holds the "
            f"weights from before step {first}; resuming from it continues after the bad batches. Lower the learning rate (model.optimizer) "
            f"or check those domains' data, then resume with --ckpt_path {path} (or raise nan_guard.max_consecutive to tolerate longer streaks)."
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "consecutive": self.consecutive,
            "bad_steps": list(self.bad_steps),
            "bad_domains": sorted(self.bad_domains),
            "last_finite": self.last_finite,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict["skipped"])
        self.consecutive = int(state_dict["consecutive"])
        self.bad_steps = list(state_dict["bad_steps"])
        self.bad_domains = set(state_dict["bad_domains"])
        last = state_dict["last_finite"]
        self.last_finite = None if last is None else (int(last[0]), float(last[1]))
