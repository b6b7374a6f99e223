"""Mixtures that need no training: fixed, natural (by token count) and uniform."""

from __future__ import annotations

import math
from collections.abc import Mapping

from app.errors import SproutError
from app.protocols import DomainStats, MixturePolicy


class Fixed(MixturePolicy):
    """Weights written in the recipe (normalised to sum to 1), e.g. TinyLlama's 0.693584 : 0.306416."""

    def __init__(self, weights: dict[str, float]) -> None:
        bad = {d: w for d, w in weights.items() if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0)}
        if bad or not weights or sum(weights.values()) <= 0:
            raise SproutError(
                f"mixture fixed: weights must be finite, non-negative and not all zero; got {weights}. Fix data.mixture.init_args.weights."
            )
        self.fixed = dict(weights)

    def weights(self, step: int, domains: Mapping[str, DomainStats], feedback=None) -> dict[str, float]:
        if set(self.fixed) != set(domains):
            raise SproutError(
                f"mixture fixed: data.mixture.init_args.weights names {sorted(self.fixed)} but the data domains are {sorted(domains)}. Give one weight per domain."
            )
        total = sum(self.fixed.values())
        return {d: self.fixed[d] / total for d in domains}


class Natural(MixturePolicy):
    """Proportional to each domain's training tokens: every token seen about equally often."""

    def weights(self, step: int, domains: Mapping[str, DomainStats], feedback=None) -> dict[str, float]:
        total = sum(s.tokens for s in domains.values())
        return {d: s.tokens / total for d, s in domains.items()}


class Uniform(MixturePolicy):
    """The same weight for every domain."""

    def weights(self, step: int, domains: Mapping[str, DomainStats], feedback=None) -> dict[str, float]:
        return {d: 1.0 / len(domains) for d in domains}
