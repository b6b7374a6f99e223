"""Rho-1 selective language modelling (Lin et al. 2024).

Rho-1 keeps the k% of tokens whose loss under the training model most exceeds their loss
under a reference model trained on high-quality data: L_Δ(x_i) = L_θ(x_i) − L_ref(x_i).
The top-k machinery it shares with ``loss_topk`` and ``random`` is ``sprout.plugins.selectors.topk``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sprout.plugins.selectors.topk import TopKSelector


class Rho1(TopKSelector):
    """Rho-1: keep the top k% of tokens by excess loss over a reference model."""

    needs_reference = True

    def scores(self, token_loss: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return token_loss.float() - batch["ref_loss"].float()
