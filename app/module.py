"""The LightningModule: one training step over the components it owns and calls: the model
(``sprout.model``), token losses (``sprout.loss``), selector and mixture controller (``sprout.mixing``),
objective, optimizer (``sprout.optim``), schedule segments and the token/FLOP counter."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from sprout import registry
from sprout.checkpoint.weights import load_weights_into
from sprout.counter import Counter
from sprout.growth.reshape import stored_config
from sprout.loss import IGNORE_INDEX, chunked_token_losses
from sprout.mixing import MixtureFeedback
from sprout.model import Llama, LlamaConfig
from sprout.objective import kept_share, objective, token_weights
from sprout.optim import build_optimizer, clip_gradients, clips_unscaled, probe_optimizer
from sprout.parallel import Parallelism, compute_dtype, data_parallel_mesh, parallelize, total_norm
from sprout.protocols import TokenSelector, TrainableModel
from sprout.reference import Reference, online_reference
from sprout.schedule import Schedule, WarmupCosine
from sprout.setup_checks import check_data_fits
from sprout.validation import DomainLosses


class SproutModule(L.LightningModule):
    """Causal-LM pre-training of a Llama.

    Args:
        arch: a named configuration from ``sprout.model.CONFIGS`` (``micro``, ``tiny-llama-1.1b``, ...).
        arch_overrides: fields of ``LlamaConfig`` to change, e.g. ``{vocab_size: 4096}``.
        selector: a ``selector`` plugin (default ``all``: every token counts).
        optimizer: the optimizer class and its arguments; weight decay applies to matrices only
            unless ``decay_norms_and_biases``.
        schedule: warm-up then cosine decay to ``min_lr``.
        reference: a reference model for selectors that compare against one (``rho1``): a Sprout
            ``.ckpt`` or a Hugging Face Llama folder. It scores every batch online (one extra
            no-grad forward) unless ``data.reference_scores`` holds offline scores, which must
            then have been made by this same reference.
        parallel: activation checkpointing, compiled blocks and, under ``ModelParallelStrategy``,
            FSDP2 sharding (``full`` or ``hybrid``); see ``sprout.parallel.Parallelism``.
        init_from: start from this checkpoint's weights instead of a random initialisation
            (continued pre-training; a Sprout ``.ckpt`` or a Hugging Face Llama folder of the
            same shape). Only the weights: optimizer and schedule start afresh.
        init: how fresh weights are drawn, ``llama`` (N(0, init_std)) or ``tinyllama``
            (TinyLlama's lit_gpt); see ``sprout.model.init``.
        decay_norms_and_biases: weight decay on every parameter, as TinyLlama (default: matrices only).
    """

    def __init__(
        self,
        arch: str = "micro",
        arch_overrides: dict[str, Any] | None = None,
        selector: TokenSelector | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        schedule: WarmupCosine | None = None,
        reference: str | None = None,
        parallel: Parallelism | None = None,
        init_from: str | None = None,
        init: str = "llama",
        decay_norms_and_biases: bool = False,
    ) -> None:
        super().__init__()
        self.config = LlamaConfig.from_name(arch, **{"init": init, **(arch_overrides or {})})
        self.selector = selector if selector is not None else registry.create("selector", "all")
        self.optimizer_factory = optimizer
        self.decay_norms_and_biases = decay_norms_and_biases
        self.recipe_lr = probe_optimizer(optimizer)  # the optimizer's lr, checked once here
        self.lr_schedule = Schedule(schedule or WarmupCosine())
        self.reference_path = reference
        self.parallel = parallel or Parallelism()
        self.init_from = init_from
        self.reference: Reference | None = None
        self.mixing = MixtureFeedback()  # registered as a callback (configure_callbacks)
        self.counter = Counter()
        self._mesh = None  # FSDP2's device mesh, made once: every model (and the reference) shards over it
        self.model: TrainableModel | None = None  # a Llama, or a growth operator's stand-in while it trains one
        self._val = DomainLosses()

    @property
    def schedule(self) -> WarmupCosine:
        """The warm-up + cosine in force (growth may have given stage 2 its own)."""
        return self.lr_schedule.current.shape

    @property
    def peak_lr(self) -> float | None:
        """The peak LR in force when growth set one (``growth.stage2_lr``); ``None``: the optimizer's."""
        return self.lr_schedule.current.peak_lr

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.mixing]

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self.build_model(self.config)
            if self.init_from is not None:
                load_weights_into(self.model, self.config, self.init_from)

    def build_model(self, config: LlamaConfig) -> nn.Module:
        """A freshly initialised Llama laid out for this run: checkpointed/compiled blocks as
        ``parallel`` asks, and under ``ModelParallelStrategy`` built on the meta device, sharded
        with FSDP2, then materialised shard by shard (the full model never exists on one rank)."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if not isinstance(strategy, ModelParallelStrategy):
            return parallelize(Llama(config), self.parallel)
        with torch.device("meta"):
            model = Llama(config)
        parallelize(model, self.parallel, self._data_parallel_mesh(strategy), compute_dtype(self.trainer.precision))
        model.to_empty(device=strategy.root_device)
        model.init_weights()
        return model

    def _data_parallel_mesh(self, strategy: ModelParallelStrategy):
        """One mesh for the run: a hybrid mesh makes new process groups each time it is built."""
        if self._mesh is None:
            self._mesh = data_parallel_mesh(strategy, self.parallel.sharding)
        return self._mesh

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if stage == "fit":
            self.schedule.check(
                self.recipe_lr, self.trainer.max_steps, warn_odd=dm is not None and self.trainer.is_global_zero
            )
        if stage == "fit" and self.reference is None:
            self._setup_reference(dm)
        if dm is not None:
            check_data_fits(self.config, dm)

    def _setup_reference(self, dm: Any) -> None:
        """The online reference, if any (``sprout.reference.online_reference``), laid out like the model."""
        self.reference = online_reference(self.reference_path, self.config.vocab_size, dm, self.selector)
        if self.reference is not None and isinstance(strategy := self.trainer.strategy, ModelParallelStrategy):
            self.reference.shard(
                self._data_parallel_mesh(strategy), strategy.root_device, compute_dtype(self.trainer.precision)
            )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    # -- training -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        trainer = self._trainer  # None where the step is called alone (tests)
        online = self.reference is not None and "ref_loss" not in batch
        scorer = self.reference.model.config if online else None
        self.counter.count(batch["input_ids"], self.config, scorer, trainer.world_size if trainer else 1)
        loss = self._token_losses(batch)
        valid = batch["targets"] != IGNORE_INDEX
        batch = {**batch, "valid": valid}  # the one place the batch gains keys: valid, and ref_loss online
        if online:
            batch["ref_loss"] = self.reference.losses(
                batch["input_ids"], batch["targets"], next(self.model.parameters()).dtype
            )
        selected = self.selector.token_weights(loss.detach(), batch).to(loss.dtype)
        last = trainer is None or (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        self.mixing.observe(trainer, self, batch, loss.detach(), last)  # before the factors: Algorithm 1
        factors = self.mixing.domain_factors(trainer, loss)
        weights = token_weights(selected, valid, batch.get("domain"), factors)
        n_valid = valid.sum().clamp_min(1)
        self.log("train/loss", loss.detach().masked_fill(~valid, 0).sum() / n_valid, prog_bar=True)
        self.log("select/fraction", (weights > 0).sum() / n_valid)
        names = list(getattr(getattr(trainer, "datamodule", None), "domains", []))
        if "domain" in batch and names:
            for name, share in zip(names, kept_share(weights, batch["domain"], len(names))):
                self.log(f"select/kept_share/{name}", share)
        for name, value in self.selector.metrics().items():
            self.log(f"select/{name}", value)
        out = {"loss": objective(loss, weights, across_ranks=factors is not None), "token_loss": loss.detach()}
        return {**out, "ref_loss": batch["ref_loss"]} if "ref_loss" in batch else out

    def _token_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-token losses [B, T]; the head is applied in chunks, so the batch's logits never exist at once."""
        hidden = self.model.hidden_states(batch["input_ids"])
        return chunked_token_losses(hidden, self.model.output.weight, batch["targets"], compiled=self.parallel.compile)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", total_norm(grads))

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        if gradient_clip_val and clips_unscaled(self.trainer.precision_plugin, optimizer):
            clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optimizer_factory, self.model, self.peak_lr, self.decay_norms_and_biases)
        optimizer_lr = optimizer.param_groups[0]["lr"]
        # the trainer's step, and segments read when the factor is: a scheduler made at growth or on
        # resume, or a stage restored after the optimizer (ModelParallelStrategy), lands right
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda _: self.lr_schedule.factor(self.trainer.global_step, optimizer_lr, self.trainer.max_steps),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    # -- validation: per domain, token-weighted --------------------------------------------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._val.add(dataloader_idx, self._token_losses(batch), batch["targets"])

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        names = list(getattr(getattr(self.trainer, "datamodule", None), "domains", []))
        per_domain = self._val.means(names, lambda sums: self.trainer.strategy.reduce(sums, reduce_op="sum"))
        prefix = "test" if self.trainer.testing else "val"
        for name, value in per_domain.items():
            self.log(f"{prefix}/loss/{name}", value, sync_dist=False)
        if per_domain:
            self.log(f"{prefix}/loss", torch.stack(list(per_domain.values())).mean(), prog_bar=True, sync_dist=False)

    on_test_epoch_end = on_validation_epoch_end

    # -- checkpoint -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        checkpoint["sprout"] = {
            "model_config": self.config.to_dict(),
            "tokenizer": getattr(dm, "tokenizer_identity", None),
            **self.lr_schedule.state_dict(),
        }
        checkpoint[Counter.KEY] = self.counter.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the schedule's segment and the counts, and rebuild the model in the shape the
        checkpoint holds (a grown one) before Lightning loads the weights (this runs before the
        optimizer is set up, except under ``ModelParallelStrategy``: see ``sprout.growth.reshape``)."""
        self.lr_schedule.load_state_dict(checkpoint.get("sprout") or {})
        if (counted := Counter.stored_in(checkpoint)) is not None:
            self.counter.load_state_dict(counted)
        config = stored_config(self.config, checkpoint, getattr(self._trainer, "ckpt_path", None))
        if config is not None and (config != self.config or not isinstance(self.model, Llama)):
            self.config = config
            self.model = self.build_model(config)
