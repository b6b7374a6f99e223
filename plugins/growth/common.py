"""What every growth operator shares: shape checks, the depth layer map, the width index maps,
and the one rule that expands a weight matrix.

Depth: a *layer map* lists, for each target layer, the source layer it comes from. The first
time a source layer appears it is that layer; later appearances are *copies*, which G_zero
silences and G_random replaces by fresh blocks.

Width: an *index map* lists, for each unit of a grown axis (residual dimension, query head,
KV head, FFN unit), its source unit, or -1 for a new unit. Copying operators (G_direct) map
every target unit to a source unit; filling ones (G_zero, G_random, LiGO's initialisation)
keep each source unit once and mark the rest new. Heads move as whole heads: query head
``t`` of group ``t // r`` (``r`` query heads per KV head) keeps a source head of the same
group, so grouped-query attention reads the same keys and values after growth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sprout.errors import SproutError
from sprout.model import DEPTH_FIELDS, SHAPE_FIELDS, WIDTH_FIELDS, Llama, LlamaConfig, build_model

# Fields a grown model shares with its source: the vocabulary and the numerics of RoPE and the norms.
KEPT_FIELDS = ("vocab_size", "rope_base", "norm_eps", "tie_embeddings")
ORDERS = ("stack", "interleave")


def check_shapes(operator: str, source: LlamaConfig, target: LlamaConfig, grows: tuple[str, ...]) -> None:
    """Refuse a target the operator cannot reach: a field it does not grow changed, or a shrink."""
    for name in KEPT_FIELDS + tuple(f for f in SHAPE_FIELDS if f not in grows):
        if getattr(source, name) != getattr(target, name):
            hint = (
                "depth operators (gstack, zero_depth, random_depth) change only n_layer"
                if grows == DEPTH_FIELDS
                else (
                    "width operators (direct_width, zero_width, random_width) keep n_layer"
                    if grows == WIDTH_FIELDS
                    else "the grown model keeps the vocabulary and numerics"
                )
            )
            raise SproutError(
                f"Growth operator {operator} cannot change `{name}` ({getattr(source, name)} -> {getattr(target, name)}): {hint}. "
                f"Fix growth.target_arch / growth.target_overrides, or use `learn` to grow depth and width together."
            )
    for name in grows:
        if getattr(target, name) < getattr(source, name):
            raise SproutError(
                f"Growth operator {operator}: target `{name}`={getattr(target, name)} is smaller than the source's {getattr(source, name)}; growth only adds. Fix growth.target_overrides."
            )
    if all(getattr(target, f) == getattr(source, f) for f in grows):
        raise SproutError(
            f"Growth operator {operator}: the target shape equals the source's; set growth.target_arch or growth.target_overrides to a larger shape."
        )
    if any(f in grows for f in WIDTH_FIELDS):
        if target.head_dim != source.head_dim:
            raise SproutError(
                f"Growth operator {operator} grows whole heads, so the head size n_embd/n_head must stay {source.head_dim}; the target has "
                f"{target.n_embd}/{target.n_head} = {target.head_dim}. Set growth.target_overrides.n_head to {target.n_embd // source.head_dim}."
            )
        if target.n_head // target.n_kv_head < source.n_head // source.n_kv_head:
            raise SproutError(
                f"Growth operator {operator}: the target has {target.n_head // target.n_kv_head} query heads per KV head, fewer than the source's "
                f"{source.n_head // source.n_kv_head}, so some query heads would lose their KV group. Keep n_head / n_kv_head at least "
                f"{source.n_head // source.n_kv_head} (e.g. n_kv_head={target.n_head * source.n_kv_head // source.n_head})."
            )


# -- depth --------------------------------------------------------------------------------


def layer_map(
    operator: str, n_source: int, n_target: int, order: str = "stack", layers: list[int] | None = None
) -> list[int]:
    """Source layer of every target layer.

    ``stack`` repeats the whole stack, target layer i = source layer i mod L (the official
    Gstack order); ``interleave`` repeats each layer in place ([0, 0, 1, 1, ...]). With
    ``layers`` (a contiguous run of source layers) only that run is repeated, as a block
    (``stack``) or layer by layer (``interleave``); the other layers appear once.
    """
    if order not in ORDERS:
        raise SproutError(
            f"Growth operator {operator}: order={order!r} is not one of {', '.join(ORDERS)}; fix growth.operator.init_args.order."
        )
    if layers is None:
        if order == "stack":
            return [i % n_source for i in range(n_target)]
        return [i * n_source // n_target for i in range(n_target)]
    span = list(layers)
    if not span or span != list(range(span[0], span[0] + len(span))) or span[0] < 0 or span[-1] >= n_source:
        raise SproutError(
            f"Growth operator {operator}: layers={layers} must be a contiguous ascending run of source layers within 0..{n_source - 1}, e.g. [2, 3]; "
            "fix growth.operator.init_args.layers."
        )
    extra = n_target - n_source
    if extra % len(span):
        raise SproutError(
            f"Growth operator {operator}: repeating layers {span} cannot reach {n_target} layers from {n_source}; the target needs "
            f"{n_source} + k*{len(span)} layers. Fix growth.target_overrides.n_layer or the layers list."
        )
    repeats = extra // len(span) + 1
    head, tail = list(range(span[0])), list(range(span[-1] + 1, n_source))
    middle = span * repeats if order == "stack" else [j for j in span for _ in range(repeats)]
    return head + middle + tail


def copies(mapping: list[int]) -> list[bool]:
    """True for each target layer that repeats a source layer already placed below it."""
    seen: set[int] = set()
    flags = []
    for j in mapping:
        flags.append(j in seen)
        seen.add(j)
    return flags


def deepen(model: Llama, target: LlamaConfig, mapping: list[int]) -> Llama:
    """A ``target``-deep copy of ``model`` whose layer i holds source layer ``mapping[i]``'s
    weights; embedding, final norm and head are copied unchanged."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("layers.")}
    for i, j in enumerate(mapping):
        for k, v in model.layers[j].state_dict().items():
            state[f"layers.{i}.{k}"] = v.detach().clone()
    return build_model(target, state, source="depth growth")


