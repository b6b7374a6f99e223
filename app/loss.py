"""Per-token cross-entropy, the one place the training loss is computed.

Returned unreduced (``[B, T]``) because a token selector weighs tokens before the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none", ignore_index=IGNORE_INDEX)
    return loss.view_as(targets)
