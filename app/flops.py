"""FLOP counting for HFU (``app.callbacks.monitor``): the CPU attention kernels ``FlopCounterMode`` does not know."""

from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

# FlopCounterMode knows the CUDA flash-attention kernels but not the CPU one, which takes the
# same leading arguments: count it with the same formulas.
_aten = torch.ops.aten
flop_counter.flop_registry.setdefault(
    _aten._scaled_dot_product_flash_attention_for_cpu,
    flop_counter.flop_registry[_aten._scaled_dot_product_flash_attention],
)
flop_counter.flop_registry.setdefault(
    _aten._scaled_dot_product_flash_attention_for_cpu_backward,
    flop_counter.flop_registry[_aten._scaled_dot_product_flash_attention_backward],
)


def flop_counter_mode() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that counts the CPU attention kernels too (registered above)."""
    return FlopCounterMode(display=False)
