"""Mixtures that need no training: fixed, natural (by token count, optionally within groups) and uniform."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sprout.errors import SproutError
from sprout.protocols import DomainStats, MixturePolicy


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


@dataclass
class DomainGroup:
    """Domains whose natural shares are scaled to add up to ``total`` (e.g. all of SlimPajama's)."""

    total: float
    domains: list[str]


class Natural(MixturePolicy):
    """Proportional to each domain's training tokens: every token seen about equally often.

    With ``groups`` the proportion holds within each group, and the groups get the totals given
    (normalised to sum to 1): TinyLlama's 7:3 mixture is SlimPajama's domains by their tokens,
    together 0.693584, and Starcoderdata 0.306416, with no hand-copied per-domain numbers::

        groups:
          slimpajama: {total: 0.693584, domains: [commoncrawl, c4, book, arxiv, wikipedia, stackexchange]}
          starcoder: {total: 0.306416, domains: [code]}
    """

    def __init__(self, groups: dict[str, DomainGroup] | None = None) -> None:
        self.groups = dict(groups or {})
        seen: dict[str, str] = {}
        for name, group in self.groups.items():
            if (
                not (isinstance(group.total, (int, float)) and math.isfinite(group.total) and group.total > 0)
                or not group.domains
            ):
                raise SproutError(
                    f"mixture natural: group {name!r} needs a positive total and at least one domain, got total={group.total!r}, domains={group.domains!r}. Fix data.mixture.init_args.groups.{name}."
                )
            for domain in group.domains:
                if domain in seen:
                    raise SproutError(
                        f"mixture natural: domain {domain!r} is in both groups {seen[domain]!r} and {name!r}; put each domain in one group. Fix data.mixture.init_args.groups."
                    )
                seen[domain] = name

    def weights(self, step: int, domains: Mapping[str, DomainStats], feedback=None) -> dict[str, float]:
        if not self.groups:
            total = sum(s.tokens for s in domains.values())
            return {d: s.tokens / total for d, s in domains.items()}
        grouped = {d for group in self.groups.values() for d in group.domains}
        unknown, loose = sorted(grouped - set(domains)), sorted(set(domains) - grouped)
        if unknown or loose:
            problem = "; ".join(
                ([f"names {unknown}, which are not training domains"] if unknown else [])
                + ([f"leaves training domains {loose} in no group"] if loose else [])
            )
            raise SproutError(
                f"mixture natural: data.mixture.init_args.groups {problem} (training domains: {sorted(domains)}). Put every training domain in exactly one group."
            )
        totals = sum(group.total for group in self.groups.values())
        weights = {}
        for group in self.groups.values():
            tokens = sum(domains[d].tokens for d in group.domains)
            weights.update({d: group.total / totals * domains[d].tokens / tokens for d in group.domains})
        return {d: weights[d] for d in domains}


class Uniform(MixturePolicy):
    """The same weight for every domain."""

    def weights(self, step: int, domains: Mapping[str, DomainStats], feedback=None) -> dict[str, float]:
        return {d: 1.0 / len(domains) for d in domains}
