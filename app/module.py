"""The LightningModule: one training step, its loss, optimizer and schedule.

The model is plain PyTorch (``app.model``); the token selector decides which tokens
count; everything else (data, growth, monitoring) lives in the data module and the
callbacks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from app import registry
from app.callbacks.growth import Growth
from app.callbacks.mixture_feedback import MixtureFeedback
from app.checkpoint.weights import load_model
from app.data.scores import describe, path_sha256
from app.errors import SproutError, warn
from app.loss import IGNORE_INDEX, chunked_token_losses
from app.model import Llama, LlamaConfig
from app.parallel import Parallelism, compute_dtype, data_parallel_mesh, fused_optimizer_kwargs, parallelize, total_norm
from app.protocols import TokenSelector, TrainableModel
from app.reference import Reference
from app.schedule import WarmupCosine


class SproutModule(L.LightningModule):
    """Causal-LM pre-training of a Llama.

    Args:
        arch: a named configuration from ``app.model.CONFIGS`` (``micro``, ``tiny-llama-1.1b``, ...).
        arch_overrides: fields of ``LlamaConfig`` to change, e.g. ``{vocab_size: 4096}``.
        selector: a ``selector`` plugin (default ``all``: every token counts).
        optimizer: the optimizer class and its arguments; weight decay applies to matrices only.
        schedule: warm-up then cosine decay to ``min_lr``.
        reference: a reference model for selectors that compare against one (``rho1``): a Sprout
            ``.ckpt`` or a Hugging Face Llama folder. It scores every batch online (one extra
            no-grad forward) unless ``data.reference_scores`` holds offline scores, which must
            then have been made by this same reference.
        parallel: activation checkpointing, compiled blocks and, under ``ModelParallelStrategy``,
            FSDP2 sharding (``full`` or ``hybrid``); see ``app.parallel.Parallelism``.
        init_from: start from this checkpoint's weights instead of a random initialisation
            (continued pre-training; a Sprout ``.ckpt`` or a Hugging Face Llama folder of the
            same shape). Only the weights: optimizer and schedule start afresh.
        init: how fresh weights are drawn, ``llama`` (N(0, init_std)) or ``tinyllama``
            (TinyLlama's lit_gpt); see ``app.model.init``.
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
    ) -> None:
        super().__init__()
        self.config = LlamaConfig.from_name(arch, **{"init": init, **(arch_overrides or {})})
        self.selector = selector if selector is not None else registry.create("selector", "all")
        self.optimizer_factory = optimizer
        self.recipe_lr = _probe_optimizer(optimizer)  # the optimizer's lr, checked once here
        self.schedule = schedule or WarmupCosine()
        self.schedule_start = 0  # global step the LR schedule counts from (moved by growth)
        self.peak_lr: float | None = None  # the grown model's peak LR (growth.stage2_lr); None: the optimizer's
        self.reference_path = reference
        self.parallel = parallel or Parallelism()
        self.init_from = init_from
        self.reference: Reference | None = None
        self._mesh = None  # FSDP2's device mesh, made once: every model (and the reference) shards over it
        self.model: TrainableModel | None = None  # a Llama, or a growth operator's stand-in while it trains one
        self._val_sums: dict[int, torch.Tensor] = {}

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self.build_model(self.config)
            if self.init_from is not None:
                self._load_initial_weights()

    def _load_initial_weights(self) -> None:
        """Copy ``init_from``'s weights into the freshly built (possibly sharded) model."""
        source, _ = load_model(self.init_from)
        ignore = {"attention", "init_std", "init", "block_size"}  # no effect on the weights' meaning
        differ = {
            k: (v, getattr(self.config, k))
            for k, v in source.config.to_dict().items()
            if k not in ignore and v != getattr(self.config, k)
        }
        if differ:
            fields = ", ".join(f"{k}={a} in the checkpoint vs {b} in the recipe" for k, (a, b) in differ.items())
            raise SproutError(
                f"model.init_from={self.init_from} has another shape than the recipe's model ({fields}). Set model.arch / model.arch_overrides to the checkpoint's shape, or start from a matching checkpoint."
            )
        set_model_state_dict(self.model, source.state_dict(), options=StateDictOptions(full_state_dict=True))

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
        if stage == "fit" and self.reference is None:
            self._setup_reference(dm)
        if dm is None:
            return
        if dm.vocab_size > self.config.vocab_size:
            raise SproutError(
                f"The tokenizer {dm.tokenizer_path} has {dm.vocab_size} tokens but the model's embedding has "
                f"vocab_size={self.config.vocab_size}. Set model.arch_overrides.vocab_size to at least {dm.vocab_size} "
                f"(a multiple of 64 is fastest) or use the tokenizer the model was built for."
            )
        if dm.seq_len > self.config.block_size:
            raise SproutError(
                f"data.seq_len={dm.seq_len} is longer than the model's context block_size={self.config.block_size}. Lower data.seq_len or set model.arch_overrides.block_size."
            )
        if stage == "fit" and self.trainer.is_global_zero:
            self._warn_about_schedule()

    def _warn_about_schedule(self) -> None:
        """Settings that are legal but almost surely wrong: a run that never leaves warm-up, a floor above the peak."""
        max_steps = self.schedule.max_steps or self.trainer.max_steps
        source = "model.schedule.max_steps" if self.schedule.max_steps else "trainer.max_steps"
        if max_steps and max_steps > 0 and self.schedule.warmup_steps >= max_steps:
            reached = self.schedule.factor(max_steps - 1, self.recipe_lr, max_steps)
            warn(
                f"model.schedule.warmup_steps={self.schedule.warmup_steps} is not below the run's {max_steps} steps ({source}={max_steps}): "
                f"the learning rate never leaves warm-up and ends at {reached:.1%} of its peak lr={self.recipe_lr:g}. "
                f"Set model.schedule.warmup_steps to a small share of the run, e.g. {max(1, max_steps // 10)}."
            )
        if self.schedule.min_lr > self.recipe_lr:
            warn(
                f"model.schedule.min_lr={self.schedule.min_lr:g} is above the peak model.optimizer.init_args.lr={self.recipe_lr:g}: the cosine "
                f'"decay" raises the learning rate after warm-up. Set min_lr below lr (TinyLlama: lr 4e-4, min_lr 4e-5).'
            )

    def _setup_reference(self, dm: Any) -> None:
        """Reference losses come from offline scores in the batch, else from a frozen model online."""
        offline = getattr(dm, "reference_scores_identity", None)
        if offline is not None:
            sha = path_sha256(self.reference_path) if self.reference_path is not None else offline["sha256"]
            if sha != offline["sha256"]:
                raise SproutError(
                    f"data.reference_scores={dm.reference_scores} were made by the reference {describe(offline)}, but model.reference is "
                    f"{self.reference_path} (sha256 {sha[:12]}). Re-score the data with model.reference, or fix one of the two options."
                )
            return
        if self.reference_path is not None:
            self.reference = Reference(
                self.reference_path, self.config.vocab_size, getattr(dm, "tokenizer_identity", None)
            )
            strategy = self.trainer.strategy
            if isinstance(strategy, ModelParallelStrategy):
                self.reference.shard(
                    self._data_parallel_mesh(strategy), strategy.root_device, compute_dtype(self.trainer.precision)
                )
            if dm is not None and dm.seq_len > self.reference.block_size:
                raise SproutError(
                    f"data.seq_len={dm.seq_len} is longer than the context block_size={self.reference.block_size} of the reference model {self.reference_path}. Lower data.seq_len or use a reference trained for longer sequences."
                )
        elif self.selector.needs_reference or getattr(getattr(dm, "mixture", None), "needs_reference", False):
            who = (
                f"selector {type(self.selector).__name__}"
                if self.selector.needs_reference
                else f"mixture {type(dm.mixture).__name__}"
            )
            raise SproutError(
                f"The {who} needs reference losses: set model.reference to a reference model checkpoint "
                "(scored online every step) or data.reference_scores to a folder written by tools/score_reference.py (offline, no extra cost)."
            )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    # -- training -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss = self._token_losses(batch)
        valid = batch["targets"] != IGNORE_INDEX
        if self.reference is not None and "ref_loss" not in batch:
            batch = {
                **batch,
                "ref_loss": self.reference.losses(
                    batch["input_ids"], batch["targets"], next(self.model.parameters()).dtype
                ),
            }
        weights = self.selector.token_weights(loss.detach(), {**batch, "valid": valid}).to(loss.dtype) * valid
        domain_weights = self._domain_loss_weights(batch, loss, batch_idx)
        if domain_weights is not None:
            weights = weights * domain_weights[batch["domain"]].unsqueeze(1)
        total = weights.sum()  # Σ w·ℓ / Σ w exactly; an all-zero batch (nothing counts) gives 0, not 0/0
        objective = (weights * loss).sum() / torch.where(total == 0, torch.ones_like(total), total)
        n_valid = valid.sum().clamp_min(1)
        self.log("train/loss", loss.detach().masked_fill(~valid, 0).sum() / n_valid, prog_bar=True)
        self.log("select/fraction", (weights > 0).sum() / n_valid)
        if "domain" in batch:
            self._log_kept_share(weights, batch["domain"])
        for name, value in self.selector.metrics().items():
            self.log(f"select/{name}", value)
        # token losses go to the callbacks, e.g. the feedback of a dynamic mixture
        out = {"loss": objective, "token_loss": loss.detach()}
        if "ref_loss" in batch:
            out["ref_loss"] = batch["ref_loss"]
        return out

    def _domain_loss_weights(
        self, batch: dict[str, torch.Tensor], loss: torch.Tensor, batch_idx: int
    ) -> torch.Tensor | None:
        """Per-domain factors on the token losses from a mixture policy that weighs the loss
        (DoReMi's alpha, updated with this step's batch first, as in its Algorithm 1), or None."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        policy = getattr(dm, "mixture", None)
        if policy is None or policy.loss_weights() is None:
            return None
        feedback = next((c for c in self.trainer.callbacks if isinstance(c, MixtureFeedback)), None)
        if feedback is None:
            raise SproutError(
                f"The mixture {type(policy).__name__} weighs the loss by domain and needs the MixtureFeedback callback, which `sprout fit` adds; add app.callbacks.MixtureFeedback to trainer.callbacks."
            )
        last = (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0
        feedback.observe(self.trainer, self, batch, loss.detach(), batch.get("ref_loss"), last)
        alpha = policy.loss_weights()
        return torch.tensor([alpha[d] for d in dm.domains], dtype=loss.dtype, device=loss.device)

    def _token_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-token losses [B, T]; the head is applied in chunks, so the batch's logits never exist at once."""
        hidden = self.model.hidden_states(batch["input_ids"])
        return chunked_token_losses(hidden, self.model.output.weight, batch["targets"], compiled=self.parallel.compile)

    def _log_kept_share(self, weights: torch.Tensor, domain: torch.Tensor) -> None:
        """Which domains the kept tokens come from: ``select/kept_share/<domain>`` sums to 1."""
        names = list(getattr(getattr(self._trainer, "datamodule", None), "domains", []))
        if not names:
            return
        kept = (weights > 0).sum(dim=1).float()
        per_domain = torch.zeros(len(names), device=kept.device).index_add_(0, domain, kept)
        share = per_domain / per_domain.sum().clamp_min(1)
        for i, name in enumerate(names):
            self.log(f"select/kept_share/{name}", share[i])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", total_norm(grads))

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip as Lightning does, except that its AMP plugin refuses any optimizer that unscales
        gradients itself (fused AdamW, Sprout's default) even in bf16-mixed, where nothing is
        scaled: there the plain precision plugin's clipping is the right one. With fp16's grad
        scaler Lightning's check stands."""
        plugin = self.trainer.precision_plugin
        if (
            gradient_clip_val
            and getattr(plugin, "scaler", None) is None
            and getattr(optimizer, "_step_supports_amp_scaling", False)
        ):
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or GradClipAlgorithmType.NORM)
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = self.optimizer_factory(groups, **fused_optimizer_kwargs(self.optimizer_factory, params))
        if self.peak_lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = self.peak_lr
        recipe_peak = optimizer.param_groups[0]["lr"]
        max_steps = self.schedule.max_steps or self.trainer.max_steps
        if max_steps is None or max_steps < 0:
            raise SproutError(
                "The LR schedule needs a length: set trainer.max_steps or model.schedule.max_steps in the recipe."
            )
        # the step comes from the trainer, not the scheduler's own count, so a scheduler made at
        # growth or on resume lands on the right point of its window [schedule_start, max_steps]
        # the schedule and peak are read when the factor is, so a growth stage restored after the
        # optimizer was built (ModelParallelStrategy) still decays to its own floor
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda _: self.schedule.factor(
                max(0, self.trainer.global_step - self.schedule_start),
                self.peak_lr or recipe_peak,
                max_steps - self.schedule_start,
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    # -- validation: per domain, token-weighted --------------------------------------------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        loss = self._token_losses(batch)
        valid = batch["targets"] != IGNORE_INDEX
        sums = torch.stack([loss.masked_fill(~valid, 0).sum(), valid.sum().to(loss.dtype)])
        self._val_sums[dataloader_idx] = self._val_sums.get(dataloader_idx, 0) + sums.detach().double()

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        domains = self._domain_names()
        per_domain = {}
        for idx, sums in sorted(self._val_sums.items()):
            total = self.trainer.strategy.reduce(sums, reduce_op="sum")
            per_domain[domains[idx]] = (total[0] / total[1].clamp_min(1)).float()
        self._val_sums = {}
        prefix = "test" if self.trainer.testing else "val"
        for name, value in per_domain.items():
            self.log(f"{prefix}/loss/{name}", value, sync_dist=False)
        if per_domain:
            self.log(f"{prefix}/loss", torch.stack(list(per_domain.values())).mean(), prog_bar=True, sync_dist=False)

    on_test_epoch_end = on_validation_epoch_end

    def _domain_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None)
        return list(getattr(dm, "domains", [])) or [str(i) for i in range(len(self._val_sums))]

    # -- checkpoint -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        checkpoint["sprout"] = {
            "model_config": self.config.to_dict(),
            "tokenizer": getattr(dm, "tokenizer_identity", None),
            "schedule_start": self.schedule_start,
            "schedule": dataclasses.asdict(self.schedule),
            "peak_lr": self.peak_lr,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written after growth holds a larger model than the recipe's ``arch``:
        rebuild the model in the checkpoint's shape before Lightning loads the weights (this
        runs before the optimizer is set up, except under ``ModelParallelStrategy``)."""
        sprout = checkpoint.get("sprout") or {}
        self.schedule_start = sprout.get("schedule_start", 0)
        if "schedule" in sprout:  # growth may have given stage 2 its own schedule and peak LR
            self.schedule = WarmupCosine(**sprout["schedule"])
            self.peak_lr = sprout["peak_lr"]
        saved = sprout.get("model_config")
        if saved is None:
            return
        config = LlamaConfig.from_dict(
            {**saved, "attention": self.config.attention, "init_std": self.config.init_std, "init": self.config.init}
        )
        if config != self.config and not Growth.grown_in(checkpoint):
            differ = ", ".join(
                f"{k} {v} (recipe: {getattr(self.config, k)})"
                for k, v in config.to_dict().items()
                if v != getattr(self.config, k)
            )
            path = getattr(self._trainer, "ckpt_path", None) or "to resume from"
            raise SproutError(
                f"The checkpoint {path} holds another model than the recipe's: {differ}. Resume with the recipe that wrote it "
                "(its model.arch and model.arch_overrides); to train a larger model from it, start a new run with growth.source set to it."
            )
        if config != self.config or not isinstance(self.model, Llama):
            self.config = config
            self.model = self.build_model(config)

    # -- growth ---------------------------------------------------------------------------
    def replace_model(
        self,
        model: nn.Module,
        config: LlamaConfig,
        restart_schedule: bool,
        peak_lr: float | None = None,
        schedule: WarmupCosine | None = None,
    ) -> None:
        """Train ``model`` (shaped ``config``) from now on: the growth callback's swap at a stage
        boundary. The model gets the run's layout (``parallel``; under ``ModelParallelStrategy`` a
        freshly sharded model filled with ``model``'s full tensors from rank 0), a new optimizer
        over its parameters and a new scheduler, whose warm-up + cosine restarts at the current
        step over the steps left (``restart_schedule``) or continues the run's schedule; ``peak_lr``
        and ``schedule``, when given, replace the run's from now on (Gstack's second stage trains
        at its own LR). Under DDP the module is wrapped again, since the old wrapper's gradient
        buckets hold the old parameters."""
        strategy = self.trainer.strategy
        if isinstance(strategy, ModelParallelStrategy):
            if not isinstance(model, Llama):
                raise SproutError(
                    f"The grown model is a {type(model).__name__}, which FSDP2 cannot shard (G_learn trains its growth map on the whole model). "
                    "Use growth.operator gstack (or another operator that returns a plain Llama) with ModelParallelStrategy, or train this stage with DDP."
                )
            sharded = self.build_model(config)  # laid out like the run's first model, then filled from rank 0
            set_model_state_dict(
                sharded, model.state_dict(), options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            )
            model = sharded
        elif isinstance(model, Llama):
            model = parallelize(model, self.parallel)
        self.model = model
        self.config = config
        if peak_lr is not None:
            self.peak_lr = peak_lr
        if schedule is not None:
            self.schedule = schedule
        if restart_schedule:
            self.schedule_start = self.trainer.global_step
        if isinstance(strategy, DDPStrategy):
            strategy.model = self
            strategy.configure_ddp()
        strategy.setup_optimizers(self.trainer)


# torch's words for an optimizer argument it rejects, and the argument's name
_OPTIMIZER_ARGS = (
    ("learning rate", "lr"),
    ("epsilon", "eps"),
    ("beta", "betas"),
    ("weight_decay", "weight_decay"),
    ("momentum", "momentum"),
    ("dampening", "dampening"),
)


def _probe_optimizer(factory: OptimizerCallable) -> float:
    """Build the recipe's optimizer over one dummy parameter now, so that a value torch rejects
    is a recipe error naming its key rather than a traceback from ``configure_optimizers``;
    returns its peak learning rate, which the schedule divides by and so must be positive."""
    try:
        probe = factory([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        key = next(
            (f"model.optimizer.init_args.{arg}" for words, arg in _OPTIMIZER_ARGS if words in text),
            "model.optimizer.init_args",
        )
        raise SproutError(
            f"{key}: the optimizer (model.optimizer.class_path) rejects the recipe's value ({text}). Fix it in the recipe, or on the command line with --{key} "
            "(TinyLlama: lr 4e-4, betas [0.9, 0.95], eps 1e-8, weight_decay 0.1)."
        ) from None
    lr = probe.param_groups[0].get("lr")
    lr = float(lr) if isinstance(lr, (int, float, torch.Tensor)) else float("nan")
    if not lr > 0 or lr == float("inf"):
        raise SproutError(
            f"model.optimizer.init_args.lr={lr:g} is invalid: the warm-up + cosine schedule scales a positive, finite peak learning rate. "
            "Set it in the recipe, or on the command line with --model.optimizer.init_args.lr (TinyLlama: 4e-4)."
        )
    return lr
