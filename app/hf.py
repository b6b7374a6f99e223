"""Hugging Face ``LlamaForCausalLM`` folders <-> Sprout's Llama: names, config, files.

The two models compute the same function with the same tensors: Sprout's RoPE uses HF's
rotate-half convention, so the mapping is a rename (no q/k permutation) and a tied head is
simply left out of the safetensors file, as HF does. This module is used by
``sprout export``, ``sprout import`` and ``sprout.checkpoint.weights.load_model``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.model import Llama, LlamaConfig

# Sprout name inside ``layers.N.`` -> HF name inside ``model.layers.N.``
LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|bos|>", "<|startoftext|>", "[BOS]")
UNK_NAMES = ("<unk>", "<|unk|>", "[UNK]")


def hf_name(name: str) -> str:
    """HF tensor name of a Sprout ``Llama`` state-dict key."""
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    _, index, rest = name.split(".", 2)  # layers.N.rest
    return f"model.layers.{index}.{LAYER_NAMES[rest]}"


def sprout_keys(config: LlamaConfig) -> list[str]:
    """The Sprout keys a model of this config must have (a tied head is only ``tok_embeddings``)."""
    names = [n for n in TOP_NAMES if not (config.tie_embeddings and n == "output.weight")]
    return names + [f"layers.{i}.{rest}" for i in range(config.n_layer) for rest in LAYER_NAMES]


def to_hf_state_dict(
    state_dict: dict[str, torch.Tensor], config: LlamaConfig, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Rename for HF; contiguous copies (safetensors refuses shared or strided storage)."""
    out = {}
    for name in sprout_keys(config):
        tensor = state_dict[name]
        out[hf_name(name)] = tensor.to(dtype or tensor.dtype).contiguous()
    return out


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], config: LlamaConfig, source: Path) -> dict[str, torch.Tensor]:
    """Rename HF tensors to Sprout keys; a missing tensor is an error naming the folder."""
    missing = [hf_name(n) for n in sprout_keys(config) if hf_name(n) not in hf_state]
    if missing:
        raise SproutError(
            f"The Hugging Face checkpoint {source} lacks {len(missing)} tensor(s) its config.json promises, e.g. "
            f"{', '.join(missing[:3])}; the folder is incomplete (re-download or re-export it)."
        )
    return {name: hf_state[hf_name(name)] for name in sprout_keys(config)}


