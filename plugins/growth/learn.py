"""G_learn (LiGO, Wang et al. 2023): the grown model's weights as a learned linear map of the small one's.

Width: every matrix becomes ``A_out W A_in^T`` with expansion matrices per axis (one shared
for the residual stream, one per source layer for query heads, KV heads and FFN units),
initialised as [I; N(0, 1/D)]: the identity on the units the source had, random rows for
new ones. Head expansions act on whole heads (each head's rows move together), so RoPE's
rotation pairs stay intact. Depth: target layer t's tensor is a learned mix sum_j D[t, j] *
(expanded source layer j), one mixing matrix per block tensor, initialised as stacked
identities in Gstack's order, so at initialisation with unchanged width G_learn *is* Gstack.

The small model is frozen; only the expansion and mixing matrices train, for ``learn_steps``
optimizer steps on the training data (their FLOPs count like any other step). Then the map
is applied once and training continues on the plain grown model with a fresh optimizer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from app.errors import SproutError
from app.model import SHAPE_FIELDS, Llama, LlamaConfig, build_model
from app.model.llama import rope_tables
from app.protocols import GrowthOperator
from plugins.growth.common import check_shapes, layer_map, width_maps

# Block tensors, each with its own depth-mixing matrix.
BLOCK = {
    "attention_norm": "attention_norm.weight",
    "wq": "attention.wq.weight",
    "wk": "attention.wk.weight",
    "wv": "attention.wv.weight",
    "wo": "attention.wo.weight",
    "ffn_norm": "ffn_norm.weight",
    "w1": "feed_forward.w1.weight",
    "w2": "feed_forward.w2.weight",
    "w3": "feed_forward.w3.weight",
}


def expansion(units: torch.Tensor, n_source: int) -> torch.Tensor:
    """[I; N(0, 1/n)]: a one-hot row for each unit kept from the source, random rows for new ones."""
    rows = torch.randn(len(units), n_source) / math.sqrt(n_source)
    kept = units >= 0
    rows[kept] = torch.nn.functional.one_hot(units[kept], n_source).float()
    return rows


class _Trunk(nn.Module):
    """Runs a Llama up to its final norm, the part ``functional_call`` evaluates with grown weights."""

    def __init__(self, llama: Llama) -> None:
        super().__init__()
        self.llama = llama

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.llama.hidden_states(idx)


class _Head:
    """What the module reads of a head: its weight."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight


