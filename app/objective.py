"""The training objective: token losses weighted by the selector and by domain, Σ w·ℓ / Σ w.

Pure tensor functions, no Lightning, so a change to how tokens or domains are weighed (a
selector's weights, a mixture policy's per-domain factors) is read and tested here alone.
"""

from __future__ import annotations

import torch


def token_weights(
    selector_weights: torch.Tensor,
    valid: torch.Tensor,
    domain: torch.Tensor | None = None,
    domain_factors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each token's weight ``[B, T]``: the selector's, zero where the target is padding, times
    its row's domain factor (``domain_factors[domain[b]]``) when a mixture policy weighs the loss.
    The factors are an input: how a policy turns its state into them is the policy's business."""
    weights = selector_weights * valid
    if domain_factors is not None:
        weights = weights * domain_factors[domain].unsqueeze(1)
    return weights


def objective(token_loss: torch.Tensor, weights: torch.Tensor, across_ranks: bool = False) -> torch.Tensor:
    """Σ w·ℓ / Σ w exactly; a batch in which nothing counts (Σ w = 0) gives 0, not 0/0.

    With ``across_ranks`` (a mixture policy's domain factors, as the official DoReMi trainer
    does) Σ w is all-reduced over the data-parallel ranks and divided by their number: once
    DDP/FSDP average the ranks' gradients, the step minimises Σ_all w·ℓ / Σ_all w over the global
    batch. Each rank's own Σ w gives the mean of the ranks' weighted means instead, which differs
    whenever the ranks' Σ w differ (domain factors make them differ with the domains each drew)."""
    total = weights.sum()
    if across_ranks and torch.distributed.is_available() and torch.distributed.is_initialized():
        total = total.detach().clone()
        torch.distributed.all_reduce(total)
        total = total / torch.distributed.get_world_size()
    return (weights * token_loss).sum() / torch.where(total == 0, torch.ones_like(total), total)


def kept_share(weights: torch.Tensor, domain: torch.Tensor, n_domains: int) -> torch.Tensor:
    """Which domains the kept tokens (weight > 0) come from: ``[n_domains]`` shares summing to 1."""
    kept = (weights > 0).sum(dim=1).float()
    per_domain = torch.zeros(n_domains, device=kept.device).index_add_(0, domain, kept)
    return per_domain / per_domain.sum().clamp_min(1)
