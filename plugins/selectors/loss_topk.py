"""The Rho-1 ablation without a reference: keep the tokens the model itself finds hardest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sprout.plugins.selectors.topk import TopKSelector


class LossTopK(TopKSelector):
    """Keep the top k% of tokens by the training model's own loss (no reference)."""

    def scores(self, token_loss: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return token_loss
