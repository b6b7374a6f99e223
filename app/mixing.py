"""The mixture controller: the one route from training back to a dynamic mixture policy.

The module calls ``observe`` from every training step, for every policy alike, once the
token and reference losses exist and before the objective is formed. Each micro-batch adds,
per domain, the summed per-token loss (minus the reference loss, clipped at 0, when the
policy ``needs_reference``, as DoReMi does) and the token count. On the last micro-batch of
every ``update_every``-th optimizer step the sums are added up across ranks, so all ranks
hand the policy the same feedback and get the same weights, then turned into per-domain
means and given to ``datamodule.update_mixture``: a policy that weighs the loss
(``loss_weights``, DoReMi's Algorithm 1) so weighs this step's loss with its update, and a
sampling policy's new weights apply from the next batch drawn, as after the step. The sums
since the last update are this controller's checkpoint state, so a resumed run makes the
same updates.

The module owns the controller and registers it as a callback (``configure_callbacks``), so
Lightning stores its state (key ``MixtureFeedback``, as before) and calls its start and end
hooks; a ``MixtureFeedback`` in ``trainer.callbacks`` is replaced by the module's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from sprout.errors import SproutError
from sprout.loss import IGNORE_INDEX


class MixtureFeedback(L.Callback):
    """Feeds a dynamic mixture policy the mean (excess) loss per domain since its last update.

    Does nothing for static policies. The policy sets the cadence with its ``update_every``.
    At each update it logs the feedback as ``mixture/feedback/<domain>`` and the policy's
    ``metrics()`` (if any) under ``mixture/``, e.g. doremi's ``mixture/current/<domain>``;
    at the end of training it prints the policy's ``report()`` (if any).
    """

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # [2, domains] float64: loss sums, token counts

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

    def observe(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Mapping[str, Any],
        token_loss: torch.Tensor,
        last_micro_batch: bool,
    ) -> None:
        """Add a micro-batch (``batch`` with ``ref_loss`` where the policy needs it) before its
        loss is formed; on the step's last micro-batch, update the policy if the step that is
        ending is an update step."""
        policy = self._policy(trainer)
        if policy is None:
            return
        self._add(policy, batch, token_loss, batch.get("ref_loss"))
        step = trainer.global_step + 1  # optimizer steps done once this one ends
        if last_micro_batch and step % policy.update_every == 0:
            self._update(trainer, pl_module, policy, step)

    @staticmethod
    def domain_factors(trainer: L.Trainer, like: torch.Tensor) -> torch.Tensor | None:
        """The policy's per-domain factors on the token losses (``[domains]``, in ``like``'s dtype
        and device, indexed as ``batch["domain"]``), or ``None`` when it leaves the loss alone."""
        dm = getattr(trainer, "datamodule", None)
        weights = getattr(dm, "mixture", None) and dm.mixture.loss_weights()
        if weights is None:
            return None
        return torch.tensor([weights[d] for d in dm.domains], dtype=like.dtype, device=like.device)

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
        for domain, value in feedback.items():
            pl_module.log(f"mixture/feedback/{domain}", value)
        for name, value in policy.metrics().items():
            pl_module.log(f"mixture/{name}", value)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        policy = self._policy(trainer)
        if policy is not None and (report := policy.report()) is not None:
            rank_zero_info(report)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": None if self.sums is None else self.sums.cpu()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sums = state_dict["sums"]
