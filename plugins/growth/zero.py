"""G_zero: new parameters start at zero where that keeps the grown model's function.

Zeroing a new unit's weights on *both* sides would be a stationary point (every gradient
reaching the new weights is zero, so they would never train). So the new weights that write
into the function are zero and the ones that only read from it keep Llama's random init:
a new block's attention output and MLP down projections, a new head's or FFN unit's output
columns, and every write into a new residual dimension.
"""

from __future__ import annotations

import torch
from torch import nn

from app.model import WIDTH_FIELDS, Llama, LlamaConfig, RMSNorm
from app.protocols import GrowthOperator
from plugins.growth.common import (
    DepthGrowth,
    check_shapes,
    copies,
    deepen,
    fresh_weights,
    is_writer,
    rms_ratio,
    widen,
    width_maps,
)


class ZeroDepth(DepthGrowth, GrowthOperator):
    """G_zero depthwise: layers repeated as in Gstack, with the copies' wo and w2 zeroed.

    A copied block then adds nothing to the residual stream: the grown model computes exactly
    the small model's function, and the zeroed projections receive gradients at once.

    Args:
        order: where the copies go, ``stack`` (on top of the source stack) or ``interleave``
            (each right above its source layer).
        layers: repeat only this contiguous run of source layers.
    """

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
    """G_zero widthwise: new weights that write are zero, new weights that read are random.

    Zero: writes into the residual stream and out of a new head or FFN unit; random: the rest.

    New residual dimensions therefore stay zero at first, which lowers every RMSNorm's
    denominator by sqrt(n_s / n_t); the norms' gains are scaled by that ratio, so the grown
    model computes the small model's function (up to the norms' epsilon).
    """

    def check(self, source: LlamaConfig, target: LlamaConfig) -> None:
        check_shapes(type(self).__name__, source, target, WIDTH_FIELDS)

    def grow(self, model: Llama, target: LlamaConfig) -> nn.Module:
        self.check(model.config, target)
        fill = fresh_weights(target, next(model.parameters()))
        for name, tensor in fill.items():
            if is_writer(name):  # tok_embeddings, wo, w2
                tensor.zero_()
        grown = widen(model, target, width_maps(model.config, target, copy=False), fill)
        ratio = rms_ratio(model.config, target)
        with torch.no_grad():
            for module in grown.modules():
                if isinstance(module, RMSNorm):
                    module.weight.mul_(ratio)
        return grown
