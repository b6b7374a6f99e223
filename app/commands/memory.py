"""Expected per-GPU training memory of a model shape, with and without activation checkpointing.

    sprout memory                                          # TinyLlama 1.1B, 4 x 2048, 8 GPUs
    sprout memory --recipe recipes/tinyllama-1.1b.yaml
    sprout memory --arch llama-2-7b --micro_batch 1 --shards 64

What is counted and what is not: see ``app/memory.py``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sprout.errors import SproutError
from sprout.memory import estimate_memory
from sprout.model import LlamaConfig, param_count
from sprout.parallel import compute_dtype


def estimate(
    arch: str = "tiny-llama-1.1b",
    micro_batch: int = 4,
    seq_len: int = 2048,
    shards: int = 8,
    precision: str = "bf16-mixed",
    recipe: Path | None = None,
) -> dict[str, float]:
    """Print the estimate as a table; returns the totals in GiB.

    Args:
        arch: a named model shape (sprout.model.CONFIGS).
        micro_batch: sequences per GPU per forward.
        seq_len: tokens per sequence.
        shards: GPUs FSDP shards over (1 for DDP or one GPU; the GPUs per node for hybrid sharding).
        precision: the trainer's precision flag; bf16/16 compute stores activations in 2 bytes.
        recipe: read arch, overrides, micro-batch, sequence length, devices x nodes and precision from a recipe.
    """
    overrides = {}
    if recipe is not None:
        arch, overrides, micro_batch, seq_len, shards, precision = _from_recipe(Path(recipe))
    config = LlamaConfig.from_name(arch, **overrides)
    compute_bytes = 2 if compute_dtype(precision) is not None else 4
    rows = {ac: estimate_memory(config, micro_batch, seq_len, shards, compute_bytes, ac) for ac in (False, True)}
    print(
        f"{arch}: {param_count(config) / 1e9:.2f}B parameters, micro-batch {micro_batch} x {seq_len} tokens, "
        f"{shards} FSDP shard(s), {precision}"
    )
    print(f"{'GiB per GPU':<14}{'no checkpointing':>18}{'checkpointing':>16}")
    for (name, plain), (_, checkpointed) in zip(rows[False].table(), rows[True].table()):
        print(f"{name:<14}{plain:>18.2f}{checkpointed:>16.2f}")
    print("(plus the CUDA context and communication buffers, about 0.5-1 GiB)")
    return {"no_checkpointing": rows[False].total / 2**30, "checkpointing": rows[True].total / 2**30}


def _from_recipe(path: Path):
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SproutError(f"Cannot read recipe {path}: {error}") from None
    model, data, trainer = recipe.get("model", {}), recipe.get("data", {}), recipe.get("trainer", {})
    devices = trainer.get("devices", 1)
    if not isinstance(devices, int):
        raise SproutError(f"Recipe {path}: trainer.devices={devices!r} is not a number; pass --shards explicitly.")
    strategy = str(trainer.get("strategy", ""))
    sharded = "ModelParallelStrategy" in strategy
    shards = devices if model.get("parallel", {}).get("sharding") == "hybrid" else devices * trainer.get("num_nodes", 1)
    return (
        model.get("arch", "micro"),
        model.get("arch_overrides") or {},
        data.get("batch_size", 8),
        data.get("seq_len", 256),
        shards if sharded else 1,
        str(trainer.get("precision", "32-true")),
    )
