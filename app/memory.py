"""Per-device training memory from the model shape: will a recipe fit before it is launched?

The estimate adds what a training step keeps alive at its peak (the start of backward):

- parameters, gradients and AdamW's two moments, in fp32, divided over the FSDP shards;
- with FSDP, the gathered (unsharded) parameters in flight in the compute dtype: the root
  (final norm and head, kept gathered from forward to backward), the embeddings and two
  blocks (the running one and the prefetched one), plus one block's unsharded gradients;
- activations autograd saves, in the compute dtype. Per token and layer the block saves its
  input and normed input twice (attention, feed-forward: 4 x n_embd), q and the attention
  output (2 x n_embd), k and v (2 x n_kv_head x head_dim) and four SwiGLU tensors
  (4 x intermediate_size). With activation checkpointing only each block's input is kept,
  plus one block's full activations while it is recomputed;
- the chunked loss's d loss / d logits and d loss / d hidden, in the compute dtype, where it keeps
  them from forward (``sprout.loss.keeps_grad_logits``: small batches and vocabularies);
- the largest transient: one block's backward temporaries or the chunked loss's fp32 slice of logits.

Gradients are counted in full because gradient accumulation keeps them between micro-batches.
Not counted: the CUDA context and NCCL buffers (about 0.5-1 GiB per GPU) and allocator
fragmentation; ``tests/test_memory.py`` checks the sum against a measured CPU step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sprout.loss import DEFAULT_CHUNK, keeps_grad_logits
from sprout.model import LlamaConfig, param_count

FP32 = 4


@dataclass
class MemoryEstimate:
    """Bytes per device, by what holds them."""

    parameters: int
    gradients: int
    optimizer: int
    gathered: int
    activations: int
    temporary: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def table(self) -> list[tuple[str, float]]:
        """(name, GiB) rows, the total last."""
        return [(f.name, getattr(self, f.name) / 2**30) for f in fields(self)] + [("total", self.total / 2**30)]


def activation_elements_per_token(config: LlamaConfig) -> int:
    """Elements one transformer block saves for backward, per token (see the module docstring)."""
    c = config
    return 6 * c.n_embd + 2 * c.n_kv_head * c.head_dim + 4 * c.intermediate_size


def estimate_memory(
    config: LlamaConfig,
    micro_batch: int,
    seq_len: int,
    shards: int = 1,
    compute_bytes: int = 2,
    activation_checkpointing: bool = False,
    loss_chunk: int | None = None,
) -> MemoryEstimate:
    """Peak training memory of one device.

    Args:
        config: the model shape.
        micro_batch: sequences per device per forward.
        seq_len: tokens per sequence.
        shards: ranks FSDP shards over (1: no sharding, DDP or one device).
        compute_bytes: bytes of the compute dtype (2 for bf16, 4 for fp32).
        activation_checkpointing: recompute blocks in backward.
        loss_chunk: tokens per slice of the chunked loss (default ``sprout.loss.DEFAULT_CHUNK``).
    """
    c = config
    tokens = micro_batch * seq_len
    n = param_count(c)
    embeddings = c.vocab_size * c.n_embd
    head = 0 if c.tie_embeddings else c.vocab_size * c.n_embd
    block = (n - embeddings - head - c.n_embd) // c.n_layer
    gathered = 0
    if shards > 1:
        gathered = (embeddings + head + c.n_embd + 2 * block) * compute_bytes + block * (compute_bytes + FP32)

    per_block = activation_elements_per_token(c) * tokens * compute_bytes
    stream = c.n_embd * tokens * compute_bytes  # one [tokens, n_embd] tensor
    final = 2 * stream + tokens * FP32  # final norm's input, the hidden states, the loss's log-sum-exp
    if keeps_grad_logits(tokens, c.vocab_size, compute_bytes):
        final += tokens * c.vocab_size * compute_bytes + stream
    if activation_checkpointing:
        activations = c.n_layer * stream + per_block + final
    else:
        activations = c.n_layer * per_block + final

    chunk = loss_chunk or DEFAULT_CHUNK
    loss_temp = 2 * min(chunk, tokens) * c.vocab_size * FP32 + stream + c.vocab_size * c.n_embd * FP32
    block_temp = tokens * (2 * c.intermediate_size + 2 * c.n_embd) * compute_bytes
    return MemoryEstimate(
        parameters=n * FP32 // shards,
        gradients=n * FP32 // shards,
        optimizer=2 * n * FP32 // shards,
        gathered=gathered,
        activations=activations,
        temporary=max(loss_temp, block_temp),
    )
