"""G_direct: the grown model repeats the trained one's weights (Du et al. 2024, section 2).

Depthwise this is Gstack, the operator the paper recommends; widthwise it is Net2Net /
bert2BERT neuron splitting.
"""

from __future__ import annotations

from torch import nn

from sprout.errors import check_option, is_number
from sprout.model import WIDTH_FIELDS, Llama, LlamaConfig
from sprout.plugins.growth.common import DepthGrowth, check_shapes, deepen, widen, width_maps
from sprout.protocols import GrowthOperator


class Gstack(DepthGrowth, GrowthOperator):
    """G_direct depthwise (Gstack): target layer i is a copy of source layer (i mod L).

    Embedding, final norm and head are copied unchanged. The stacked model is not the same
    function as the small one (each block runs g times); the paper finds it trains fastest.

    Args:
        order: ``stack`` ([0..L-1, 0..L-1, ...], the official code) or ``interleave``
            ([0, 0, 1, 1, ...]) for ablations.
        layers: repeat only this contiguous run of source layers (partial stacking), e.g.
            ``[2, 3]``; the other layers appear once.
    """

    def grow(self, model: Llama, target: LlamaConfig) -> nn.Module:
        return deepen(model, target, self.plan(model, target))


class DirectWidth(GrowthOperator):
    """G_direct widthwise: new residual dimensions, heads and FFN units copy existing ones.

    Unit j of an axis copies source unit j mod n; a layer reading a duplicated unit shares the
    source column among the copies (1/c each), so the grown model computes the same function.
    Heads are copied whole with their KV group (grouped-query attention stays consistent).
    RMSNorm averages over the residual width: the function is exact (to float rounding) when
    the residual width grows by an integer factor, every dimension copied equally often.
    Otherwise each norm's mean square weighs the copied dimensions twice and changes with the
    input: at 64 -> 96 the logits of the tests' micro models move by 3-8% of their scale.

    Args:
        split_noise: relative noise on the 1/c shares (they still sum to one, so the function
            is preserved); 0 is the textbook split, > 0 breaks the symmetry between copies.
    """

    def __init__(self, split_noise: float = 0.0) -> None:
        check_option(
            is_number(split_noise),
            "growth.operator.init_args.split_noise",
            split_noise,
            "a finite relative noise >= 0 (0: the textbook split)",
        )
        self.split_noise = split_noise

    def check(self, source: LlamaConfig, target: LlamaConfig) -> None:
        check_shapes(type(self).__name__, source, target, WIDTH_FIELDS)

    def grow(self, model: Llama, target: LlamaConfig) -> nn.Module:
        self.check(model.config, target)
        return widen(model, target, width_maps(model.config, target, copy=True), split_noise=self.split_noise)
