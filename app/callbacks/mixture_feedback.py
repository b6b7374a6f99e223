"""The feedback path of dynamic mixtures: per-domain losses from training back to the policy.

Every training batch adds, per domain, the summed per-token loss (minus the reference loss,
clipped at 0, when the policy ``needs_reference``, as DoReMi does) and the token count.
Every ``update_every`` optimizer steps of the policy the sums are added up across ranks, so
all ranks hand the policy the same feedback and get the same weights, then turned into
per-domain means and given to ``datamodule.update_mixture``. The sums since the last update
are this callback's checkpoint state, so a resumed run makes the same updates.

When a policy weighs the loss (``loss_weights``, DoReMi's Algorithm 1) the step's update
must come before its loss: the module calls ``observe`` from ``training_step``, once the
token and reference losses exist and before the objective is formed, and the update is
made on the last micro-batch of the step. Otherwise the batch is observed after the step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from app.errors import SproutError
from app.loss import IGNORE_INDEX


class MixtureFeedback(L.Callback):
    """Feeds a dynamic mixture policy the mean (excess) loss per domain since its last update.

    Does nothing for static policies. The policy sets the cadence with its ``update_every``.
    At each update it logs the feedback as ``mixture/feedback/<domain>`` and the policy's
    ``metrics()`` (if any) under ``mixture/``, e.g. doremi's ``mixture/current/<domain>``;
    at the end of training it prints the policy's ``report()`` (if any).
    """

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # [2, domains] float64: loss sums, token counts
        self.last_update = 0

    @staticmethod
    def _policy(trainer: L.Trainer):
        policy = getattr(getattr(trainer, "datamodule", None), "mixture", None)
        return policy if policy is not None and policy.dynamic else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        policy = self._policy(trainer)
        if policy is None:
            return
        every = policy.update_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise SproutError(
                f"The dynamic mixture policy {type(policy).__name__} has update_every={every!r}; a dynamic policy must set update_every to a positive number of steps between weight updates."
            )
        n = len(trainer.datamodule.domains)
        if self.sums is None:
            self.sums = torch.zeros(2, n, dtype=torch.float64)
        elif self.sums.shape != (2, n):
            raise SproutError(
                f"The checkpoint's mixture feedback covers {self.sums.shape[1]} domains but data.domains has {n}; resume with the same data.domains."
            )
        self.sums = self.sums.to(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        policy = self._policy(trainer)
        if policy is None or policy.loss_weights() is not None:
            return  # static, or observed in training_step
        if not isinstance(outputs, Mapping) or "token_loss" not in outputs:
            raise SproutError(
                f"A dynamic mixture ({type(policy).__name__}) needs the per-token losses of each step, but {type(pl_module).__name__}.training_step returned no 'token_loss'. Use SproutModule or return {{'loss': ..., 'token_loss': ...}}."
            )
        self._add(policy, batch, outputs["token_loss"], outputs.get("ref_loss"))
        step = trainer.global_step
        if step % policy.update_every or step == self.last_update:
            return  # not an update step, or a later micro-batch of the step that already updated
        self._update(trainer, pl_module, policy, step)

    def observe(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Mapping[str, Any],
        token_loss: torch.Tensor,
        ref_loss: torch.Tensor | None,
        last_micro_batch: bool,
    ) -> None:
        """Add a micro-batch before its loss is formed; on the step's last micro-batch, update
        the policy if the step that is ending is an update step (for loss-weighing policies)."""
        policy = self._policy(trainer)
        self._add(policy, batch, token_loss, ref_loss)
        step = trainer.global_step + 1  # optimizer steps done once this one ends
        if last_micro_batch and step % policy.update_every == 0:
            self._update(trainer, pl_module, policy, step)

    def _add(
        self, policy: Any, batch: Mapping[str, Any], token_loss: torch.Tensor, ref_loss: torch.Tensor | None
    ) -> None:
        loss = token_loss.detach().double()
        if policy.needs_reference:
            if ref_loss is None:
                raise SproutError(
                    f"The mixture policy {type(policy).__name__} needs reference losses: set model.reference to a reference checkpoint (scored online) or data.reference_scores to offline scores from sprout score."
                )
            loss = (loss - ref_loss.double()).clamp_min(0)
        valid = (batch["targets"] != IGNORE_INDEX) & loss.isfinite()  # a step the NaN guard skips adds nothing
        rows = torch.stack([loss.where(valid, 0.0).sum(dim=1), valid.sum(dim=1).double()])
        self.sums.index_add_(1, batch["domain"].to(self.sums.device), rows.to(self.sums.device))

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, policy: Any, step: int) -> None:
        total = trainer.strategy.reduce(self.sums.clone(), reduce_op="sum").cpu()
        dm = trainer.datamodule
        feedback = {d: float(total[0, i] / total[1, i]) for i, d in enumerate(dm.domains) if total[1, i] > 0}
        dm.update_mixture(step, feedback)
        self.sums.zero_()
        self.last_update = step
        for domain, value in feedback.items():
            pl_module.log(f"mixture/feedback/{domain}", value)
        for name, value in policy.metrics().items():
            pl_module.log(f"mixture/{name}", value)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        policy = self._policy(trainer)
        if policy is not None and (report := policy.report()) is not None:
            rank_zero_info(report)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": None if self.sums is None else self.sums.cpu(), "last_update": self.last_update}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sums = state_dict["sums"]
        self.last_update = int(state_dict["last_update"])