class LigoModel(nn.Module):
    """The grown Llama computed from a frozen small Llama and trainable growth matrices."""

    def __init__(self, source: Llama, target: LlamaConfig, mapping: list[int]) -> None:
        super().__init__()
        s = source.config
        self.config = target
        self.source = source.requires_grad_(False)
        like = next(source.parameters())
        maps = width_maps(s, target, copy=False)

        def param(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.to(device=like.device, dtype=like.dtype))

        per_layer = lambda units, n: expansion(units, n).expand(s.n_layer, -1, -1).clone()  # noqa: E731
        self.residual = param(expansion(maps.residual, s.n_embd))
        self.q_heads = param(per_layer(maps.q_heads, s.n_head))
        self.kv_heads = param(per_layer(maps.kv_heads, s.n_kv_head))
        self.ffn = param(per_layer(maps.ffn, s.intermediate_size))
        stacked = torch.zeros(target.n_layer, s.n_layer)
        stacked[torch.arange(target.n_layer), torch.tensor(mapping)] = 1.0
        self.depth = nn.ParameterDict({name: param(stacked.clone()) for name in BLOCK})
        with torch.device("meta"):
            self._skeleton = [_Trunk(Llama(target))]  # a list keeps it out of the module tree and the state dict
        self._current: dict[str, torch.Tensor] = {}
        cos, sin = rope_tables(target, like.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def weights(self) -> dict[str, torch.Tensor]:
        """The grown model's state dict as functions of the growth matrices."""
        s, t = self.source.config, self.config
        src = self.source.state_dict(keep_vars=True)  # plain names even when blocks are wrapped
        L, hd, A = s.n_layer, s.head_dim, self.residual

        def stack(path: str) -> torch.Tensor:
            return torch.stack([src[f"layers.{j}.{path}"] for j in range(L)])

        wide = {
            "attention_norm": torch.einsum("mn,ln->lm", A, stack(BLOCK["attention_norm"])),
            "ffn_norm": torch.einsum("mn,ln->lm", A, stack(BLOCK["ffn_norm"])),
            "wq": torch.einsum(
                "lth,lhdn,mn->ltdm", self.q_heads, stack(BLOCK["wq"]).view(L, s.n_head, hd, s.n_embd), A
            ).reshape(L, t.n_head * hd, t.n_embd),
            "wo": torch.einsum(
                "mn,lnhd,lth->lmtd", A, stack(BLOCK["wo"]).view(L, s.n_embd, s.n_head, hd), self.q_heads
            ).reshape(L, t.n_embd, t.n_head * hd),
            "w1": torch.einsum("lfg,lgn,mn->lfm", self.ffn, stack(BLOCK["w1"]), A),
            "w3": torch.einsum("lfg,lgn,mn->lfm", self.ffn, stack(BLOCK["w3"]), A),
            "w2": torch.einsum("mn,lng,lfg->lmf", A, stack(BLOCK["w2"]), self.ffn),
        }
        for name in ("wk", "wv"):
            w = stack(BLOCK[name]).view(L, s.n_kv_head, hd, s.n_embd)
            wide[name] = torch.einsum("lth,lhdn,mn->ltdm", self.kv_heads, w, A).reshape(L, t.n_kv_head * hd, t.n_embd)
        out = {
            "tok_embeddings.weight": src["tok_embeddings.weight"] @ A.T,
            "norm.weight": A @ src["norm.weight"],
        }
        if not s.tie_embeddings:
            out["output.weight"] = src["output.weight"] @ A.T
        for name, path in BLOCK.items():
            deep = torch.einsum("tl,l...->t...", self.depth[name], wide[name])
            out.update({f"layers.{i}.{path}": w for i, w in enumerate(deep.unbind(0))})
        return out

    # The module reads a model through ``hidden_states`` and then ``output.weight`` (its chunked
    # loss); both come from the same computation of the grown weights.
    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        self._current = self.weights()
        tensors = {"llama." + k: v for k, v in self._current.items()}
        tensors.update({"llama.rope_cos": self.rope_cos, "llama.rope_sin": self.rope_sin})
        return functional_call(self._skeleton[0], tensors, (idx,))

    @property
    def output(self) -> _Head:
        """The head that goes with the last ``hidden_states`` call."""
        head = self._current.get("output.weight", self._current["tok_embeddings.weight"])
        return _Head(head)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden_states(idx)
        return hidden @ self.output.weight.T

    def materialize(self) -> Llama:
        """The plain grown Llama these matrices give now."""
        with torch.no_grad():
            state = {k: v.detach().clone() for k, v in self.weights().items()}
        return build_model(self.config, state, source="G_learn")


class LearnedGrowth(GrowthOperator):
    """G_learn (LiGO): a learned linear map from the small model's weights grows depth and width.

    The map trains for ``learn_steps`` steps, then training continues on the plain grown model.

    Args:
        learn_steps: optimizer steps that train the growth matrices (LiGO uses 100).
        order: Gstack order the depth mixing starts from, ``stack`` or ``interleave``.
        layers: start from partial stacking of this contiguous run of source layers.
    """

    def __init__(self, learn_steps: int = 100, order: str = "stack", layers: list[int] | None = None) -> None:
        if learn_steps < 1:
            raise SproutError(
                f"G_learn learn_steps must be >= 1, got {learn_steps}; fix growth.operator.init_args.learn_steps."
            )
        self.learn_steps = learn_steps
        self.order = order
        self.layers = layers
        self.step = 0
        self.model: LigoModel | None = None  # while learning
        self._saved: dict[str, Any] | None = None  # learning state read from a checkpoint, until restore

    def _mapping(self, source: LlamaConfig, target: LlamaConfig) -> list[int]:
        return layer_map(type(self).__name__, source.n_layer, target.n_layer, self.order, self.layers)

    def check(self, source: LlamaConfig, target: LlamaConfig) -> None:
        check_shapes(type(self).__name__, source, target, SHAPE_FIELDS)
        self._mapping(source, target)

    def grow(self, model: Llama, target: LlamaConfig) -> nn.Module:
        self.check(model.config, target)
        self.step = 0
        self.model = LigoModel(model, target, self._mapping(model.config, target))
        return self.model

    def on_train_step(self, model: nn.Module, step: int) -> nn.Module | None:
        self.step = step
        if isinstance(model, LigoModel) and step >= self.learn_steps:
            self.model = None
            return model.materialize()
        return None

    def export(self, model: nn.Module) -> nn.Module:
        return model.materialize() if isinstance(model, LigoModel) else model

    def restore(self, model: nn.Module) -> nn.Module:
        if self._saved is None:
            return model
        source_config = LlamaConfig.from_dict(self._saved["source_config"])
        prefix = "source."
        source = build_model(
            source_config,
            {k[len(prefix) :]: v for k, v in self._saved["model"].items() if k.startswith(prefix)},
            source="G_learn checkpoint",
        )
        self.model = LigoModel(source, model.config, self._mapping(source_config, model.config))
        self.model.load_state_dict(self._saved["model"])
        self._saved = None
        return self.model

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step}
        if self.model is not None:
            state.update(source_config=self.model.source.config.to_dict(), model=self.model.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self._saved = state if "model" in state else None
