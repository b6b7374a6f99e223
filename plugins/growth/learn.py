"""G_learn (LiGO, Wang et al. 2023): the grown model's weights as a learned linear map of the small one's.

Width: every matrix becomes ``B_out W B_in^T`` with an expansion matrix per axis, initialised
as [I; N(0, s^2)]: the identity on the units the source had, random rows for new ones.
``variant: official`` (default) is the parametrisation of the official ``prts_lit/scaling/ligo.py``:
one matrix per axis shared by all layers (B_embd for the residual stream, B_Q, B_K, B_V and
B_ffn), mixing single dimensions (not whole heads), separate maps for keys and values, the
output projection's input side expanded by B_V (an attention output is a mix of values),
and random rows with s = sqrt(1 / target units). The official code has full multi-head
attention only; with grouped-query attention a query head's output rows take B_V's rows of its
KV group, from the source query head at the same place in its group (position mod the
source's group size), which is B_V itself when every group has one head. ``variant: heads``
(Sprout's earlier form) has one map per source layer for query heads, KV heads and FFN units,
moves whole heads (so RoPE's rotation pairs stay intact), expands keys and values and the
output projection's input by the head maps, and draws new rows with s = sqrt(1 / source units).

Depth: target layer t's tensor is a learned mix sum_j D[t, j] * (expanded source layer j),
one mixing matrix per block tensor, initialised as stacked identities in Gstack's order, so at
initialisation with unchanged width G_learn *is* Gstack (both variants).

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

from sprout.errors import SproutError
from sprout.model import SHAPE_FIELDS, Llama, LlamaConfig, build_model
from sprout.model.llama import rope_tables
from sprout.plugins.growth.common import check_shapes, layer_map, width_maps
from sprout.protocols import GrowthOperator

VARIANTS = ("official", "heads")

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


def expansion(units: torch.Tensor, n_source: int, scale: float) -> torch.Tensor:
    """[I; N(0, scale^2)]: a one-hot row for each unit kept from the source, random rows for new ones."""
    rows = torch.randn(len(units), n_source) * scale
    kept = units >= 0
    rows[kept] = torch.nn.functional.one_hot(units[kept], n_source).float()
    return rows


def official(units: torch.Tensor, n_source: int) -> torch.Tensor:
    """prts ``LiGOModel.init(..., 'width')``: new rows drawn with std sqrt(1 / target units)."""
    return expansion(units, n_source, math.sqrt(1 / len(units)))


def per_head(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Head maps [..., t, s] spelled out over each head's dimensions: [..., t * hd, s * hd]."""
    eye = torch.eye(head_dim, dtype=heads.dtype, device=heads.device)
    spelled = torch.einsum("...ts,de->...tdse", heads, eye)
    *lead, t, hd, s, _ = spelled.shape
    return spelled.reshape(*lead, t * hd, s * hd)


