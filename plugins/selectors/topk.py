"""Keeping the top k% of tokens by a score: the machinery Rho-1 and its ablations share.

``rho1`` (rank by excess loss over a reference), ``loss_topk`` (rank by the model's own loss)
and ``random`` (rank by chance) differ only in the score, so each is a ``TopKSelector`` with
its own ``scores`` method.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from sprout.errors import SproutError
from sprout.protocols import TokenSelector

SCOPES = ("batch", "sequence", "global")


def top_k_mask(scores: torch.Tensor, valid: torch.Tensor, k: float, scope: str = "batch") -> torch.Tensor:
    """The top ``k`` percent of valid tokens by ``scores``, as a bool mask of ``scores``' shape.

    The ranking runs over the micro-batch (``batch``), each row (``sequence``) or the
    micro-batches of all data-parallel ranks together (``global``: every rank gathers every
    rank's scores and ranks the same concatenation, so all agree on one threshold). Each
    ranking keeps exactly ceil(k% of its valid tokens); among equal scores the earlier token
    (rank, then row, then position) wins, so the selection is exact and deterministic.
    Invalid tokens are never kept and do not count towards the k%.
    """
    if scope == "sequence":
        return _keep_top(scores, valid, k)
    flat_scores, flat_valid = scores.reshape(1, -1), valid.reshape(1, -1)
    if scope == "global" and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world, rank = dist.get_world_size(), dist.get_rank()
        gathered_scores = [torch.empty_like(flat_scores) for _ in range(world)]
        gathered_valid = [torch.empty_like(flat_valid, dtype=torch.uint8) for _ in range(world)]
        dist.all_gather(gathered_scores, flat_scores.contiguous())
        dist.all_gather(gathered_valid, flat_valid.to(torch.uint8).contiguous())
        keep = _keep_top(torch.cat(gathered_scores, dim=1), torch.cat(gathered_valid, dim=1).bool(), k)
        n = flat_scores.shape[1]
        return keep[:, rank * n : (rank + 1) * n].reshape(scores.shape)
    return _keep_top(flat_scores, flat_valid, k).reshape(scores.shape)


def _keep_top(scores: torch.Tensor, valid: torch.Tensor, k: float) -> torch.Tensor:
    """Row-wise: keep the ceil(k% · valid) best valid entries of each row of a ``[R, N]`` tensor."""
    # Stable sorts: by score (descending), then valid entries first; ties keep position order.
    order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices
    order = order.gather(
        1, torch.sort(valid.gather(1, order).to(torch.uint8), dim=1, descending=True, stable=True).indices
    )
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    # ceil, less a relative 1e-9 so that 60% of 10 is 6 although 10 * 0.6 = 6.000000000000001
    n_keep = torch.ceil(valid.sum(dim=1, dtype=torch.float64) * (k / 100) * (1 - 1e-9))
    return (rank < n_keep.unsqueeze(1)) & valid


class TopKSelector(TokenSelector):
    """Keeps the top ``k`` percent of valid tokens by a score; subclasses define the score.

    Args:
        k: percentage of valid tokens that count, in (0, 100].
        scope: where the ranking runs: ``batch`` (the micro-batch), ``sequence`` (each
            sequence keeps its own k%) or ``global`` (all data-parallel ranks agree on one
            threshold; costs one all-gather of the scores per step).
    """

    def __init__(self, k: float = 60.0, scope: str = "batch") -> None:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not (0 < k <= 100) or math.isnan(k):
            raise SproutError(
                f"Selector {type(self).__name__}: k={k!r} is outside (0, 100]. Set model.selector.init_args.k to the "
                "percentage of tokens to keep, e.g. 60 (Rho-1's default); 100 keeps every token."
            )
        if scope not in SCOPES:
            raise SproutError(
                f"Selector {type(self).__name__}: scope={scope!r} is not one of {', '.join(SCOPES)}; fix model.selector.init_args.scope."
            )
        self.k = float(k)
        self.scope = scope
        self._metrics: dict[str, torch.Tensor] = {}

    @abstractmethod
    def scores(self, token_loss: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """Higher is kept first; shape ``[B, T]``."""

    def token_weights(self, token_loss: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        valid = batch["valid"]
        keep = top_k_mask(self.scores(token_loss, batch), valid, self.k, self.scope)
        self._metrics = _excess_metrics(token_loss, batch, keep, valid)
        return keep.to(token_loss.dtype)

    def metrics(self) -> dict[str, torch.Tensor]:
        # 0-d tensors rather than floats: calling .item() every step would stall a GPU.
        return self._metrics


def _excess_metrics(
    token_loss: torch.Tensor, batch: Mapping[str, Any], keep: torch.Tensor, valid: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Mean excess loss of kept and of dropped tokens (NaN when there are none), when the batch
    has reference losses. Sums rather than boolean indexing, so a GPU never waits for the count."""
    if "ref_loss" not in batch:
        return {}
    excess = token_loss.float() - batch["ref_loss"].float()
    out = {}
    for name, mask in (("kept_excess", keep), ("dropped_excess", valid & ~keep)):
        count = mask.sum()
        out[name] = torch.where(count > 0, (excess * mask).sum() / count.clamp_min(1), torch.nan)
    return out
