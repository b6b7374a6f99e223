"""Load a trained Llama from whatever checkpoint a user points at, or say clearly why not.

Growth sources, Rho-1 reference models, export and evaluation all start from a path; this is the
one reader, so every format Sprout writes (and Hugging Face folders) works everywhere.
A Sprout checkpoint is a dict with ``state_dict`` (keys ``model.<Llama key>``, as the
LightningModule holds the model as ``self.model``) and ``sprout`` metadata
(``model_config``, ``tokenizer`` identity, ...).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from sprout.checkpoint.safe_load import check_distributed, load_file
from sprout.errors import SproutError
from sprout.files import replacing
from sprout.hf import read_hf
from sprout.model import Llama, LlamaConfig, build_model
from sprout.model.attention import flash_available

FORMATS = (
    "a Lightning .ckpt file written by `sprout fit` (or by sprout import), "
    "a Lightning distributed-checkpoint folder (.metadata, *.distcp and meta.pt), "
    "or a Hugging Face LlamaForCausalLM folder (config.json + safetensors)"
)
PREFIX = "model."


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", config: LlamaConfig | None = None
) -> tuple[Llama, dict]:
    """The model stored at ``path`` and the checkpoint's ``sprout`` metadata.

    ``config`` overrides the stored config (e.g. another attention backend); its tensor shapes
    must match the checkpoint's. A stored ``attention: flash`` becomes ``auto`` where flash-attn
    is missing (same function), so a GPU run's checkpoint loads on a CPU machine.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SproutError(f"Checkpoint {path} does not exist; pass {FORMATS}.")
    if path.is_dir():
        if (path / "config.json").is_file():
            hf_config, state = read_hf(path, map_location)
            meta = {"model_config": hf_config.to_dict(), "tokenizer": _folder_tokenizer(path), "source": str(path)}
        elif (path / ".metadata").is_file():
            state, meta = _read_distributed(path, map_location)
        else:
            raise SproutError(f"Checkpoint folder {path} is in no format Sprout reads; pass {FORMATS}.")
    else:
        state, meta = _read_file(path, map_location)
    stored = _stored_config(meta, path)
    if stored.attention == "flash" and not flash_available():
        stored = stored.replace(attention="auto")
    return build_model(config or stored, state, path), meta


def load_weights_into(model: torch.nn.Module, config: LlamaConfig, path: str | os.PathLike) -> None:
    """Copy the weights stored at ``path`` into ``model`` (shaped ``config``, possibly sharded):
    ``model.init_from``, continued pre-training. Another shape is a recipe error."""
    source, _ = load_model(path)
    ignore = {"attention", "init_std", "init", "block_size"}  # no effect on the weights' meaning
    differ = {
        k: (v, getattr(config, k))
        for k, v in source.config.to_dict().items()
        if k not in ignore and v != getattr(config, k)
    }
    if differ:
        fields = ", ".join(f"{k}={a} in the checkpoint vs {b} in the recipe" for k, (a, b) in differ.items())
        raise SproutError(
            f"model.init_from={path} has another shape than the recipe's model ({fields}). Set model.arch / model.arch_overrides to the checkpoint's shape, or start from a matching checkpoint."
        )
    set_model_state_dict(model, source.state_dict(), options=StateDictOptions(full_state_dict=True))


def save_model(model: Llama, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` as a Sprout checkpoint ``load_model`` reads (atomically, ``sprout.files.replacing``)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": {PREFIX + k: v for k, v in model.state_dict().items()},
        "sprout": {**(meta or {}), "model_config": model.config.to_dict()},
    }
    with replacing(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def _read_file(path: Path, map_location) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        checkpoint = load_file(path, map_location=map_location, mmap=True)
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise SproutError(
            f"Cannot read checkpoint {path}: {str(error).splitlines()[0]}. The file is truncated or not a PyTorch checkpoint; "
            f"use an earlier checkpoint of the run, or pass {FORMATS}."
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise SproutError(
            f"{path} is a PyTorch file but not a Lightning checkpoint (no `state_dict` entry); pass {FORMATS}."
        )
    return _model_tensors(checkpoint["state_dict"]), checkpoint.get("sprout")


def _read_distributed(path: Path, map_location) -> tuple[dict[str, torch.Tensor], dict]:
    """Gather a sharded (torch.distributed.checkpoint) Lightning checkpoint into full tensors in
    this process; only the model's tensors are read, not the optimizer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    check_distributed(path)  # DCP's reader unpickles .metadata without restriction
    try:
        reader = dcp.FileSystemReader(path)
        stored = reader.read_metadata().state_dict_metadata  # flattened keys: "state_dict.model.<Llama key>"
        wanted = {
            key.removeprefix("state_dict."): torch.empty(meta.size, dtype=meta.properties.dtype)
            for key, meta in stored.items()
            if key.startswith("state_dict.") and isinstance(meta, TensorStorageMetadata)
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*single process")  # DCP warns even when asked for no_dist
            dcp.load(
                {"state_dict": wanted}, storage_reader=reader, no_dist=True
            )  # reads these, not the optimizer state
        extra = load_file(path / "meta.pt", map_location="cpu") if (path / "meta.pt").is_file() else {}
    except (
        Exception,
        CheckpointException,
    ) as error:  # DCP wraps a reader's failure in a CheckpointException (a BaseException)
        cause = (
            next(iter(error.failures.values()))[0]
            if isinstance(error, CheckpointException) and error.failures
            else error
        )
        reason = f"{type(cause).__name__}: {cause}".splitlines()[0].removesuffix(": ")
        raise SproutError(
            f"Cannot read distributed checkpoint {path} ({reason}). A shard is missing or truncated; use an earlier checkpoint."
        ) from None
    state = {k: v.to(map_location) for k, v in _model_tensors(wanted).items()}
    return state, extra.get("sprout")


def _model_tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    """The model's tensors under their ``Llama`` names; ``torch.compile`` wrappers add ``_orig_mod.``."""
    return {k[len(PREFIX) :].replace("_orig_mod.", ""): v for k, v in state_dict.items() if k.startswith(PREFIX)}


def _stored_config(meta: dict | None, path: Path) -> LlamaConfig:
    if not isinstance(meta, dict) or "model_config" not in meta:
        raise SproutError(
            f"Checkpoint {path} has no `sprout.model_config` entry, so its model shape is unknown; it was not written by "
            "`sprout fit` or sprout import. Re-export it with one of those, or pass a Hugging Face folder."
        )
    return LlamaConfig.from_dict(meta["model_config"])


def _folder_tokenizer(folder: Path) -> dict | None:
    """Identity of the tokenizer shipped in an HF folder, so data made with it can be matched."""
    from sprout.data.tokenizer import Tokenizer

    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return None
    return Tokenizer.load(folder).identity
