"""Read a Hugging Face ``LlamaForCausalLM`` folder into a Sprout checkpoint.

Single-file (``model.safetensors``) and sharded (``model.safetensors.index.json``) folders are
read; the result loads with ``sprout.checkpoint.weights.load_model`` and can seed growth or serve as a
Rho-1 reference model:

    sprout import /models/TinyLlama-1.1B out/tinyllama.ckpt
"""

from __future__ import annotations

from pathlib import Path

from sprout.checkpoint.weights import load_model, save_model


def import_hf(hf_dir: Path, out: Path) -> Path:
    """Convert HF_DIR (config.json + safetensors) to the Sprout checkpoint OUT.

    Args:
        hf_dir: a LlamaForCausalLM folder on disk.
        out: the .ckpt file to write (replaced atomically if it exists).
    """
    model, meta = load_model(hf_dir)
    path = save_model(model, out, meta)
    c = model.config
    print(
        f"wrote {path}: {c.n_layer} layers, width {c.n_embd}, {c.n_head} heads / {c.n_kv_head} KV groups, vocab {c.vocab_size}"
    )
    return path
