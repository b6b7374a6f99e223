"""The control for token selection: a random k% of the tokens, as many as Rho-1 keeps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sprout.errors import check_option, is_count
from sprout.plugins.selectors.topk import TopKSelector


class RandomTokens(TopKSelector):
    """Keep a random k% of tokens (the control).

    The draw is seeded by ``seed``, the batch number and the rank, not by the global RNG,
    so a resumed run keeps the same tokens and ranks never draw the same pattern.

    Args:
        seed: base seed of the draws.
    """

    def __init__(self, k: float = 60.0, scope: str = "batch", seed: int = 0) -> None:
        super().__init__(k, scope)
        check_option(
            is_count(seed, 0) and seed < 2**31, "model.selector.init_args.seed", seed, "an integer in [0, 2**31)"
        )
        self.seed = seed

    def scores(self, token_loss: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        batch_no = int(batch["batch_no"][0]) if "batch_no" in batch else 0
        rank = (
            torch.distributed.get_rank()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 0
        )
        generator = torch.Generator(device=token_loss.device).manual_seed(
            (self.seed * 1_000_003 + batch_no) * 4096 + rank
        )
        return torch.rand(token_loss.shape, generator=generator, device=token_loss.device)
