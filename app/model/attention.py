"""Causal grouped-query attention behind one switch: ``flash`` | ``sdpa`` | ``eager`` | ``auto``.

All backends take and return tensors laid out ``[batch, seq, heads, head_dim]`` (flash-attn's
layout, and what the projections produce without a copy); ``k`` and ``v`` have ``n_kv_head``
heads, and query head ``h`` attends with KV head ``h // (n_head // n_kv_head)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from app.errors import SproutError

try:  # flash-attn is an optional GPU dependency (``pip install sprout[gpu]``)
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None

FLASH_DTYPES = (torch.float16, torch.bfloat16)


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
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
    return out.transpose(1, 2)


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
