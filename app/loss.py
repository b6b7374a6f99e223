"""Per-token cross-entropy, the one place the training loss is computed.

Returned unreduced (``[B, T]``) because a token selector weighs tokens before the mean.

``chunked_token_losses`` applies the output head itself, a slice of tokens at a time, so the
``[tokens, vocab]`` logits exist only one slice at a time (in fp32 for the softmax) instead of
for the whole batch; backward recomputes each slice's logits rather than storing them. With a
32000-token vocabulary that is what makes the difference between the head dominating a GPU's
memory (a 4 x 2048 micro-batch has 1 GiB of fp32 logits, several copies of it in autograd) and
not. It costs one extra head matmul in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none", ignore_index=IGNORE_INDEX)
    return loss.view_as(targets)


def chunked_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """``token_losses(hidden @ weight.T, targets)`` without the whole batch's logits.

    ``hidden`` [B, T, C] are the final normed hidden states, ``weight`` [V, C] the output head,
    ``targets`` [B, T] with ``IGNORE_INDEX`` for tokens that do not count (loss 0). Returns fp32
    [B, T] (fp64 for fp64 inputs). Under autocast the matmuls run in the autocast dtype, as
    ``nn.Linear`` would; the softmax always runs in fp32. ``chunk_size`` is tokens per slice; the default keeps a slice's logits about the size of
    the hidden states (Liger-Kernel's rule), at least 256 tokens so the matmuls stay efficient.
    """
    C = hidden.size(-1)
    flat_hidden = hidden.reshape(-1, C)
    n = flat_hidden.size(0)
    if chunk_size is None:
        chunk_size = max(256, n * C // weight.size(0))
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    with torch.autocast(device_type, enabled=False):
        loss = _ChunkedCrossEntropy.apply(flat_hidden.to(dtype), weight.to(dtype), targets.reshape(-1), chunk_size)
    return loss.view_as(targets)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
        acc_dtype = torch.promote_types(hidden.dtype, torch.float32)  # fp32 softmax for bf16/fp16, fp64 stays
        losses = torch.empty(hidden.size(0), dtype=acc_dtype, device=hidden.device)
        lse = torch.empty_like(losses)
        for start in range(0, hidden.size(0), chunk_size):
            rows = slice(start, start + chunk_size)
            logits = (hidden[rows] @ weight.T).to(acc_dtype)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            t = targets[rows]
            valid = t != IGNORE_INDEX
            target_logit = logits.gather(1, t.clamp_min(0).unsqueeze(1)).squeeze(1)
            losses[rows] = (lse[rows] - target_logit).masked_fill(~valid, 0.0)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if ctx.needs_input_grad[1] else None
        scale = grad_losses.to(lse.dtype).masked_fill(targets == IGNORE_INDEX, 0.0)
        for start in range(0, hidden.size(0), ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            h = hidden[rows]
            # d loss / d logits = softmax(logits) - onehot(target), times the upstream gradient
            grad_logits = (h @ weight.T).to(lse.dtype).sub_(lse[rows, None]).exp_()
            t = targets[rows]
            grad_logits[torch.arange(t.numel(), device=t.device), t.clamp_min(0)] -= 1.0
            grad_logits.mul_(scale[rows, None])
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight.add_(grad_logits.T @ h)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None
