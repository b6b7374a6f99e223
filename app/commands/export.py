"""Write a Sprout checkpoint as a Hugging Face ``LlamaForCausalLM`` folder.

The folder loads with ``transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)`` and is the
route to lm-evaluation-harness:

    sprout export runs/last.ckpt out/hf --tokenizer data/tokenizer.json
    lm_eval --model hf --model_args pretrained=out/hf,dtype=float32 --tasks hellaswag,arc_easy
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from sprout.checkpoint.weights import load_model
from sprout.errors import SproutError
from sprout.hf import DTYPES, save_hf

# What a previous export may have left in OUT_DIR; --overwrite removes only these.
HF_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
)


def export(
    checkpoint: Path,
    out_dir: Path,
    tokenizer: Path | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Export CHECKPOINT to OUT_DIR as config.json, model.safetensors and tokenizer files.

    Args:
        checkpoint: a .ckpt written by `sprout fit` (or `sprout import`), or a distributed checkpoint folder.
        out_dir: the folder to write; it must be empty or absent unless --overwrite is given.
        tokenizer: the tokenizer.json or SentencePiece .model the model was trained with (default: the
            file the checkpoint records, if it still exists). Without one only the weights are written.
        dtype: dtype of the written weights (default: as stored in the checkpoint).
        overwrite: replace the files of an earlier export in OUT_DIR.
    """
    out_dir = Path(out_dir).expanduser()
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise SproutError(
                f"Output folder {out_dir} is not empty; choose a new folder or pass --overwrite to replace an earlier export there."
            )
        for path in out_dir.iterdir():
            if path.name in HF_FILES or path.suffix == ".safetensors":
                path.unlink()
    model, meta = load_model(checkpoint)
    identity = meta.get("tokenizer")
    if tokenizer is None and identity and Path(identity.get("name", "")).is_file():
        tokenizer = Path(identity["name"])
    files = save_hf(model, out_dir, tokenizer, DTYPES[dtype] if dtype else None, identity)
    print(f"wrote {out_dir}: {', '.join(p.name for p in files)}")
    if tokenizer is None:
        print(
            "note: no tokenizer written (none given with --tokenizer and the checkpoint records none that exists); "
            "transformers and lm-evaluation-harness need one: re-run with --tokenizer PATH.",
            file=sys.stderr,
        )
    return files
