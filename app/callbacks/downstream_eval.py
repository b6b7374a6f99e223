"""Downstream scores during training: lm-evaluation-harness tasks every N steps, in TensorBoard.

The papers judge a method by its downstream accuracy along the run (Gstack's averages over
commonsense tasks, Rho-1's few-shot math), not only by its loss. With ``eval.tasks`` and
``eval.every_n_steps`` set in a recipe, this callback scores the model being trained on those
tasks and logs ``eval/<task>/<metric>`` at the step. Off (the default), it does nothing and
lm-eval is never imported.

Rank 0 evaluates a plain copy of the model that shares the weights' storage (uncompiled, in eval
mode; training is untouched) while the other ranks wait. A model sharded with FSDP2 is first
gathered into full tensors on rank 0's CPU (every rank takes part), then evaluated on rank 0's
device.
"""

from __future__ import annotations

import lightning as L
import torch

from sprout.model.build import build_model


class DownstreamEval(L.Callback):
    """Runs ``tasks`` on the model every ``every_n_steps`` optimizer steps.

    Args:
        tasks: task names: Sprout's offline tasks (``stdlib_mc``, ``gsm8k_local``) or any task of
            lm-evaluation-harness (its data must be downloadable or cached). Empty: off.
        every_n_steps: steps between evaluations (0: off).
        limit: at most this many documents per task (null: all), to keep each evaluation short.
        num_fewshot: examples before each question (null: each task's own setting, else 0).
        batch_size: sequences per forward pass when scoring.
        max_gen_toks: most tokens generated per answer, unless the task sets its own.
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        every_n_steps: int = 0,
        limit: int | None = 50,
        num_fewshot: int | None = None,
        batch_size: int = 16,
        max_gen_toks: int = 128,
    ) -> None:
        self.tasks = list(tasks or [])
        self.every_n_steps = every_n_steps
        self.limit = limit
        self.num_fewshot = num_fewshot
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self._tokenizer = None
        self._last_step = -1

    @property
    def enabled(self) -> bool:
        return bool(self.tasks) and self.every_n_steps > 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        from sprout.evaluation import require_harness
        from sprout.evaluation.tasks import resolve

        require_harness()
        resolve(self.tasks)  # a misspelt or unreachable task fails now, not after N steps
        self._tokenizer = trainer.datamodule.tokenizer

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs,
        batch,
        batch_idx,
    ) -> None:
        step = trainer.global_step
        if not self.enabled or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step  # several micro-batches end the same optimizer step under accumulation
        model = self._full_model(pl_module.model)
        if trainer.is_global_zero:
            from sprout.evaluation import evaluate, scores

            results = evaluate(
                model,
                self._tokenizer,
                self.tasks,
                num_fewshot=self.num_fewshot,
                limit=self.limit,
                batch_size=self.batch_size,
                device=pl_module.device,
                max_gen_toks=self.max_gen_toks,
            )
            metrics = {f"eval/{name}": value for name, value in scores(results).items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        trainer.strategy.barrier()

    @staticmethod
    def _full_model(model: torch.nn.Module) -> torch.nn.Module | None:
        """A plain ``Llama`` with the training model's weights (no copy unless FSDP2 shards them);
        None on ranks other than 0 of a sharded model."""
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for p in model.parameters()):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if not state:
                return None
        else:
            state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
        state = {name.replace("_orig_mod.", ""): tensor for name, tensor in state.items()}
        return build_model(model.config, state, "the model in training")
