"""The seams of the application: the three plugin protocols, the model the training step
trains, and data a recipe builds on first use.

A plugin is a small subclass of ``GrowthOperator``, ``TokenSelector`` or ``MixturePolicy``.
They are abstract base classes rather than ``typing.Protocol`` so that recipes can
select them with jsonargparse's ``class_path``/``init_args`` and so that the module's
type hints (``selector: TokenSelector``) validate a recipe before anything runs.
``TrainableModel`` is a ``typing.Protocol``: ``sprout.model.Llama`` has that shape, and a growth
operator's stand-in (G_learn's ``LigoModel``) only needs to have it too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn


class OutputHead(Protocol):
    weight: torch.Tensor  # [vocab_size, n_embd]


class TrainableModel(Protocol):
    """What the training step (``sprout.module``), the reference scorer and growth need of a model.

    The module computes the loss from ``hidden_states`` and ``output.weight`` in chunks (the
    batch's logits never exist at once), reads the shape from ``config`` (an
    ``sprout.model.LlamaConfig``), and calls the model for logits.
    """

    config: Any

    @property
    def output(self) -> OutputHead: ...

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The final normalised hidden states ``[B, T, n_embd]``."""
        ...

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, vocab_size]``."""
        ...


class GrowthOperator(ABC):
    """Turns a trained small model into a larger one (Du et al. 2024).

    ``grow`` returns a new ``nn.Module`` with the target configuration's shape. Operators
    that keep state after growth (G_random's mask ramp, G_learn's learned mapping) expose
    it through ``state_dict``/``load_state_dict`` and advance it in ``on_train_step``.

    Checkpoints always hold a plain Llama's weights (``export``), so an operator whose
    grown module is something else while it learns (G_learn) keeps the rest in its own
    state and rebuilds its module in ``restore`` when a run resumes.
    """

    kind: ClassVar[str] = "growth"

    @abstractmethod
    def grow(self, model: nn.Module, target: Any) -> nn.Module:
        """Return a model shaped by ``target`` (an ``sprout.model.LlamaConfig``); a ``TrainableModel``."""

    def check(self, source: Any, target: Any) -> None:
        """Raise ``SproutError`` if ``grow`` cannot turn a ``source``-shaped model into ``target``
        (both ``LlamaConfig``); called before training, so a bad recipe fails at once."""

    def on_train_step(self, model: nn.Module, step: int) -> nn.Module | None:
        """Called after every optimizer step of the grown model; ``step`` counts steps since growth.
        Return a replacement model when a phase ends (G_learn materialising), else ``None``."""
        return None

    def restore(self, model: nn.Module) -> nn.Module:
        """The module to train, given a plain grown model that is not the one ``grow`` returned:
        on resume (after ``load_state_dict``) the model the checkpoint's weights were loaded
        into, or the sharded copy FSDP trains (G_random re-attaches its masks to it)."""
        return model

    def export(self, model: nn.Module) -> nn.Module:
        """The plain model whose weights a checkpoint stores for ``model`` (G_learn materialises)."""
        return model

    def source_parameter(self, name: str) -> str | None:
        """The source model's parameter whose optimizer state the grown parameter ``name`` may
        inherit (``growth.fresh_optimizer: false``); ``None`` for a new or reshaped parameter."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class TokenSelector(ABC):
    """Decides which tokens contribute to the loss (Rho-1, Lin et al. 2024).

    ``token_weights`` sees the per-token cross-entropy of the model (detached, shape
    ``[B, T]``) and the batch; it returns weights of the same shape (0/1 for selection).
    The module computes ``sum(w * loss) / sum(w)`` over valid tokens, so a selector never
    touches the graph. Set ``needs_reference = True`` to receive ``batch["ref_loss"]``.
    """

    kind: ClassVar[str] = "selector"
    needs_reference: ClassVar[bool] = False

    @abstractmethod
    def token_weights(self, token_loss: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """Weights over tokens; ``batch["valid"]`` marks tokens that may count at all."""

    def metrics(self) -> dict[str, float]:
        """Scalars about the last call, logged under ``select/``."""
        return {}


@dataclass
class DomainStats:
    """What a mixture policy may know about a domain before training (from its metadata)."""

    name: str
    tokens: int
    documents: int = 0
    entropy: dict[str, float] = field(default_factory=dict)
    vocab_size: int = 0  # the tokenizer's vocabulary (0: not known)


class MixturePolicy(ABC):
    """Chooses domain proportions (BiMix, Ge et al. 2024; DoReMi).

    Static policies compute weights once from ``DomainStats``. Dynamic ones
    (``dynamic = True``) receive per-domain mean token losses (excess losses over the
    reference when ``needs_reference``) every ``update_every`` steps and keep their state
    in ``state_dict`` so a resume continues with the same weights. A policy may also weigh
    the training loss per domain (``loss_weights``, DoReMi's alpha): the module multiplies
    each token's selector weight by its domain's factor.
    """

    kind: ClassVar[str] = "mixture"
    dynamic: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    update_every: int | None = None  # steps between feedback calls; dynamic policies set it

    @abstractmethod
    def weights(
        self,
        step: int,
        domains: Mapping[str, DomainStats],
        feedback: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """Return ``{domain: weight}`` over exactly ``domains``; weights sum to 1."""

    def metrics(self) -> dict[str, float]:
        """Scalars about the policy after an update, logged under ``mixture/``."""
        return {}

    def report(self) -> str | None:
        """A summary printed at the end of training (e.g. DoReMi's averaged weights); ``None``: none."""
        return None

    def loss_weights(self) -> dict[str, float] | None:
        """``{domain: factor}`` on every token's loss, or ``None`` (the loss is left alone).
        Policies are updated before the step's loss is formed (``sprout.mixing``), so these factors
        weigh the step whose feedback updated them."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class Preparation(ABC):
    """Builds a prepared ``data_dir`` (domains + tokenizer) if it is not there yet, so a run
    needs no separate preparation step (recipe option ``data.prepare``).

    ``run`` is called on the main process before training; it must be idempotent, so a
    second run reuses what the first one wrote.
    """

    @abstractmethod
    def run(self, data_dir: Path, tokenizer_path: Path) -> None: ...


KINDS: dict[str, type] = {
    "growth": GrowthOperator,
    "selector": TokenSelector,
    "mixture": MixturePolicy,
}
