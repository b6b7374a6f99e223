"""Gather a sharded (distributed-checkpoint) run checkpoint into one model file.

FSDP2 runs save each rank's shards into a folder (``.metadata``, ``__<rank>_0.distcp``,
``meta.pt``). Growth, reference scoring and export read such folders directly, but a single
file is easier to copy, share and keep. This reads the model's tensors (not the optimizer
state) in one process, no GPUs or process group needed, and writes a Sprout checkpoint that
``sprout.checkpoint.weights.load_model`` reads:

    sprout consolidate runs/sprout/version_0/checkpoints/last.ckpt out/model.ckpt
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from sprout.checkpoint.weights import load_model, save_model
from sprout.errors import SproutError
from sprout.hf import DTYPES


def consolidate(
    checkpoint: Path,
    output: Path,
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write CHECKPOINT's model as the single file OUTPUT.

    Args:
        checkpoint: a distributed checkpoint folder written by `sprout fit` under ModelParallelStrategy
            (any checkpoint `load_model` reads works, e.g. to change the dtype of a .ckpt).
        output: the .ckpt file to write.
        dtype: dtype of the written weights (default: as stored, fp32 for a training run).
        overwrite: replace OUTPUT if it exists.
    """
    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise SproutError(f"Output {output} exists; choose another path or pass --overwrite to replace it.")
    if output.is_dir():
        raise SproutError(f"Output {output} is a folder; give a file path such as {output / 'model.ckpt'}.")
    model, meta = load_model(checkpoint)
    if dtype is not None:
        model.to(DTYPES[dtype])
    meta = {**(meta or {}), "consolidated_from": str(Path(checkpoint).expanduser())}
    save_model(model, output, meta)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(f"wrote {output}: {sum(p.numel() for p in model.parameters()):,} parameters, {size / 2**20:.1f} MiB")
    return output
