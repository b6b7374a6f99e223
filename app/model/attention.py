"""Causal grouped-query attention behind one switch: ``flash`` | ``sdpa`` | ``eager`` | ``auto``.

All backends take and return tensors laid out ``[batch, seq, heads, head_dim]`` (flash-attn's
layout, and what the projections produce without a copy); ``k`` and ``v`` have ``n_kv_head``
heads, and query head ``h`` attends with KV head ``h // (n_head // n_kv_head)``.

On CPU inside a compiled region, ``sdpa`` keeps PyTorch's fused forward kernel but writes the
backward as plain tensor ops (``_CPUAttention``): the fused CPU backward kernel runs its small
per-head matmuls at a fraction of the matmul rate, while Inductor turns the plain backward into a
few large batched matmuls and fused elementwise loops, about 1.7x faster in bf16 at the
benchmark shape. In fp32 the fused kernel stays: it skips the masked half of the scores, which the
plain backward computes, and fp32 matmuls are slow enough for that to cost more than it saves. The
plain backward keeps a layer's [heads, T, T] scores in fp32, so it is used only while those stay
under ``CPU_MATH_BACKWARD_MAX_SCORES``; longer sequences keep the fused kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sprout.errors import SproutError

try:  # flash-attn is an optional GPU dependency (``pip install sprout[gpu]``)
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None

FLASH_DTYPES = (torch.float16, torch.bfloat16)
CPU_MATH_BACKWARD_DTYPES = (torch.bfloat16, torch.float16)
CPU_MATH_BACKWARD_MAX_SCORES = 2**26  # batch x heads x T x T; 256 MiB of fp32 scores


def flash_available() -> bool:
    return flash_attn_func is not None


def check_backend(name: str) -> None:
    """Fail at model construction, not at the first step, when flash-attn was asked for but is missing."""
    if name == "flash" and not flash_available():
        raise SproutError(
            "Model config `attention: flash` needs the flash-attn package, which is not importable here; "
            "install `sprout[gpu]` on a CUDA machine, or set `attention: auto` to fall back to PyTorch SDPA."
        )


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Causal attention of ``q`` [B, T, H, D] over ``k``, ``v`` [B, T, H_kv, D] -> [B, T, H, D]."""
    if backend == "auto":
        use_flash = flash_available() and q.is_cuda and q.dtype in FLASH_DTYPES
        backend = "flash" if use_flash else "sdpa"
    if backend == "flash":
        return _flash(q, k, v)
    if backend == "sdpa":
        return _sdpa(q, k, v)
    if backend == "eager":
        return eager_attention(q, k, v)
    raise SproutError(f"Unknown attention backend {backend!r}; use one of auto, flash, sdpa, eager.")


def _flash(q, k, v):
    check_backend("flash")
    if not q.is_cuda or q.dtype not in FLASH_DTYPES:
        raise SproutError(
            f"`attention: flash` runs only on CUDA tensors in fp16/bf16, got a {q.dtype} tensor on {q.device}; "
            "train with bf16 precision on a GPU, or set `attention: auto`."
        )
    return flash_attn_func(q, k, v, causal=True)  # native GQA when k/v have fewer heads


def _sdpa(q, k, v):
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if _use_cpu_math_backward(q):
        out = _CPUAttention.apply(q, k, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
    return out.transpose(1, 2)


def _use_cpu_math_backward(q: torch.Tensor) -> bool:
    B, H, T, _ = q.shape
    return (
        q.device.type == "cpu"
        and q.dtype in CPU_MATH_BACKWARD_DTYPES
        and q.requires_grad
        and torch.compiler.is_compiling()  # uncompiled, the plain backward is slower than the fused kernel
        and B * H * T * T <= CPU_MATH_BACKWARD_MAX_SCORES
    )


class _CPUAttention(torch.autograd.Function):
    """Causal attention [B, H, T, D] over [B, H_kv, T, D]: PyTorch's fused CPU forward (which
    handles grouped KV heads natively and returns the log-sum-exp), then the textbook backward.

    The backward folds each KV head's query group into the rows of one matrix, [B, H_kv, G*T, D],
    so the matmuls are large and the gradients of shared K and V sum over the group for free."""

    @staticmethod
    def forward(ctx, q, k, v):
        from sprout.compat.torch import cpu_flash_attention  # here: on a GPU any torch will do (tools/gpu_check.py)

        out, lse = cpu_flash_attention(q, k, v, 0.0, True)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        B, H, T, D = q.shape
        H_kv = k.size(1)
        acc = torch.promote_types(q.dtype, torch.float32)  # fp32 softmax for bf16/fp16, fp64 stays
        scale = 1.0 / math.sqrt(D)

        def fold(t):  # [B, H, T, ...] -> [B, H_kv, G*T, ...]
            return t.reshape(B, H_kv, -1, *t.shape[3:])

        q, grad_out, out, lse = fold(q), fold(grad_out), fold(out), fold(lse).unsqueeze(-1)
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1).repeat(H // H_kv, 1)
        probs = ((q @ k.transpose(-2, -1)).to(acc) * scale - lse).exp().masked_fill(future, 0.0)
        grad_v = probs.to(v.dtype).transpose(-2, -1) @ grad_out
        grad_probs = (grad_out @ v.transpose(-2, -1)).to(acc)
        row_dot = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # sum_j P_ij dP_ij
        grad_scores = (probs * (grad_probs - row_dot) * scale).to(q.dtype)
        grad_q = grad_scores @ k
        grad_k = grad_scores.transpose(-2, -1) @ q
        return grad_q.reshape(B, H, T, D), grad_k, grad_v


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference: softmax(Q K^T / sqrt(d) + causal mask) V with KV heads repeated, in fp32 softmax."""
    groups = q.size(2) // k.size(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    T = q.size(-2)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return (probs @ v).transpose(1, 2)
