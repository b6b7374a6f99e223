"""G_zero: new parameters start at zero.

Depthwise, a copied block's attention output and MLP down projections are zero, so it adds
nothing to the residual stream. Widthwise, the published operator zeroes what a new unit reads
from the old ones (and the new norm gains); ``variant: rescaled`` instead zeroes what new
units write and rescales the norms, which keeps the function and trains every new weight.
"""

from __future__ import annotations

import torch
from torch import nn

from sprout.errors import SproutError
from sprout.model import WIDTH_FIELDS, Llama, LlamaConfig, RMSNorm
from sprout.plugins.growth.common import (
    DepthGrowth,
    axes,
    check_shapes,
    copies,
    deepen,
    fresh_weights,
    is_writer,
    rms_ratio,
    widen,
    width_maps,
)
from sprout.protocols import GrowthOperator


class ZeroDepth(DepthGrowth, GrowthOperator):
    """G_zero depthwise: layers repeated, with the copies' wo and w2 zeroed.

    A copied block then adds nothing to the residual stream: the grown model computes exactly
    the small model's function, and the zeroed projections receive gradients at once.

    Args:
        order: where the copies go: ``interleave`` (default, the official
            ``G_zero_depthwise.py``: target layer i repeats source layer i // (L_t / L_s), each
            copy right above its source layer) or ``stack`` (Gstack's order, on top of the
            source stack; Sprout's earlier default).
        layers: repeat only this contiguous run of source layers.
    """

    def __init__(self, order: str = "interleave", layers: list[int] | None = None) -> None:
        super().__init__(order, layers)

    def grow(self, model: Llama, target: LlamaConfig) -> nn.Module:
        mapping = self.plan(model, target)
        grown = deepen(model, target, mapping)
        with torch.no_grad():
            for layer, is_copy in zip(grown.layers, copies(mapping)):
                if is_copy:
                    layer.attention.wo.weight.zero_()
                    layer.feed_forward.w2.weight.zero_()
        return grown

    def source_parameter(self, name: str) -> str | None:
        """Zeroed projections start with a fresh optimizer state; the rest inherit their source's."""
        if (
            name.startswith("layers.")
            and name.endswith(("attention.wo.weight", "feed_forward.w2.weight"))
            and copies(self.mapping)[int(name.split(".")[1])]
        ):
            return None
        return super().source_parameter(name)


class ZeroWidth(GrowthOperator):
    """G_zero widthwise, in two variants.

    ``published`` (default; Du et al. 2024, Fig. 2, and the official ``prts_lit/scaling/zero.py``):
    every tensor keeps its source block; a new output unit's weights *from old inputs* are zero,
    every weight *from a new input* keeps Llama's random init, and new norm gains (and new
    embedding columns) are zero. New residual dimensions therefore start at zero, as do new heads
    and FFN units; the norms' old gains are left as they are, so each RMSNorm now averages over
    n_t dimensions of which n_s are non-zero and its output grows by sqrt(n_t / n_s): the grown
    model does not compute the small one's function. In this form new residual dimensions and
    new SwiGLU units get no gradient (zero gains, zero inputs, silu(0) = 0); new heads learn
    through their values.

    ``rescaled`` (Sprout's earlier variant): new weights that write into the residual stream, out
    of a new head or FFN unit, are zero; new weights that read are random; every norm gain is
    scaled by sqrt(n_s / n_t), so the function is kept up to RMSNorm's epsilon (which is not
    rescaled: at initialisation scale it moves logits by a few per cent).

    Args:
        variant: ``published`` or ``rescaled``.
    """

    VARIANTS = ("published", "rescaled")

    def __init__(self, variant: str = "published") -> None:
        if variant not in self.VARIANTS:
            raise SproutError(
                f"zero_width variant must be one of {', '.join(self.VARIANTS)}, got {variant!r}; fix growth.operator.init_args.variant."
            )
        self.variant = variant

    def check(self, source: LlamaConfig, target: LlamaConfig) -> None:
        check_shapes(type(self).__name__, source, target, WIDTH_FIELDS)

    def grow(self, model: Llama, target: LlamaConfig) -> nn.Module:
        self.check(model.config, target)
        fill = fresh_weights(target, next(model.parameters()))
        maps = width_maps(model.config, target, copy=False)
        if self.variant == "rescaled":
            for name, tensor in fill.items():
                if is_writer(name):  # tok_embeddings, wo, w2
                    tensor.zero_()
            grown = widen(model, target, maps, fill)
            with torch.no_grad():
                for module in grown.modules():
                    if isinstance(module, RMSNorm):
                        module.weight.mul_(rms_ratio(model.config, target))
            return grown
        for name, tensor in fill.items():
            rows, cols = axes(name, maps)
            if tensor.ndim == 1:
                tensor[(rows < 0).to(tensor.device)] = 0
            elif name.startswith("tok_embeddings"):  # its columns are the outputs: new dimensions start at zero
                tensor[:, (cols < 0).to(tensor.device)] = 0
            elif rows is not None:  # a new output unit reads nothing from the old inputs
                old_in = torch.ones(tensor.size(1), dtype=torch.bool) if cols is None else cols >= 0
                tensor[((rows < 0)[:, None] & old_in[None, :]).to(tensor.device)] = 0
        return widen(model, target, maps, fill)
