"""A model holding given tensors: how every checkpoint reader and growth operator makes one.

Checkpoint formats differ in how they store tensors, never in how a model is made from them,
so that step lives here, beside the model, where growth operators (which import only
``sprout.model``) reach it too.
"""

from __future__ import annotations

import os

import torch

from sprout.errors import SproutError
from sprout.model.config import LlamaConfig
from sprout.model.llama import Llama


def build_model(config: LlamaConfig, state_dict: dict[str, torch.Tensor], source: str | os.PathLike) -> Llama:
    """A ``Llama`` holding exactly ``state_dict``'s tensors (no copy, their device and dtype).

    Built on the meta device and filled with ``assign=True``, so a large model is never
    initialised only to be overwritten.
    """
    with torch.device("meta"):
        model = Llama(config)
    expected = model.state_dict()
    state = dict(state_dict)
    if config.tie_embeddings:
        state.pop("output.weight", None)
        expected.pop("output.weight")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        details = "; ".join(
            part
            for part in (
                f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}" if missing else "",
                f"{len(unexpected)} unexpected tensor(s), e.g. {', '.join(unexpected[:3])}" if unexpected else "",
            )
            if part
        )
        raise SproutError(
            f"Checkpoint {source} does not match the model config ({_describe(config)}): {details}. "
            "The file is incomplete or was written for another model; use the matching checkpoint or config."
        )
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise SproutError(
                f"Checkpoint {source}: tensor {name} has shape {tuple(state[name].shape)} but the model config "
                f"({_describe(config)}) needs {tuple(tensor.shape)}; the checkpoint was written for another model shape."
            )
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.reset_rope()
    return model


def _describe(config: LlamaConfig) -> str:
    c = config
    return f"n_layer={c.n_layer}, n_embd={c.n_embd}, n_head={c.n_head}, n_kv_head={c.n_kv_head}, intermediate_size={c.intermediate_size}, vocab_size={c.vocab_size}"
