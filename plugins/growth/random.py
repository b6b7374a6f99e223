"""G_random: new parameters get Llama's random init, gated by masks that open linearly.

Each new unit's output is multiplied by a mask m that is 0 at growth and rises linearly to 1
over ``ramp_steps`` optimizer steps (Masked Structural Growth, Yao et al. 2024), so the grown
model starts as the small model's function and the new weights fade in. ``variant:
published`` (default) follows the official ``prts_lit/scaling/msg.py``: depthwise, a new
block's whole output is blended in, ``m * block(x) + (1 - m) * x``; widthwise, the masks open
in three phases of ``ramp_steps`` each, first the new FFN units, then the new residual
dimensions, then the new attention heads (their queries, keys and values), and every RMSNorm
sees the masked input, rescaled by sqrt(sum m / n). ``variant: joint`` (Sprout's earlier form)
opens every new unit at once over ``ramp_steps``, masks a new block's attention and MLP
outputs separately, and weighs each dimension's square by its mask inside RMSNorm.

The masks are forward hooks, not weights: the model stays a plain Llama (its checkpoints load
anywhere), and the mask's progress is this operator's state, which the checkpoint carries
and ``restore`` re-attaches when a run resumes mid-ramp.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from sprout.errors import SproutError
from sprout.model import WIDTH_FIELDS, Llama, LlamaConfig, RMSNorm, init_stds
from sprout.plugins.growth.common import (
    DepthGrowth,
    check_shapes,
    copies,
    deepen,
    fresh_weights,
    layer_map,
    widen,
    width_maps,
)
from sprout.protocols import GrowthOperator

VARIANTS = ("published", "joint")


class MaskedGrowth(GrowthOperator):
    """The ramp shared by both G_random operators: mask values, hooks, state."""

    phases = 1  # ramps that open one after the other

    def __init__(self, ramp_steps: int = 5000, variant: str = "published") -> None:
        if ramp_steps < 0:
            raise SproutError(
                f"G_random ramp_steps must be >= 0, got {ramp_steps}; fix growth.operator.init_args.ramp_steps."
            )
        if variant not in VARIANTS:
            raise SproutError(
                f"G_random variant must be one of {', '.join(VARIANTS)}, got {variant!r}; fix growth.operator.init_args.variant."
            )
        self.ramp_steps = ramp_steps
        self.variant = variant
        self.step = 0
        self.source: LlamaConfig | None = None  # set at growth: the masks are derived from both shapes
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def phase_mask(self, phase: int) -> float:
        """Mask value of the units that open in ``phase`` (from 0): 0 before it, rising linearly
        over its ``ramp_steps``, 1 after."""
        if not self.ramp_steps:
            return 1.0
        return min(1.0, max(0.0, (self.step - phase * self.ramp_steps) / self.ramp_steps))

    @property
    def mask(self) -> float:
        """Mask value of the last units to open: 1 once every mask is open."""
        return self.phase_mask(self.phases - 1)

    def gate(self, new: torch.Tensor, like: torch.Tensor, phase: int = 0) -> torch.Tensor:
        """Per-unit factors: the phase's mask for new units, 1 for the source's."""
        return torch.where(new.to(like.device), self.phase_mask(phase), 1.0).to(like.dtype)

    @abstractmethod
    def attach(self, model: Llama) -> None:
        """Register the mask hooks on ``model`` (derived from ``self.source`` and its config)."""

    def _start(self, source: LlamaConfig, grown: Llama) -> Llama:
        self.source, self.step = source, 0
        if self.mask < 1:
            self.attach(grown)
        return grown

    def _hook(self, module: nn.Module, fn, pre: bool = False) -> None:
        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        self._hooks.append(register(fn))

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def on_train_step(self, model: nn.Module, step: int) -> nn.Module | None:
        self.step = step
        if self.mask >= 1 and self._hooks:
            self.detach()  # fully open: the hooks would multiply by one
        return None

    def restore(self, model: nn.Module) -> nn.Module:
        self.detach()  # masks live on one model: the one trained now
        if self.source is not None and self.mask < 1:
            self.attach(model)
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "source": self.source.to_dict() if self.source else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self.source = LlamaConfig.from_dict(state["source"]) if state.get("source") else None


class RandomDepth(DepthGrowth, MaskedGrowth):
    """G_random depthwise: new layers are random blocks that a mask fades in over ``ramp_steps``.

    ``published``: a new block outputs m * block(x) + (1 - m) * x (the official MsgBlock);
    ``joint``: the mask scales the block's attention and MLP outputs separately.

    Args:
        ramp_steps: optimizer steps for the masks to open (default 5000, the official
            ``grow_step``); 0 adds the new layers unmasked.
        variant: ``published`` or ``joint``.
        order: where new layers go: ``stack`` (above the source stack, as MSG) or ``interleave``
            (each above the source layer it doubles).
        layers: add new layers only around this contiguous run of source layers.
    """

    def __init__(
        self, ramp_steps: int = 5000, variant: str = "published", order: str = "stack", layers: list[int] | None = None
    ) -> None:
        DepthGrowth.__init__(self, order, layers)
        MaskedGrowth.__init__(self, ramp_steps, variant)

    def grow(self, model: Llama, target: LlamaConfig) -> nn.Module:
        mapping = self.plan(model, target)
        grown = deepen(model, target, mapping)
        stds = init_stds(target.init, target.n_embd, target.n_layer, target.init_std)
        with torch.no_grad():
            for layer, is_new in zip(grown.layers, copies(mapping)):
                if is_new:
                    layer.init_weights(*stds)
        return self._start(model.config, grown)

    def attach(self, model: Llama) -> None:
        mapping = layer_map(type(self).__name__, self.source.n_layer, model.config.n_layer, self.order, self.layers)
        for layer, is_new in zip(model.layers, copies(mapping)):
            if not is_new:
                continue
            if self.variant == "published":
                self._hook(layer, lambda module, args, out: out * self.mask + args[0] * (1 - self.mask))
            else:
                for branch in (layer.attention, layer.feed_forward):
                    self._hook(branch, lambda module, args, out: out * self.mask)

    def source_parameter(self, name: str) -> str | None:
        if name.startswith("layers.") and copies(self.mapping)[int(name.split(".")[1])]:
            return None  # a new random block
        return super().source_parameter(name)


FFN, RESIDUAL, ATTENTION = 0, 1, 2  # the published widthwise order in which the masks open


class RandomWidth(MaskedGrowth):
    """G_random widthwise: new weights are random, new units fade in through masks.

    New rows and columns get Llama's random init. ``published``: the new FFN units (outputs of
    w1 and w3) open over the first ``ramp_steps`` steps, the new residual dimensions (outputs
    of the embedding, wo and w2) over the next ones, the new heads (outputs of wq, wk, wv)
    over the last ones; each RMSNorm normalises its masked input and multiplies by
    sqrt(sum m / n) and the mask (the official MsgNorm); a new query head that shares an old KV
    head (grouped-query attention, which the official code lacks) also has its output masked.
    ``joint``: one ramp scales every write
    into a new residual dimension and the output of every new head and FFN unit; RMSNorm weighs
    each dimension's square by its mask (new dimensions count m, the others 1).

    Args:
        ramp_steps: optimizer steps for each mask to open (default 5000, the official
            ``grow_step``); 0 adds the new units unmasked.
        variant: ``published`` or ``joint``.
    """

    @property
    def phases(self) -> int:
        return 3 if self.variant == "published" else 1

    def check(self, source: LlamaConfig, target: LlamaConfig) -> None:
        check_shapes(type(self).__name__, source, target, WIDTH_FIELDS)

    def grow(self, model: Llama, target: LlamaConfig) -> nn.Module:
        self.check(model.config, target)
        fill = fresh_weights(target, next(model.parameters()))
        grown = widen(model, target, width_maps(model.config, target, copy=False), fill)
        return self._start(model.config, grown)

    def attach(self, model: Llama) -> None:
        maps = width_maps(self.source, model.config, copy=False)
        if self.variant == "published":
            self._attach_published(model, maps)
        else:
            self._attach_joint(model, maps)

    def _gated(self, new: torch.Tensor, phase: int):
        return lambda module, args, out: out * self.gate(new, out, phase)

    def _attach_published(self, model: Llama, maps) -> None:
        new_dim, new_q, new_kv, new_ffn = maps.residual < 0, maps.q < 0, maps.kv < 0, maps.ffn < 0

        def norm(module, args, out):
            x = args[0]
            m = self.gate(new_dim, x, RESIDUAL).float()
            xm = x.float() * m
            y = xm * torch.rsqrt(xm.pow(2).mean(-1, keepdim=True) + module.eps) * module.weight.float()
            return (y * torch.sqrt(m.sum() / m.numel()) * m).type_as(x)

        # with grouped-query attention a new query head may read an old KV head, whose values no
        # mask silences; its output into wo is masked as well (the official code has full MHA only)
        group = torch.arange(model.config.n_head) // (model.config.n_head // model.config.n_kv_head)
        shared = ((maps.q_heads < 0) & (maps.kv_heads[group] >= 0)).repeat_interleave(maps.head_dim)
        self._hook(model.tok_embeddings, self._gated(new_dim, RESIDUAL))
        for layer in model.layers:
            attention, ffn = layer.attention, layer.feed_forward
            if shared.any():
                self._hook(
                    attention.wo, lambda module, args: (args[0] * self.gate(shared, args[0], ATTENTION),), pre=True
                )
            self._hook(attention.wq, self._gated(new_q, ATTENTION))
            self._hook(attention.wk, self._gated(new_kv, ATTENTION))
            self._hook(attention.wv, self._gated(new_kv, ATTENTION))
            self._hook(attention.wo, self._gated(new_dim, RESIDUAL))
            self._hook(ffn.w1, self._gated(new_ffn, FFN))
            self._hook(ffn.w3, self._gated(new_ffn, FFN))
            self._hook(ffn.w2, self._gated(new_dim, RESIDUAL))
        for module in model.modules():
            if isinstance(module, RMSNorm):
                self._hook(module, norm)

    def _attach_joint(self, model: Llama, maps) -> None:
        new_dim, new_q, new_ffn = maps.residual < 0, maps.q < 0, maps.ffn < 0

        def norm(module, args, out):
            x = args[0]
            c = self.gate(new_dim, x).float()
            mean_square = (x.float().pow(2) * c).sum(-1, keepdim=True) / c.sum()
            return (x.float() * torch.rsqrt(mean_square + module.eps)).type_as(x) * module.weight

        writes = self._gated(new_dim, 0)
        self._hook(model.tok_embeddings, writes)
        for layer in model.layers:
            self._hook(layer.attention.wo, lambda module, args: (args[0] * self.gate(new_q, args[0]),), pre=True)
            self._hook(layer.attention.wo, writes)
            self._hook(layer.feed_forward.w2, lambda module, args: (args[0] * self.gate(new_ffn, args[0]),), pre=True)
            self._hook(layer.feed_forward.w2, writes)
        for module in model.modules():
            if isinstance(module, RMSNorm):
                self._hook(module, norm)
