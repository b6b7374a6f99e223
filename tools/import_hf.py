"""Read a Hugging Face ``LlamaForCausalLM`` folder into a Sprout checkpoint.

Single-file (``model.safetensors``) and sharded (``model.safetensors.index.json``) folders are
read; the result loads with ``app.checkpoint.load_model`` and can seed growth or serve as a
Rho-1 reference model:

    python tools/import_hf.py /models/TinyLlama-1.1B out/tinyllama.ckpt
"""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import auto_cli

from app.checkpoint import load_model, save_model
from app.errors import SproutError


def import_hf(hf_dir: Path, out: Path) -> Path:
    """Convert HF_DIR (config.json + safetensors) to the Sprout checkpoint OUT.

    Args:
        hf_dir: a LlamaForCausalLM folder on disk.
        out: the .ckpt file to write (replaced atomically if it exists).
    """
    model, meta = load_model(hf_dir)
    path = save_model(model, out, meta)
    c = model.config
    print(f"wrote {path}: {c.n_layer} layers, width {c.n_embd}, {c.n_head} heads / {c.n_kv_head} KV groups, vocab {c.vocab_size}")
    return path


def main(args: list[str] | None = None) -> None:
    try:
        auto_cli(import_hf, args=args)
    except SproutError as error:
        print(f"import_hf: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
