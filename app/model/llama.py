"""A plain Llama decoder: RoPE, RMSNorm, SwiGLU, grouped-query attention, optional weight tying.

Module names follow Meta / torchtitan (``tok_embeddings``, ``layers.N.attention.wq``,
``feed_forward.w1``, ``output``), so state dicts map one-to-one onto other Llama code and growth
operators can address blocks by name. RoPE uses the rotate-half convention of Hugging Face
(pairs are dimension i and i + head_dim/2), so Hugging Face checkpoints map without permuting
``wq``/``wk``; Meta's original interleaved checkpoints would need HF's permutation first.

The model can be built on ``torch.device("meta")``: all initialisation lives in
``init_weights()`` (which also rebuilds the non-persistent RoPE tables), so FSDP and growth can
build on meta, materialise with ``to_empty()``, then call ``init_weights()`` or load a state dict
and call ``reset_rope()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sprout.errors import SproutError
from sprout.model.attention import causal_attention, check_backend
from sprout.model.config import LlamaConfig
from sprout.model.init import init_stds


def rope_tables(config: LlamaConfig, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [block_size, head_dim] in fp32, for the rotate-half convention."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    positions = torch.arange(config.block_size, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, T, H, D] by position; ``cos``/``sin`` are [T, D]."""
    cos = cos[:, None, :].to(x.dtype)
    sin = sin[:, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        check_backend(config.attention)
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.backend = config.attention
        self.wq = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=False)
        self.wk = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=False)
        self.wv = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim)
        q = apply_rope(q, *rope)
        k = apply_rope(k, *rope)
        out = causal_attention(q, k, v, self.backend)
        return self.wo(out.reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope)
        return x + self.feed_forward(self.ffn_norm(x))

    def init_weights(self, std: float, residual_std: float) -> None:
        self.attention_norm.reset_parameters()
        self.ffn_norm.reset_parameters()
        for linear in (
            self.attention.wq,
            self.attention.wk,
            self.attention.wv,
            self.feed_forward.w1,
            self.feed_forward.w3,
        ):
            nn.init.normal_(linear.weight, mean=0.0, std=std)
        for linear in (self.attention.wo, self.feed_forward.w2):
            nn.init.normal_(linear.weight, mean=0.0, std=residual_std)


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.output = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        cos, sin = rope_tables(config, self.tok_embeddings.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    def reset_rope(self) -> None:
        """Rebuild the RoPE tables in fp32 (after ``to_empty()`` or a cast to a low-precision dtype)."""
        self.rope_cos, self.rope_sin = rope_tables(self.config, self.tok_embeddings.weight.device)

    def init_weights(self) -> None:
        """Normal draws with the config's scheme's stds (``sprout.model.init``): one for the
        embedding, head and block input matrices, a smaller one for the residual projections
        ``wo`` and ``w2``; norms to one. Ties the head to the embedding again when the config asks
        for it, because ``to_empty()`` on a meta model unties shared parameters."""
        config = self.config
        self.reset_rope()
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        std, residual_std = init_stds(config.init, config.n_embd, config.n_layer, config.init_std)
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=std)
        for layer in self.layers:
            layer.init_weights(std, residual_std)
        self.norm.reset_parameters()
        if not config.tie_embeddings:
            nn.init.normal_(self.output.weight, mean=0.0, std=std)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final normed hidden states [B, T, n_embd], for losses that apply the head in chunks."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise SproutError(
                f"Input of {T} tokens is longer than the model's context, config field `block_size`={self.config.block_size}; "
                "shorten the data's sequence length or raise block_size in the model config."
            )
        rope = (self.rope_cos[:T], self.rope_sin[:T])
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = layer(x, rope)
        return self.norm(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab_size] for token ids ``idx`` [B, T]."""
        return self.output(self.hidden_states(idx))
