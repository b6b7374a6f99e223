"""The baseline: every valid token counts (ordinary causal-LM loss)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sprout.protocols import TokenSelector


class AllTokens(TokenSelector):
    """Every token counts: the ordinary causal language-modelling loss."""

    def token_weights(self, token_loss: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return torch.ones_like(token_loss)