def hf_config(
    config: LlamaConfig, dtype: torch.dtype, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> dict:
    """``config.json`` of a ``LlamaForCausalLM``. ``rope_theta`` and the dtype are written both the
    transformers 4.x way (``rope_theta``, ``torch_dtype``; also read by vLLM) and the 5.x way."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": config.init_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": str(dtype).removeprefix("torch."),
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def config_from_hf(hf: dict, source: Path) -> LlamaConfig:
    """A ``LlamaConfig`` from an HF ``config.json``, refusing variants Sprout's model does not compute."""

    def refuse(field: str, value, why: str):
        raise SproutError(
            f"{source}: config.json field `{field}`={value!r} is not supported: {why}. Only plain Llama / Llama-2 style models can be imported."
        )

    if hf.get("model_type") != "llama":
        refuse("model_type", hf.get("model_type"), "Sprout imports `llama` models")
    if hf.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", hf["hidden_act"], "Sprout's feed-forward is SwiGLU (silu)")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field):
            refuse(field, hf[field], "Sprout's projections have no bias")
    rope = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        refuse("rope_scaling", hf.get("rope_scaling") or rope, "only unscaled RoPE is implemented")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        refuse("head_dim", head_dim, "Sprout needs head_dim * num_attention_heads == hidden_size")
    try:
        return LlamaConfig(
            n_layer=hf["num_hidden_layers"],
            n_embd=hf["hidden_size"],
            n_head=heads,
            n_kv_head=hf.get("num_key_value_heads") or heads,
            intermediate_size=hf["intermediate_size"],
            vocab_size=hf["vocab_size"],
            block_size=hf["max_position_embeddings"],
            rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
    except KeyError as missing:
        raise SproutError(
            f"{source}: config.json has no field {missing}; it is not a complete LlamaForCausalLM config."
        ) from None


def read_hf(folder: Path, map_location: str | torch.device = "cpu") -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Config and Sprout-named tensors of an HF Llama folder (single or sharded safetensors)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    try:
        config = config_from_hf(json.loads(config_path.read_text()), folder)
    except (OSError, json.JSONDecodeError) as error:
        raise SproutError(
            f"Cannot read {config_path}: {error}. A Hugging Face model folder needs a valid config.json."
        ) from None
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            files = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as error:
            raise SproutError(
                f"Cannot read the shard index {index_path}: {error!r}; re-download or re-export the folder."
            ) from None
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise SproutError(
            f"{folder} has no model.safetensors or model.safetensors.index.json; Sprout reads only safetensors "
            "weights (convert a pytorch_model.bin folder with transformers' save_pretrained first)."
        )
    hf_state = {}
    for name in files:
        try:
            hf_state.update(load_file(folder / name, device=str(map_location)))
        except (OSError, SafetensorError) as error:
            raise SproutError(
                f"Cannot read weights file {folder / name}: {error}. The file is missing or truncated; re-download or re-export the folder."
            ) from None
    return config, from_hf_state_dict(hf_state, config, folder)


def export_tokenizer(
    path: Path, out_dir: Path, config: LlamaConfig, identity: dict | None = None
) -> dict[str, int | None]:
    """Copy the training tokenizer (``tokenizer.json`` or SentencePiece ``.model``) into ``out_dir``
    with the small config files ``AutoTokenizer`` needs; returns the bos/eos ids for config.json.

    ``identity`` is the checkpoint's record of its tokenizer: a different file is refused, since
    evaluating with another vocabulary gives meaningless scores.
    """
    tokenizer = Tokenizer.load_trained(path, identity, config.vocab_size, "the checkpoint")
    if tokenizer.kind == "hf":
        pieces = _json_pieces(tokenizer.path)
        shutil.copyfile(tokenizer.path, out_dir / "tokenizer.json")
        tokenizer_class = "PreTrainedTokenizerFast"
    else:
        pieces = _sentencepiece_pieces(tokenizer.path)
        shutil.copyfile(tokenizer.path, out_dir / "tokenizer.model")
        tokenizer_class = "LlamaTokenizer"
    by_id = {i: piece for piece, i in pieces.items()}
    tokens = {
        "eos": (by_id[tokenizer.eos_id], tokenizer.eos_id),
        "bos": _pick(pieces, BOS_NAMES),
        "unk": _pick(pieces, UNK_NAMES),
    }
    special = {f"{name}_token": token[0] for name, token in tokens.items() if token is not None}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    tokenizer_config = {
        "tokenizer_class": tokenizer_class,
        "model_max_length": config.block_size,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    if (
        tokenizer_class == "LlamaTokenizer"
    ):  # Sprout's data never starts documents with BOS, so evaluation should not either
        tokenizer_config.update(add_bos_token=False, add_eos_token=False)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return {f"{name}_token_id": tokens[name][1] if tokens[name] else None for name in ("bos", "eos")}


def _pick(pieces: dict[str, int], names: tuple[str, ...]) -> tuple[str, int] | None:
    for name in names:
        if name in pieces:
            return name, pieces[name]
    return None


def _json_pieces(path: Path) -> dict[str, int]:
    """Special-looking vocabulary entries and all added tokens of a tokenizer.json."""
    data = json.loads(path.read_text())
    vocab = data.get("model", {}).get("vocab")
    entries = (
        vocab.items() if isinstance(vocab, dict) else ((entry[0], i) for i, entry in enumerate(vocab or []))
    )  # BPE: dict, Unigram: list
    pieces = {p: i for p, i in entries if p[:1] in "<["}
    return {**pieces, **{t["content"]: t["id"] for t in data.get("added_tokens", [])}}


def _sentencepiece_pieces(path: Path) -> dict[str, int]:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    ids = (processor.bos_id(), processor.eos_id(), processor.unk_id())
    return {processor.IdToPiece(i): i for i in ids if i >= 0}


def save_hf(
    model: Llama,
    out_dir: Path,
    tokenizer: Path | None = None,
    dtype: torch.dtype | None = None,
    tokenizer_identity: dict | None = None,
) -> list[Path]:
    """Write ``model`` as an HF ``LlamaForCausalLM`` folder; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    dtype = dtype or state["tok_embeddings.weight"].dtype
    token_ids = export_tokenizer(tokenizer, out_dir, config, tokenizer_identity) if tokenizer is not None else {}
    save_file(to_hf_state_dict(state, config, dtype), out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config(config, dtype, **token_ids), indent=2) + "\n")
    return sorted(p for p in out_dir.iterdir() if p.is_file())
