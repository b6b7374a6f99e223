"""Validation and test loss per domain, token-weighted: each domain's mean over all its tokens
on every rank, and their plain mean as ``val/loss`` (every domain counts alike)."""

from __future__ import annotations

import torch

from sprout.loss import IGNORE_INDEX


class DomainLosses:
    """Sums of token losses and token counts per validation loader (one loader per domain)."""

    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}

    def add(self, loader: int, token_loss: torch.Tensor, targets: torch.Tensor) -> None:
        valid = targets != IGNORE_INDEX
        sums = torch.stack([token_loss.masked_fill(~valid, 0).sum(), valid.sum().to(token_loss.dtype)])
        self.sums[loader] = self.sums.get(loader, 0) + sums.detach().double()

    def means(self, names: list[str], reduce) -> dict[str, torch.Tensor]:
        """``{domain: mean loss}`` over all ranks (``reduce`` sums across them); then starts afresh."""
        names = names or [str(i) for i in range(len(self.sums))]
        means = {}
        for loader, sums in sorted(self.sums.items()):
            total = reduce(sums)
            means[names[loader]] = (total[0] / total[1].clamp_min(1)).float()
        self.sums = {}
        return means
