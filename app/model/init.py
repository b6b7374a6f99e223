"""How a fresh model's matrices are drawn: the standard deviations of each initialisation scheme.

``llama`` (Sprout's default): N(0, ``init_std``) for the embedding, the head and every block
matrix, the residual projections ``wo`` and ``w2`` scaled by 1/sqrt(2 * n_layer) (GPT-2), so the
residual stream's variance does not grow with depth. ``tinyllama`` follows TinyLlama's
``lit_gpt/model.py`` (``GPT._init_weights``, GPT-NeoX's "small init"): N(0, sqrt(2 / (5 d))) for
the embedding and every linear layer (the head included), and N(0, 1 / sqrt(d) / n_layer) for the
residual projections (attention ``proj`` and the SwiGLU's down projection); ``init_std`` is unused.
Norm gains start at one in both.
"""

from __future__ import annotations

import math

INIT_SCHEMES = ("llama", "tinyllama")


def init_stds(scheme: str, n_embd: int, n_layer: int, init_std: float) -> tuple[float, float]:
    """(std of the embedding, head and block input matrices, std of ``wo`` and ``w2``)."""
    if scheme == "tinyllama":
        return math.sqrt(2 / (5 * n_embd)), 1 / math.sqrt(n_embd) / n_layer
    return init_std, init_std / math.sqrt(2 * n_layer)
