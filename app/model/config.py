"""Llama shapes: one dataclass, a table of named shapes, and closed-form size/FLOP estimates.

Every consumer (recipes, growth, export, planning tools) builds models from a ``LlamaConfig``,
so the checks here are the single place where an impossible shape is caught, with the field named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sprout.errors import SproutError
from sprout.model.init import INIT_SCHEMES

ATTENTION_BACKENDS = ("auto", "flash", "sdpa", "eager")
# The fields that make a model's size, which growth changes; the others (vocabulary, context,
# numerics) a grown model keeps.
DEPTH_FIELDS = ("n_layer",)
WIDTH_FIELDS = ("n_embd", "n_head", "n_kv_head", "intermediate_size")
SHAPE_FIELDS = DEPTH_FIELDS + WIDTH_FIELDS


@dataclass
class LlamaConfig:
    """Shape and numerics of a Llama decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention).

    ``block_size`` is the longest context the model accepts (the RoPE table is built for it).
    ``n_kv_head`` < ``n_head`` gives grouped-query attention: query head ``h`` reads KV head
    ``h // (n_head // n_kv_head)``, the grouping used by Hugging Face and PyTorch SDPA.
    """

    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    intermediate_size: int
    vocab_size: int
    block_size: int
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    attention: str = "auto"
    init_std: float = 0.02
    init: str = "llama"  # how fresh weights are drawn (``sprout.model.init``)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size", "vocab_size", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SproutError(
                    f"Model config field `{name}` must be a positive integer, got {value!r}; fix it in the recipe's model config."
                )
        for name in ("rope_base", "norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise SproutError(
                    f"Model config field `{name}` must be a positive number, got {value!r}; fix it in the recipe's model config."
                )
        if self.n_embd % self.n_head:
            raise SproutError(
                f"Model config field `n_head`={self.n_head} does not divide `n_embd`={self.n_embd}; "
                f"choose n_head so that n_embd / n_head is a whole head size (e.g. n_head={_nearest_divisor(self.n_embd, self.n_head)})."
            )
        if self.head_dim % 2:
            raise SproutError(
                f"Model config gives an odd head size n_embd/n_head = {self.n_embd}/{self.n_head} = {self.head_dim}; "
                "RoPE rotates pairs of dimensions, so change `n_embd` or `n_head` to make the head size even."
            )
        if self.n_head % self.n_kv_head:
            raise SproutError(
                f"Model config field `n_kv_head`={self.n_kv_head} does not divide `n_head`={self.n_head}; grouped-query "
                "attention needs the same number of query heads per KV group; use a divisor of n_head (n_kv_head=n_head is plain multi-head attention)."
            )
        if self.attention not in ATTENTION_BACKENDS:
            raise SproutError(
                f"Model config field `attention`={self.attention!r} is not one of {', '.join(ATTENTION_BACKENDS)}; fix it in the recipe."
            )
        if self.init not in INIT_SCHEMES:
            raise SproutError(
                f"Model initialisation `init`={self.init!r} is not one of {', '.join(INIT_SCHEMES)}; fix model.init in the recipe."
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides) -> LlamaConfig:
        """A named shape from ``CONFIGS``, with fields replaced by ``overrides`` (e.g. ``vocab_size``)."""
        if name not in CONFIGS:
            raise SproutError(f"Unknown model config name {name!r}; available names: {', '.join(CONFIGS)}.")
        return cls.from_dict({**CONFIGS[name], **overrides})

    def replace(self, **changes) -> LlamaConfig:
        """A copy with some fields changed (validated again), e.g. the grown shape for a growth operator."""
        return LlamaConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LlamaConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SproutError(
                f"Unknown model config field(s) {', '.join(unknown)}; valid fields are {', '.join(sorted(known))}."
            )
        missing = sorted(
            f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in data
        )
        if missing:
            raise SproutError(f"Model config is missing required field(s) {', '.join(missing)}.")
        return cls(**data)


def _nearest_divisor(n: int, target: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))


def _shape(n_layer, n_embd, n_head, n_kv_head, intermediate_size, vocab_size, block_size, **rest) -> dict:
    return dict(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_kv_head=n_kv_head,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        block_size=block_size,
        **rest,
    )


# The growth shapes follow "Stacking Your Transformers" (Du et al. 2024): a small model of the same
# width with 1/4 of the layers is grown depthwise by g = 4. The 1.1B class is the official code's
# 6L2048H -> 24L2048H: TinyLlama's width and FFN with full multi-head attention (32 KV heads, no
# grouping), 24 layers so that 6 -> 24 is g = 4; the 7B class is Llama-2-7B's shape. The 3B class is
# 2560 wide (32 heads of 80, FFN 6912 = Llama's 8/3 rule rounded to 256): at 32 layers that is
# 2.7B parameters, where OpenLLaMA-3B's width 3200 would give 4.2B. All growth shapes train with
# TinyLlama's 2048-token context and the 32000-token Llama vocabulary.
_TINYLLAMA = dict(n_embd=2048, n_head=32, n_kv_head=4, intermediate_size=5632, vocab_size=32000, block_size=2048)
_GSTACK_1B = dict(_TINYLLAMA, n_kv_head=32)
_LLAMA_3B = dict(n_embd=2560, n_head=32, n_kv_head=32, intermediate_size=6912, vocab_size=32000, block_size=2048)
_LLAMA_7B = dict(n_embd=4096, n_head=32, n_kv_head=32, intermediate_size=11008, vocab_size=32000, block_size=2048)

CONFIGS: dict[str, dict] = {
    # CPU sizes for tests and the quick start; recipes set vocab_size to their tokenizer's.
    "micro": _shape(2, 64, 4, 2, 176, 4096, 256),
    "tiny": _shape(4, 128, 4, 2, 352, 4096, 256),
    "small": _shape(6, 256, 8, 4, 688, 4096, 256),
    # Reference shape of the throughput benchmark (issue "Scale and speed").
    "bench-6l-384": _shape(6, 384, 6, 2, 1024, 8192, 256),
    # Published models.
    "tiny-llama-1.1b": _shape(22, **_TINYLLAMA),
    "llama-2-7b": _shape(32, 4096, 32, 32, 11008, 32000, 4096),
    "llama-2-13b": _shape(40, 5120, 40, 40, 13824, 32000, 4096),
    # Growth pairs: source (L layers) -> target (4L layers), same width.
    "llama-1.1b-6l": _shape(6, **_GSTACK_1B),
    "llama-1.1b-24l": _shape(24, **_GSTACK_1B),
    "llama-3b-8l": _shape(8, **_LLAMA_3B),
    "llama-3b-32l": _shape(32, **_LLAMA_3B),
    "llama-7b-8l": _shape(8, **_LLAMA_7B),
    "llama-7b-32l": _shape(32, **_LLAMA_7B),
}


def _layer_matmul_params(c: LlamaConfig) -> int:
    attention = 2 * c.n_embd * c.n_head * c.head_dim + 2 * c.n_embd * c.n_kv_head * c.head_dim
    return attention + 3 * c.n_embd * c.intermediate_size


def param_count(config: LlamaConfig, embeddings: bool = True) -> int:
    """Number of parameters. ``embeddings=False`` leaves out the token embedding table (and the
    head when it is tied to it): the non-embedding N of scaling laws."""
    c = config
    body = c.n_layer * (_layer_matmul_params(c) + 2 * c.n_embd) + c.n_embd
    head = 0 if c.tie_embeddings else c.vocab_size * c.n_embd
    return body + head + (c.vocab_size * c.n_embd if embeddings else 0)


def flops_per_token(config: LlamaConfig, seq_len: int) -> int:
    """Training FLOPs (forward + backward) per token, in the PaLM (appendix B) / nanoGPT MFU form.

    6 FLOPs per token for every weight that takes part in a matmul (all block projections and the
    output head, tied or not; not the embedding lookup, not the norms) plus
    12 * n_layer * n_embd * seq_len for attention scores and the weighted sum of values. The
    attention term counts the full T x T product, not half of it for the causal mask, as
    ``torch.utils.flop_counter`` does for SDPA.
    """
    c = config
    matmul_params = c.n_layer * _layer_matmul_params(c) + c.vocab_size * c.n_embd
    return 6 * matmul_params + 12 * c.n_layer * c.n_head * c.head_dim * seq_len


def forward_flops_per_token(config: LlamaConfig, seq_len: int) -> int:
    """Forward-only FLOPs per token, a third of ``flops_per_token``: 2 per matmul weight plus the
    attention products once. What a frozen model that only scores tokens costs (Rho-1's online reference)."""
    return flops_per_token(config, seq_len) // 3
