"""The optimizer of a run: parameter groups, the recipe's checks, gradient clipping.

Weight decay applies to matrices only (embeddings, projections); norms' gains and any biases
are exempt, as in LitGPT and most Llama code. ``decay_all`` decays every parameter, as
TinyLlama's ``pretrain/tinyllama.py`` does (``AdamW(model.parameters(), weight_decay=...)``). The recipe names the optimizer class and its
arguments (``model.optimizer``); Sprout adds ``fused=True`` where torch has a fused kernel
and the recipe left it unset (``sprout.parallel.fused_optimizer_kwargs``).
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import nn

from sprout.errors import SproutError
from sprout.parallel import fused_optimizer_kwargs

# torch's words for an optimizer argument it rejects, and the argument's name
_OPTIMIZER_ARGS = (
    ("learning rate", "lr"),
    ("epsilon", "eps"),
    ("beta", "betas"),
    ("weight_decay", "weight_decay"),
    ("momentum", "momentum"),
    ("dampening", "dampening"),
)


def param_groups(model: nn.Module, decay_all: bool = False) -> list[dict]:
    """The trainable parameters in two groups: matrices (decayed) and the rest (``weight_decay``
    0), or one decayed group with ``decay_all``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all:
        return [{"params": params}]
    return [
        {"params": [p for p in params if p.ndim >= 2]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def build_optimizer(
    factory: OptimizerCallable, model: nn.Module, peak_lr: float | None = None, decay_all: bool = False
) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s trainable parameters, at ``peak_lr`` when given
    (a grown model's own peak) instead of the recipe's ``lr``; ``decay_all``: see ``param_groups``."""
    groups = param_groups(model, decay_all)
    params = [p for g in groups for p in g["params"]]
    optimizer = factory(groups, **fused_optimizer_kwargs(factory, params))
    if peak_lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = peak_lr
    return optimizer


def probe_optimizer(factory: OptimizerCallable) -> float:
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


def clips_unscaled(precision_plugin: object, optimizer: torch.optim.Optimizer) -> bool:
    """Whether Sprout clips this step itself: Lightning's AMP plugin refuses to clip for any
    optimizer that unscales gradients itself (fused AdamW, Sprout's default), even in
    bf16-mixed, where no grad scaler exists and nothing is scaled. With fp16's scaler
    Lightning's check stands."""
    return getattr(precision_plugin, "scaler", None) is None and bool(optimizer.defaults.get("fused"))


def clip_gradients(optimizer: torch.optim.Optimizer, clip_val: float, algorithm: str | None = None) -> None:
    """Clip the optimizer's gradients by norm (default) or value, as Lightning's plain precision
    plugin does (``clip_grad_norm_`` / ``clip_grad_value_`` over every parameter it steps)."""
    if clip_val <= 0:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if GradClipAlgorithmType(algorithm or GradClipAlgorithmType.NORM) == GradClipAlgorithmType.VALUE:
        torch.nn.utils.clip_grad_value_(params, clip_value=clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(params, clip_val)
