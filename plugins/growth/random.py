"""G_random: new parameters get Llama's random init, gated by masks that open linearly.

Each new unit's output is multiplied by a mask m that is 0 at growth and reaches 1 after
``ramp_steps`` optimizer steps (Masked Structural Growth, Yao et al. 2024), so the grown
model starts as exactly the small model's function and the new weights fade in. The masks
are forward hooks, not weights: the model stays a plain Llama (its checkpoints load
anywhere), and the mask's progress is this operator's state, which the checkpoint carries
and ``restore`` re-attaches when a run resumes mid-ramp.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from app.errors import SproutError
from app.model import WIDTH_FIELDS, Llama, LlamaConfig, RMSNorm
from app.protocols import GrowthOperator
from plugins.growth.common import DepthGrowth, check_shapes, copies, deepen, fresh_weights, layer_map, widen, width_maps


class MaskedGrowth(GrowthOperator):
    """The ramp shared by both G_random operators: mask value, hooks, state."""

    def __init__(self, ramp_steps: int = 100) -> None:
        if ramp_steps < 0:
            raise SproutError(
                f"G_random ramp_steps must be >= 0, got {ramp_steps}; fix growth.operator.init_args.ramp_steps."
            )
        self.ramp_steps = ramp_steps
        self.step = 0
        self.source: LlamaConfig | None = None  # set at growth: the masks are derived from both shapes
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def mask(self) -> float:
        """Current mask value m in [0, 1]."""
        return min(1.0, self.step / self.ramp_steps) if self.ramp_steps else 1.0

    def gate(self, new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-unit factors: m for new units, 1 for the source's."""
        return torch.where(new.to(like.device), self.mask, 1.0).to(like.dtype)

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
    """G_random depthwise: new layers are random blocks whose outputs a mask fades in.

    The mask scales each new block's attention and MLP outputs: 0 at growth, 1 after ``ramp_steps``.

    Args:
        ramp_steps: optimizer steps for the masks to open; 0 adds the new layers unmasked.
        order: where new layers go: ``stack`` (above the source stack) or ``interleave``
            (each above the source layer it doubles).
        layers: add new layers only around this contiguous run of source layers.
    """

    def __init__(self, ramp_steps: int = 100, order: str = "stack", layers: list[int] | None = None) -> None:
        DepthGrowth.__init__(self, order, layers)
        MaskedGrowth.__init__(self, ramp_steps)

    def grow(self, model: Llama, target: LlamaConfig) -> nn.Module:
        mapping = self.plan(model, target)
        grown = deepen(model, target, mapping)
        residual_std = target.init_std / math.sqrt(2 * target.n_layer)
        with torch.no_grad():
            for layer, is_new in zip(grown.layers, copies(mapping)):
                if is_new:
                    layer.init_weights(target.init_std, residual_std)
        return self._start(model.config, grown)

    def attach(self, model: Llama) -> None:
        mapping = layer_map(type(self).__name__, self.source.n_layer, model.config.n_layer, self.order, self.layers)
        for layer, is_new in zip(model.layers, copies(mapping)):
            if is_new:
                for branch in (layer.attention, layer.feed_forward):
                    self._hook(branch, lambda module, args, out: out * self.mask)

    def source_parameter(self, name: str) -> str | None:
        if name.startswith("layers.") and copies(self.mapping)[int(name.split(".")[1])]:
            return None  # a new random block
        return super().source_parameter(name)


class RandomWidth(MaskedGrowth):
    """G_random widthwise: new weights are random, new units fade in through masks.

    New rows and columns get Llama's random init; the mask scales every write into a new
    residual dimension and the output of every new head and FFN unit.

    RMSNorm weighs each dimension's square by its mask (new dimensions count m, the others
    1), so at m = 0 it normalises by the source's RMS exactly and at m = 1 it is the plain norm.

    Args:
        ramp_steps: optimizer steps for the masks to open; 0 adds the new units unmasked.
    """

    def check(self, source: LlamaConfig, target: LlamaConfig) -> None:
        check_shapes(type(self).__name__, source, target, WIDTH_FIELDS)

    def grow(self, model: Llama, target: LlamaConfig) -> nn.Module:
        self.check(model.config, target)
        fill = fresh_weights(target, next(model.parameters()))
        grown = widen(model, target, width_maps(model.config, target, copy=False), fill)
        return self._start(model.config, grown)

    def attach(self, model: Llama) -> None:
        maps = width_maps(self.source, model.config, copy=False)
        new_dim, new_q, new_ffn = maps.residual < 0, maps.q < 0, maps.ffn < 0

        def writes(module, args, out):
            return out * self.gate(new_dim, out)

        def norm(module, args, out):
            x = args[0]
            c = self.gate(new_dim, x).float()
            mean_square = (x.float().pow(2) * c).sum(-1, keepdim=True) / c.sum()
            return (x.float() * torch.rsqrt(mean_square + module.eps)).type_as(x) * module.weight

        self._hook(model.tok_embeddings, writes)
        for layer in model.layers:
            self._hook(layer.attention.wo, lambda module, args: (args[0] * self.gate(new_q, args[0]),), pre=True)
            self._hook(layer.attention.wo, writes)
            self._hook(layer.feed_forward.w2, lambda module, args: (args[0] * self.gate(new_ffn, args[0]),), pre=True)
            self._hook(layer.feed_forward.w2, writes)
        for module in model.modules():
            if isinstance(module, RMSNorm):
                self._hook(module, norm)