class DepthGrowth:
    """Options shared by the depthwise operators: which source layer each new layer repeats
    (a mixin placed before ``GrowthOperator``)."""

    def __init__(self, order: str = "stack", layers: list[int] | None = None) -> None:
        self.order = order
        self.layers = layers
        self.mapping: list[int] | None = None

    def check(self, source: LlamaConfig, target: LlamaConfig) -> None:
        check_shapes(type(self).__name__, source, target, DEPTH_FIELDS)
        layer_map(type(self).__name__, source.n_layer, target.n_layer, self.order, self.layers)

    def plan(self, model: nn.Module, target: LlamaConfig) -> list[int]:
        """Check the shapes and fix the layer map of this growth."""
        self.check(model.config, target)
        self.mapping = layer_map(type(self).__name__, model.config.n_layer, target.n_layer, self.order, self.layers)
        return self.mapping

    def source_parameter(self, name: str) -> str | None:
        """Layer i's parameters inherit source layer mapping[i]'s optimizer state; the rest their own."""
        if self.mapping is None:
            return None
        if not name.startswith("layers."):
            return name
        _, i, rest = name.split(".", 2)
        return f"layers.{self.mapping[int(i)]}.{rest}"


# -- width --------------------------------------------------------------------------------


@dataclass
class WidthMaps:
    """Source unit (or -1 for new) of every unit on each grown axis, as index tensors."""

    residual: torch.Tensor  # [n_embd]
    q_heads: torch.Tensor  # [n_head]
    kv_heads: torch.Tensor  # [n_kv_head]
    ffn: torch.Tensor  # [intermediate_size]
    head_dim: int

    @property
    def q(self) -> torch.Tensor:
        return head_rows(self.q_heads, self.head_dim)

    @property
    def kv(self) -> torch.Tensor:
        return head_rows(self.kv_heads, self.head_dim)


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """A head map spelled out over each head's ``head_dim`` rows."""
    rows = heads[:, None] * head_dim + torch.arange(head_dim)
    return torch.where(heads[:, None] >= 0, rows, -1).flatten()


def width_maps(source: LlamaConfig, target: LlamaConfig, copy: bool) -> WidthMaps:
    """Index maps from ``target``'s units to ``source``'s; ``copy`` fills new units with copies
    (unit j copies j mod n, so an integer factor copies every unit equally often)."""

    def axis(n_source: int, n_target: int) -> torch.Tensor:
        j = torch.arange(n_target)
        return j % n_source if copy else torch.where(j < n_source, j, -1)

    r_s, r_t = source.n_head // source.n_kv_head, target.n_head // target.n_kv_head
    group, within = torch.arange(target.n_head) // r_t, torch.arange(target.n_head) % r_t
    if copy:
        q_heads = (group % source.n_kv_head) * r_s + within % r_s
    else:
        q_heads = torch.where((group < source.n_kv_head) & (within < r_s), group * r_s + within, -1)
    return WidthMaps(
        residual=axis(source.n_embd, target.n_embd),
        q_heads=q_heads,
        kv_heads=axis(source.n_kv_head, target.n_kv_head),
        ffn=axis(source.intermediate_size, target.intermediate_size),
        head_dim=source.head_dim,
    )