def values_to_outputs(value: torch.Tensor, source: LlamaConfig, target: LlamaConfig) -> torch.Tensor:
    """B_V [t_kv * hd, s_kv * hd] as the map of attention outputs [t_h * hd, s_h * hd]: a query
    head's output rows are its KV group's rows of B_V, from the source query head at the same
    place in its group (position mod the source's group size)."""
    hd = source.head_dim
    r_s, r_t = source.n_head // source.n_kv_head, target.n_head // target.n_kv_head
    heads_t, heads_s = torch.arange(target.n_head), torch.arange(source.n_head)
    blocks = value.view(target.n_kv_head, hd, source.n_kv_head, hd)[heads_t // r_t][:, :, heads_s // r_s]
    same_place = ((heads_t % r_t % r_s)[:, None] == (heads_s % r_s)[None, :]).to(value)
    return (blocks * same_place[:, None, :, None]).reshape(target.n_head * hd, source.n_head * hd)


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

    def __init__(self, source: Llama, target: LlamaConfig, mapping: list[int], variant: str = "official") -> None:
        super().__init__()
        s = source.config
        self.config, self.variant = target, variant
        self.source = source.requires_grad_(False)
        like = next(source.parameters())
        maps = width_maps(s, target, copy=False)

        def param(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.to(device=like.device, dtype=like.dtype))

        if variant == "official":
            self.residual = param(official(maps.residual, s.n_embd))
            self.query = param(official(maps.q, s.n_head * s.head_dim))
            self.key = param(official(maps.kv, s.n_kv_head * s.head_dim))
            self.value = param(official(maps.kv, s.n_kv_head * s.head_dim))
            self.ffn = param(official(maps.ffn, s.intermediate_size))
        else:
            per_layer = lambda units, n: expansion(units, n, 1 / math.sqrt(n)).expand(s.n_layer, -1, -1).clone()  # noqa: E731
            self.residual = param(expansion(maps.residual, s.n_embd, 1 / math.sqrt(s.n_embd)))
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

    def width(self) -> dict[str, torch.Tensor]:
        """Each axis's expansion over single units, one per source layer ([L, target, source]):
        the rows of wq, wk, wv, the input of wo, and the FFN units."""
        s, L = self.source.config, self.source.config.n_layer
        if self.variant == "official":
            shared = {
                "q": self.query,
                "k": self.key,
                "v": self.value,
                "o": values_to_outputs(self.value, s, self.config),
                "ffn": self.ffn,
            }
            return {k: v.expand(L, -1, -1) for k, v in shared.items()}
        q, kv = per_head(self.q_heads, s.head_dim), per_head(self.kv_heads, s.head_dim)
        return {"q": q, "k": kv, "v": kv, "o": q, "ffn": self.ffn}

    def weights(self) -> dict[str, torch.Tensor]:
        """The grown model's state dict as functions of the growth matrices."""
        s = self.source.config
        src = self.source.state_dict(keep_vars=True)  # plain names even when blocks are wrapped
        A, B = self.residual, self.width()

        def stack(name: str) -> torch.Tensor:
            return torch.stack([src[f"layers.{j}.{BLOCK[name]}"] for j in range(s.n_layer)])

        wide = {
            "attention_norm": torch.einsum("mn,ln->lm", A, stack("attention_norm")),
            "ffn_norm": torch.einsum("mn,ln->lm", A, stack("ffn_norm")),
            "wq": torch.einsum("lts,lsn,mn->ltm", B["q"], stack("wq"), A),
            "wk": torch.einsum("lts,lsn,mn->ltm", B["k"], stack("wk"), A),
            "wv": torch.einsum("lts,lsn,mn->ltm", B["v"], stack("wv"), A),
            "wo": torch.einsum("mn,lns,lts->lmt", A, stack("wo"), B["o"]),
            "w1": torch.einsum("lts,lsn,mn->ltm", B["ffn"], stack("w1"), A),
            "w3": torch.einsum("lts,lsn,mn->ltm", B["ffn"], stack("w3"), A),
            "w2": torch.einsum("mn,lns,lts->lmt", A, stack("w2"), B["ffn"]),
        }
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
        variant: width maps as in the official ``ligo.py`` (``official``) or Sprout's earlier
            per-layer whole-head maps (``heads``); see the module docstring.
    """

    def __init__(
        self, learn_steps: int = 100, order: str = "stack", layers: list[int] | None = None, variant: str = "official"
    ) -> None:
        if learn_steps < 1:
            raise SproutError(
                f"G_learn learn_steps must be >= 1, got {learn_steps}; fix growth.operator.init_args.learn_steps."
            )
        if variant not in VARIANTS:
            raise SproutError(
                f"G_learn variant must be one of {', '.join(VARIANTS)}, got {variant!r}; fix growth.operator.init_args.variant."
            )
        self.learn_steps = learn_steps
        self.variant = variant
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
        self.model = LigoModel(model, target, self._mapping(model.config, target), self.variant)
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
        self.model = LigoModel(source, model.config, self._mapping(source_config, model.config), self.variant)
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
