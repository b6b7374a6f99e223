"""The names of torch internals Sprout relies on, for the torch versions they were checked against.

- ``cpu_flash_attention``: the fused causal CPU attention kernel behind
  ``F.scaled_dot_product_attention``, called directly because it also returns the log-sum-exp
  that ``sprout.model.attention``'s written-out backward needs (the public function returns only
  the output). Its backward op is the one eager autograd runs after it. ``sprout.flops`` gives
  both a FLOP formula, as torch gives their CUDA counterparts.
- ``DISTRIBUTED_CHECKPOINT_CLASSES``: the private classes and functions torch's own pickle of a
  distributed checkpoint's ``.metadata`` names; ``sprout.checkpoint.safe_load`` allows exactly
  these (and torch's public metadata classes) when it reads that pickle without running code.
"""

from __future__ import annotations

import torch

from sprout.compat import require

require(
    "torch",
    "2.14",
    "2.15",
    "Sprout calls torch's fused CPU attention op directly and reads distributed-checkpoint metadata "
    "by the private class names torch 2.14 writes (app/compat/torch.py)",
)

cpu_flash_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
cpu_flash_attention_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

DISTRIBUTED_CHECKPOINT_CLASSES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),  # where each tensor lies in the shard files
    ("torch.serialization", "_get_layout"),  # rebuilds torch.strided etc. by name
}
