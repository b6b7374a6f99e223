"""Per-token cross-entropy, the one place the training loss is computed.

Returned unreduced (``[B, T]``) because a token selector weighs tokens before the mean.

``chunked_token_losses`` applies the output head itself, a slice of tokens at a time, so the
``[tokens, vocab]`` fp32 logits exist one slice at a time instead of for the whole batch: a
4 x 2048 micro-batch at vocab 32000 has 1 GiB of them in fp32, and the plain loss keeps
several such tensors for autograd. How backward gets d loss / d logits is a choice of memory
against compute (``recompute``):

- recompute: nothing of that size is kept; backward recomputes each slice's logits, one extra
  head matmul (about 2% of a 1.1B model's FLOPs, 8% of the 16M benchmark shape's);
- keep: forward also computes each slice's d loss / d logits (softmax minus one-hot, which does
  not depend on the upstream per-token weights) and d loss / d hidden, and keeps the first in the
  compute dtype; backward scales both by the per-token weights and does one matmul, the head's
  weight gradient. As many head matmuls as a plain loss, and ``tokens x vocab`` compute-dtype
  elements kept (32 MiB in bf16 for 8 x 256 tokens at vocab 8192).

The default keeps while that tensor stays under ``KEEP_GRAD_LOGITS_MAX_BYTES`` and recomputes
above it (the 1.1B recipe's 4 x 2048 x 32000 bf16 is 500 MiB: it recomputes).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
DEFAULT_CHUNK = 1024  # tokens per slice: 125 MiB of fp32 logits at vocab 32000, matmuls still at full speed
KEEP_GRAD_LOGITS_MAX_BYTES = 2**28  # 256 MiB of kept d loss / d logits; above it backward recomputes


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none", ignore_index=IGNORE_INDEX)
    return loss.view_as(targets)


def keeps_grad_logits(tokens: int, vocab_size: int, element_bytes: int) -> bool:
    """Whether the default (``recompute=None``) keeps d loss / d logits of ``tokens`` x ``vocab_size``
    in a compute dtype of ``element_bytes``."""
    return tokens * vocab_size * element_bytes <= KEEP_GRAD_LOGITS_MAX_BYTES


def chunked_token_losses(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None = None,
    compiled: bool = False,
    recompute: bool | None = None,
) -> torch.Tensor:
    """``token_losses(hidden @ weight.T, targets)`` without the whole batch's fp32 logits.

    ``hidden`` [B, T, C] are the final normed hidden states, ``weight`` [V, C] the output head,
    ``targets`` [B, T] with ``IGNORE_INDEX`` for tokens that do not count (loss 0). Returns fp32
    [B, T] (fp64 for fp64 inputs). Under autocast the matmuls run in the autocast dtype, as
    ``nn.Linear`` would; the softmax always runs in fp32. ``chunk_size`` is tokens per slice
    (default ``DEFAULT_CHUNK``). ``compiled`` runs each slice's softmax, target pick and
    gradient as one fused ``torch.compile`` kernel instead of a handful of elementwise passes
    over the [slice, vocab] logits. ``recompute``: backward recomputes the logits (``True``) or
    uses d loss / d logits kept from forward (``False``); ``None`` keeps them while
    ``keeps_grad_logits`` allows. Without a gradient to take, nothing is kept either way.
    """
    flat_hidden = hidden.reshape(-1, hidden.size(-1))
    chunk_size = chunk_size or DEFAULT_CHUNK
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    if recompute is None:
        recompute = not keeps_grad_logits(flat_hidden.size(0), weight.size(0), dtype.itemsize)
    keep = not recompute and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    kernels = _compiled_kernels() if compiled else (_chunk_losses, _chunk_grads, _chunk_losses_and_grads)
    with torch.autocast(device_type, enabled=False):
        loss = _ChunkedCrossEntropy.apply(
            flat_hidden.to(dtype), weight.to(dtype), targets.reshape(-1), chunk_size, kernels, keep
        )
    return loss.view_as(targets)


def _chunk_losses(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses and log-sum-exp of one slice."""
    logits = (hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32))
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1)
    return (lse - target_logit).masked_fill(targets == IGNORE_INDEX, 0.0), lse


def _grad_logits(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d loss / d logits of each token: softmax(logits) - onehot(target)."""
    onehot = torch.arange(logits.size(1), device=logits.device) == targets.unsqueeze(1)
    return (logits - lse.unsqueeze(1)).exp() - onehot.to(lse.dtype)


def _chunk_grads(hidden, weight, targets, lse, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of one slice w.r.t. its hidden states and the head, from recomputed logits,
    times the upstream gradient ``scale`` (0 where ignored)."""
    logits = (hidden @ weight.T).to(lse.dtype)
    grad_logits = (_grad_logits(logits, lse, targets) * scale.unsqueeze(1)).to(hidden.dtype)
    return grad_logits @ weight, grad_logits.T @ hidden


def _chunk_losses_and_grads(hidden, weight, targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token losses of one slice, its d loss / d logits in the compute dtype, and
    d loss / d hidden, all before the upstream per-token gradient is known."""
    logits = (hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32))
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1)
    losses = (lse - target_logit).masked_fill(targets == IGNORE_INDEX, 0.0)
    grad_logits = _grad_logits(logits, lse, targets).to(hidden.dtype)
    return losses, grad_logits, grad_logits @ weight


@functools.cache
def _compiled_kernels():
    return torch.compile(_chunk_losses), torch.compile(_chunk_grads), torch.compile(_chunk_losses_and_grads)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, kernels, keep):
        acc_dtype = torch.promote_types(hidden.dtype, torch.float32)  # fp32 softmax for bf16/fp16, fp64 stays
        losses = torch.empty(hidden.size(0), dtype=acc_dtype, device=hidden.device)
        lse = torch.empty_like(losses)
        if keep:
            grad_logits = torch.empty(hidden.size(0), weight.size(0), dtype=hidden.dtype, device=hidden.device)
            grad_hidden = torch.empty_like(hidden)
        for start in range(0, hidden.size(0), chunk_size):
            rows = slice(start, start + chunk_size)
            if keep:
                losses[rows], grad_logits[rows], grad_hidden[rows] = kernels[2](hidden[rows], weight, targets[rows])
            else:
                losses[rows], lse[rows] = kernels[0](hidden[rows], weight, targets[rows])
        if keep:
            ctx.save_for_backward(hidden, targets, grad_logits, grad_hidden)
        else:
            ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size, ctx.kernels, ctx.keep = chunk_size, kernels, keep
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        if ctx.keep:
            hidden, targets, grad_logits, grad_hidden = ctx.saved_tensors
            scale = grad_losses.masked_fill(targets == IGNORE_INDEX, 0.0).unsqueeze(1)
            # sum_i scale_i * g_i^T h_i, scaling the narrow [tokens, C] side instead of [tokens, V]
            grad_weight = grad_logits.T @ (hidden * scale).to(hidden.dtype)
            return (grad_hidden * scale).to(hidden.dtype), grad_weight, None, None, None, None
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device)
        scale = grad_losses.to(lse.dtype).masked_fill(targets == IGNORE_INDEX, 0.0)
        for start in range(0, hidden.size(0), ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            grad_hidden[rows], chunk_grad_weight = ctx.kernels[1](
                hidden[rows], weight, targets[rows], lse[rows], scale[rows]
            )
            grad_weight += chunk_grad_weight
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None, None
