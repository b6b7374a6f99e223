"""The stage switch of model growth (Du et al. 2024): train the recipe's model, grow it, train on.

One ``sprout fit`` runs both stages. At the boundary (``at_step`` optimizer steps or
``at_tokens`` training tokens) the callback saves a stage-1 checkpoint, hands the trained
model to a ``growth`` plugin, and swaps the grown model into the module
(``sprout.growth.swap``): the run's layout (activation checkpointing, compile, FSDP2 sharding), a
fresh optimizer and, by default, a warm-up + cosine schedule restarted over the remaining
steps (one more segment of the module's schedule), as the official code trains stage 2. The
plan is ``sprout.growth.plan.GrowthPlan``, checked when this callback is made; this callback
only says when. FLOPs and tokens keep counting across
the switch (``perf/flops_seen``), ``growth/stage`` steps from 0 to 1 in TensorBoard, and the
event is written there as text too.

The operator draws its random weights (G_random's new units, G_learn's maps) from a torch
stream of its own, seeded by the run seed and the step of growth, never from the global
generators that the data, selectors and model draw from. So a run resumed from the stage-1
checkpoint grows the very same model as the uninterrupted run, although its global
generators stand elsewhere at that moment; the seed is part of this callback's state.

Resuming needs no option: a checkpoint records its model's shape (``sprout.model_config``),
and the module rebuilds that shape before Lightning loads the weights (``sprout.growth.reshape``);
this callback's state (step of growth, tokens, the operator's ramp or learned map)
comes back in ``on_load_checkpoint``, where the operator may re-wrap the model before the
optimizer is set up. Checkpoints always hold a plain Llama (``GrowthOperator.export``).

Sharded runs: a model sharded by FSDP2 is gathered into full tensors on every rank, grown
there, and ``swap_model`` shards the grown model again (rank 0's tensors are broadcast,
so random initialisations agree). ``source`` starts stage 2 from any small checkpoint
``sprout.checkpoint.weights.load_model`` reads (single-device ``.ckpt``, DDP, sharded FSDP folders); the
tokens and FLOPs that checkpoint counted (``sprout.counter``) are added to this run's counter, so
``perf/tokens_seen`` and ``perf/flops_seen`` include the small stage as in a one-run growth.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from sprout.checkpoint.resume import stored_entries
from sprout.checkpoint.weights import PREFIX, load_model
from sprout.counter import Counter
from sprout.errors import warn
from sprout.growth.plan import GrowthPlan
from sprout.growth.reshape import STATE_KEY, stored_shape
from sprout.growth.swap import carry_optimizer_state, full_model, seeded_grow, swap_model
from sprout.model import SHAPE_FIELDS, Llama, LlamaConfig
from sprout.protocols import GrowthOperator


class Growth(L.Callback):
    """Grow the model once during training (recipe section ``growth:``; inert without an operator).

    Args:
        operator: the ``growth`` plugin: ``gstack``, ``direct_width``, ``zero_depth``,
            ``zero_width``, ``random_depth``, ``random_width``, ``learn``.
        target_arch: named shape (``sprout.model.CONFIGS``) of the grown model; only its layer
            count and widths are taken, the vocabulary, context and numerics stay the model's.
        target_overrides: shape fields set on top, e.g. ``{n_layer: 8}`` (4x deeper than 2).
        at_step: grow after this many optimizer steps ...
        at_tokens: ... or once this many training tokens have been seen (give one of the two).
        source: instead of a stage 1 in this run, grow this small checkpoint at the start.
        restart_schedule: restart warm-up + cosine at growth over the steps left; ``false``
            continues the run's schedule.
        fresh_optimizer: a new optimizer state for the grown model; ``false`` carries each
            parameter's state over from the parameter it was copied from (depth operators).
        save_stage: save ``stage1-step<N>.ckpt`` next to the run's checkpoints before growing.
        stage2_lr: peak learning rate of the grown model (default: the optimizer's, as stage 1);
            the official Gstack scripts train 6L2048H at 1e-3 and the grown 24L2048H at 3e-4.
        stage2_min_lr: the grown model's cosine floor (default: ``model.schedule.min_lr``; official: 3e-5).
        stage2_warmup_steps: the grown model's warm-up (default: ``model.schedule.warmup_steps``;
            official: 3000); needs ``restart_schedule``.
        stage2_max_steps: the grown model's cosine horizon in steps from growth (default: the
            run's steps left; the official ``g_stack.sh`` decays over its own ``max_step`` of
            300000); needs ``restart_schedule``.
    """

    def __init__(
        self,
        operator: GrowthOperator | None = None,
        target_arch: str | None = None,
        target_overrides: dict[str, Any] | None = None,
        at_step: int | None = None,
        at_tokens: int | None = None,
        source: str | None = None,
        restart_schedule: bool = True,
        fresh_optimizer: bool = True,
        save_stage: bool = True,
        stage2_lr: float | None = None,
        stage2_min_lr: float | None = None,
        stage2_warmup_steps: int | None = None,
        stage2_max_steps: int | None = None,
    ) -> None:
        self.plan = GrowthPlan(
            operator,
            target_arch,
            dict(target_overrides or {}),
            at_step,
            at_tokens,
            source,
            restart_schedule,
            fresh_optimizer,
            save_stage,
            stage2_lr,
            stage2_min_lr,
            stage2_warmup_steps,
            stage2_max_steps,
        )
        self.operator = operator
        self.grown_at: int | None = None  # global step of the growth
        self.seed = 0  # the run seed, set in setup; seeds the operator's random stream
        self.stage_checkpoint: Path | None = None
        self._counter = Counter()  # the module's, from setup on
        self._last_step = -1
        self._source_model: Llama | None = None  # growth.source, loaded in setup
        self._resumed_config: LlamaConfig | None = None  # shape of a grown checkpoint to resume

    @property
    def state_key(self) -> str:
        return STATE_KEY

    @property
    def tokens_seen(self) -> int:
        """Training tokens so far (the module's counter), which ``at_tokens`` waits for."""
        return self._counter.tokens

    def target_config(self, source: LlamaConfig) -> LlamaConfig:
        """The grown model's config: ``source`` with the target's shape fields."""
        return self.plan.target_config(source)

    # -- Lightning hooks ----------------------------------------------------------------------
    def resume_from(self, path: str | Path) -> None:
        """Before ``fit(ckpt_path=path)``: if that checkpoint was written after growth, build the
        module in its grown shape from the start. Needed under ``ModelParallelStrategy``, which
        loads the weights into the model ``configure_model`` built, before any module hook could
        reshape it (the CLI calls this; elsewhere the module's ``on_load_checkpoint`` reshapes)."""
        self._resumed_config = stored_shape(path)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the plan against the model before any training: the grown shape, the operator's limits."""
        self._counter = pl_module.counter
        if self.operator is None or stage != "fit":
            return
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # seed_everything's; a resumed run loads the stored one
        if self._resumed_config is not None:
            pl_module.config = pl_module.config.replace(**{k: getattr(self._resumed_config, k) for k in SHAPE_FIELDS})
            return
        at_step = self.plan.at_step
        if (
            at_step is not None
            and trainer.max_steps is not None
            and 0 <= trainer.max_steps <= at_step
            and trainer.is_global_zero
        ):
            warn(
                f"growth.at_step={at_step} is not below trainer.max_steps={trainer.max_steps}: the run ends before the model grows. Lower growth.at_step or raise trainer.max_steps."
            )
        source = pl_module.config
        if self.plan.source is not None:
            self._source_model, _ = load_model(self.plan.source)
            source = self._source_model.config
        self.operator.check(source, self.plan.target_config(source))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        # growth.source, or a run resumed from the checkpoint saved at the boundary
        if self.operator is not None and self.grown_at is None and (self.plan.source is not None or self._due(trainer)):
            self._grow(trainer, pl_module)
        self._source_model = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.operator is None:
            return
        step = trainer.global_step
        if step != self._last_step:  # an optimizer step was taken (not mid gradient accumulation)
            self._last_step = step
            if self.grown_at is not None:
                replacement = self.operator.on_train_step(pl_module.model, step - self.grown_at)
                if replacement is not None:  # a phase of the operator ended (G_learn materialised)
                    swap_model(trainer, pl_module, replacement, pl_module.config)
                    rank_zero_info(
                        f"Growth: {type(self.operator).__name__} finished its phase at step {step}; training the plain grown model."
                    )
            elif self._due(trainer):
                self._grow(trainer, pl_module)
        pl_module.log("growth/stage", 0.0 if self.grown_at is None else 1.0)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Store the plain model's weights even while the operator trains something else (G_learn)."""
        if self.operator is None or self.grown_at is None:
            return
        plain = self.operator.export(pl_module.model)
        if plain is not pl_module.model:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(PREFIX)]:
                del state[key]
            state.update({PREFIX + k: v for k, v in plain.state_dict().items()})

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """After the module loaded the plain grown weights and before optimizers exist: give the
        operator its state back and let it re-wrap the model (masks, learned map)."""
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if self.operator is None or not state or state["grown_at"] is None:
            return
        self.operator.load_state_dict(state["operator"])
        pl_module.model = self.operator.restore(pl_module.model)

    def state_dict(self) -> dict[str, Any]:
        operator = self.operator.state_dict() if self.operator is not None and self.grown_at is not None else {}
        return {"grown_at": self.grown_at, "seed": self.seed, "operator": operator}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the operator's part was loaded with the model in on_load_checkpoint
        self.grown_at = state_dict["grown_at"]
        self.seed = int(state_dict.get("seed", self.seed))

    # -- the switch ---------------------------------------------------------------------------
    def _due(self, trainer: L.Trainer) -> bool:
        if self.plan.at_step is not None:
            return trainer.global_step >= self.plan.at_step
        return self.plan.at_tokens is not None and self.tokens_seen >= self.plan.at_tokens

    def _grow(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step, plan = trainer.global_step, self.plan
        if plan.source is None and plan.save_stage:
            self.stage_checkpoint = self._stage_path(trainer, step)
            # the whole run state (Lightning logged "`weights_only` was not set" here)
            trainer.save_checkpoint(self.stage_checkpoint, weights_only=False)
        old_params = dict(pl_module.model.named_parameters())
        old_optimizer = trainer.optimizers[0] if trainer.optimizers else None
        small = self._source_model if plan.source is not None else full_model(pl_module.model)
        target = plan.target_config(small.config)
        grown = seeded_grow(self.operator, small, target, self.seed * 1_000_003 + step)
        pl_module.lr_schedule.add(
            step, plan.restart_schedule, plan.stage2_schedule(pl_module.schedule, step), plan.stage2_lr
        )
        swap_model(trainer, pl_module, grown, target)
        if pl_module.model is not grown:  # a sharded copy: the operator's masks go on the copy
            self.operator.restore(pl_module.model)
        if not plan.fresh_optimizer and old_optimizer is not None:
            carry_optimizer_state(
                self.operator.source_parameter, old_params, old_optimizer, pl_module.model, trainer.optimizers[0]
            )
        self.grown_at = step
        carried = self._carry_source_compute(pl_module.counter) if plan.source is not None else ""
        self._announce(trainer, small.config, target, step, carried)

    def _carry_source_compute(self, counter: Counter) -> str:
        """Add the source checkpoint's counted tokens and FLOPs to this run's (once: a resumed
        run loads the sum from its own checkpoint); the event's text."""
        source = self.plan.source
        counted = Counter.stored_in(stored_entries(source))
        if not counted:
            return f" {source} records no tokens or FLOPs (not written by `sprout fit`), so perf/tokens_seen and perf/flops_seen count this run only."
        counter.carry(counted)
        tokens, flops = int(counted["tokens_seen"]), float(counted["flops_seen"])
        return f" The source's {tokens:,} tokens and {flops:.4g} FLOPs are included in perf/tokens_seen and perf/flops_seen."

    def _stage_path(self, trainer: L.Trainer, step: int) -> Path:
        ckpt = trainer.checkpoint_callback
        folder = (
            Path(ckpt.dirpath)
            if ckpt is not None and getattr(ckpt, "dirpath", None)
            else Path(trainer.default_root_dir)
        )
        return folder / f"stage1-step{step:06d}.ckpt"

    def _announce(self, trainer: L.Trainer, source: LlamaConfig, target: LlamaConfig, step: int, carried: str) -> None:
        origin = (
            f"of {self.plan.source} at the start"
            if self.plan.source is not None
            else f"at step {step} ({self.tokens_seen:,} tokens)"
        )
        text = self.plan.describe(origin, source, target, self.stage_checkpoint) + carried
        rank_zero_info(text)
        if isinstance(trainer.logger, TensorBoardLogger) and trainer.is_global_zero:
            trainer.logger.experiment.add_text("growth", text, step)
