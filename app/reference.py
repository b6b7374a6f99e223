"""Reference-model losses for Rho-1, scored online by a frozen model.

Online, ``Reference`` runs one extra no-grad forward per step. Offline, the losses come
from score files made once by ``sprout score`` (``sprout.data.scores``). Both
routes round the losses through float16, so they select the same tokens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sprout.checkpoint.weights import load_model
from sprout.data.scores import describe, path_sha256
from sprout.errors import SproutError
from sprout.loss import chunked_token_losses
from sprout.protocols import TokenSelector, TrainableModel


@torch.no_grad()
def reference_losses(model: TrainableModel, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token reference loss ``[B, T]`` (float32 values that are exact in float16), computed
    like the training loss: the head in chunks, so a 32000-token vocabulary's logits never
    exist for the whole batch at once."""
    return chunked_token_losses(model.hidden_states(input_ids), model.output.weight, targets).half().float()


class Reference:
    """A frozen reference model scoring each training batch under ``no_grad``.

    Kept out of the LightningModule's submodules on purpose: it is not trained and not saved
    in the run's checkpoints. Under FSDP2 the module calls ``shard``, and the reference is laid
    over the ranks like the trained model, so each rank holds 1/N of it (a 7B reference is
    14 GB in bf16); otherwise every rank holds a full copy, which moves to the batch's device
    and to the training model's parameter dtype on first use. With a ``*-mixed`` precision the
    training step's autocast applies to it as to the model.
    """

    def __init__(self, path: str | os.PathLike, vocab_size: int | None, tokenizer: dict | None = None) -> None:
        """``vocab_size``: the trained model's, which the reference must share (``None``: only
        check that the reference covers ``tokenizer``'s vocabulary, as the offline scorer does)."""
        self.path = Path(path).expanduser()
        model, meta = load_model(self.path)
        if tokenizer and model.config.vocab_size < tokenizer["vocab_size"]:
            raise SproutError(
                f"The reference model {self.path} has vocab_size={model.config.vocab_size}, fewer than the {tokenizer['vocab_size']} tokens "
                f"of the data's tokenizer {describe(tokenizer)}: it was trained for another vocabulary. Use a reference trained with this tokenizer."
            )
        if vocab_size is not None and model.config.vocab_size != vocab_size:
            raise SproutError(
                f"The reference model {self.path} has vocab_size={model.config.vocab_size} but the model being trained has "
                f"vocab_size={vocab_size}: reference losses are only comparable over the same vocabulary. Train the reference "
                "with the same tokenizer and vocab_size (see recipes/rho1-reference-math.yaml), or fix model.reference."
            )
        ref_tokenizer = (meta or {}).get("tokenizer")
        if tokenizer and ref_tokenizer and ref_tokenizer.get("sha256") != tokenizer.get("sha256"):
            raise SproutError(
                f"The reference model {self.path} was trained with tokenizer {describe(ref_tokenizer)} but the training data uses "
                f"{describe(tokenizer)}. Use a reference trained on data from the recipe's tokenizer."
            )
        self.model = model.eval().requires_grad_(False)
        self.block_size = model.config.block_size
        self.meta = meta or {}
        self.sharded = False

    def shard(self, mesh, device: torch.device, param_dtype: torch.dtype | None) -> None:
        """Shard with FSDP2 over ``mesh`` as ``sprout.parallel.parallelize`` shards the trained
        model: per block, gathered in ``param_dtype`` for each forward and freed after it."""
        from sprout.parallel import Parallelism, parallelize

        parallelize(self.model.to(device), Parallelism(), mesh, param_dtype)
        self.sharded = True

    def losses(self, input_ids: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        param = next(self.model.parameters())
        if not self.sharded and (param.device != input_ids.device or (dtype is not None and param.dtype != dtype)):
            self.model.to(device=input_ids.device, dtype=dtype or param.dtype)
        return reference_losses(self.model, input_ids, targets)


def online_reference(path: str | None, vocab_size: int, dm: Any, selector: TokenSelector) -> Reference | None:
    """The frozen model that scores every batch online, or ``None``: when ``data.reference_scores``
    holds offline scores (which must then be ``path``'s) or nothing needs reference losses.
    A selector or mixture that needs them without either source is a recipe error."""
    offline = getattr(dm, "reference_scores_identity", None)
    if offline is not None:
        sha = path_sha256(path) if path is not None else offline["sha256"]
        if sha != offline["sha256"]:
            raise SproutError(
                f"data.reference_scores={dm.reference_scores} were made by the reference {describe(offline)}, but model.reference is "
                f"{path} (sha256 {sha[:12]}). Re-score the data with model.reference, or fix one of the two options."
            )
        return None
    if path is not None:
        reference = Reference(path, vocab_size, getattr(dm, "tokenizer_identity", None))
        if dm is not None and dm.seq_len > reference.block_size:
            raise SproutError(
                f"data.seq_len={dm.seq_len} is longer than the context block_size={reference.block_size} of the reference model {path}. Lower data.seq_len or use a reference trained for longer sequences."
            )
        return reference
    mixture = getattr(dm, "mixture", None)
    if selector.needs_reference or getattr(mixture, "needs_reference", False):
        who = f"selector {type(selector).__name__}" if selector.needs_reference else f"mixture {type(mixture).__name__}"
        raise SproutError(
            f"The {who} needs reference losses: set model.reference to a reference model checkpoint "
            "(scored online every step) or data.reference_scores to a folder written by sprout score (offline, no extra cost)."
        )
    return None