def expand(
    old: torch.Tensor,
    rows: torch.Tensor | None,
    cols: torch.Tensor | None,
    fill: torch.Tensor,
    split: bool = False,
    split_noise: float = 0.0,
) -> torch.Tensor:
    """``fill`` with every entry whose row and column have a source unit replaced by that source entry.

    ``rows``/``cols`` are index maps (``None``: the axis keeps its size). With ``split`` the
    column axis is an input: a source column copied c times is shared among its copies, 1/c
    each, so a layer reading the duplicated units computes what it did before (Net2Net). A
    ``split_noise`` > 0 makes the shares unequal (still summing to one per source entry), which
    breaks the symmetry between copies that would otherwise keep receiving equal gradients.
    """
    device = old.device
    out = fill.clone()
    if old.ndim == 1:
        rows = rows.to(device)
        keep = rows >= 0
        out[keep] = old[rows[keep]].to(out.dtype)
        return out
    rows = torch.arange(old.size(0), device=device) if rows is None else rows.to(device)
    cols = torch.arange(old.size(1), device=device) if cols is None else cols.to(device)
    r_keep, c_keep = (rows >= 0).nonzero().squeeze(1), (cols >= 0).nonzero().squeeze(1)
    src_cols = cols[c_keep]
    block = old[rows[r_keep]][:, src_cols].float()
    if split:
        counts = torch.bincount(src_cols, minlength=old.size(1)).float()
        share = (1.0 / counts[src_cols]).expand_as(block)
        if split_noise:
            u = torch.randn(block.shape).to(device)
            group_mean = torch.zeros(block.size(0), old.size(1), device=device).index_add_(
                1, src_cols, u
            ) / counts.clamp_min(1)
            share = share * (1 + split_noise * (u - group_mean[:, src_cols]))
        block = block * share
    out[r_keep[:, None], c_keep[None, :]] = block.to(out.dtype)
    return out


def axes(name: str, maps: WidthMaps) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The index maps of a Llama tensor's (rows, columns); weights are [out, in]."""
    leaf = name.split(".")[-2]
    table = {
        "tok_embeddings": (None, maps.residual),
        "output": (None, maps.residual),
        "norm": (maps.residual, None),
        "attention_norm": (maps.residual, None),
        "ffn_norm": (maps.residual, None),
        "wq": (maps.q, maps.residual),
        "wk": (maps.kv, maps.residual),
        "wv": (maps.kv, maps.residual),
        "wo": (maps.residual, maps.q),
        "w1": (maps.ffn, maps.residual),
        "w3": (maps.ffn, maps.residual),
        "w2": (maps.residual, maps.ffn),
    }
    return table[leaf]


# Tensors that write into the residual stream (their rows, or the embedding's columns, are
# residual dimensions): G_zero zeroes their new entries so new dimensions start at zero.
WRITERS = ("tok_embeddings", "wo", "w2")


def is_writer(name: str) -> bool:
    return name.split(".")[-2] in WRITERS


def widen(
    model: Llama,
    target: LlamaConfig,
    maps: WidthMaps,
    fill: dict[str, torch.Tensor] | None = None,
    split_noise: float = 0.0,
) -> Llama:
    """The ``target``-wide model: every tensor ``expand``-ed from ``model``'s onto ``fill``'s
    (``None``: zeros, for copying maps that leave no entry unset).

    A tied head is the embedding (a writer, columns copied, not split), so the 1/c split of
    its input is folded into the final norm's gain instead, which scales the same inputs.
    """
    source = model.config
    if fill is None:
        like = next(model.parameters())
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in Llama(target).state_dict().items()}
        fill = {k: torch.zeros(shape, device=like.device, dtype=like.dtype) for k, shape in shapes.items()}
    state = {}
    for name, old in model.state_dict().items():
        if source.tie_embeddings and name == "output.weight":
            continue
        rows, cols = axes(name, maps)
        # a Linear's columns are its inputs; the embedding's columns are what it writes
        state[name] = expand(
            old.detach(),
            rows,
            cols,
            fill[name],
            split=old.ndim == 2 and name != "tok_embeddings.weight",
            split_noise=split_noise,
        )
    if source.tie_embeddings and (maps.residual >= 0).all():
        counts = torch.bincount(maps.residual, minlength=source.n_embd).float()
        gain = state["norm.weight"]
        state["norm.weight"] = (gain.float() / counts[maps.residual].to(gain.device)).to(gain.dtype)
    return build_model(target, state, source="width growth")


def fresh_weights(target: LlamaConfig, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """A freshly initialised ``target`` model's tensors (Llama's own init, the global RNG), on ``like``'s device and dtype."""
    return {k: v.to(device=like.device, dtype=like.dtype) for k, v in Llama(target).state_dict().items()}


def rms_ratio(source: LlamaConfig, target: LlamaConfig) -> float:
    """sqrt(n_s / n_t): the RMS of a residual vector whose new dimensions are zero, relative to
    its source RMS (RMSNorm divides by it, so norm gains times this ratio undo the change)."""
    return math.sqrt(source.n_embd / target.n_embd)
