"""Training-free mixture from each domain's token entropy (BiMix, Ge et al. 2024, Sec. 5)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from lightning.pytorch.utilities import rank_zero_info

from sprout.errors import SproutError
from sprout.protocols import DomainStats, MixturePolicy

MEASURES = ("conditional", "joint", "shannon")


class EntropyMixture(MixturePolicy):
    """Weights r_i = exp(H_i) / sum_j exp(H_j) from an entropy measured at data preparation.

    Higher entropy means a more diverse domain, which the paper finds worth more tokens;
    conditional entropy H(X_t+1 | X_t) worked best there and is the default. The entropies
    come from each domain's ``meta.json`` (written by ``sprout prepare``), so the
    weights need no training run.
    """

    def __init__(self, measure: Literal["conditional", "joint", "shannon"] = "conditional"):
        if measure not in MEASURES:
            raise SproutError(
                f"entropy mixture option measure={measure!r} is not one of {', '.join(MEASURES)}. Set the mixture's init_args.measure in the recipe to one of them."
            )
        self.measure = measure
        self.last_report: dict[str, dict[str, float]] = {}

    def weights(
        self, step: int, domains: Mapping[str, DomainStats], feedback: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        if not domains:
            raise SproutError(
                "The entropy mixture got no domains; list at least one domain in the recipe's data.domains."
            )
        entropy = {}
        for name, stats in domains.items():
            value = stats.entropy.get(self.measure)
            if value is None or not math.isfinite(value):
                have = ", ".join(sorted(stats.entropy)) or "none"
                raise SproutError(
                    f"Domain {name!r} has no {self.measure} entropy in its meta.json stats (entropies present: {have}); "
                    "its shards were prepared without token statistics. Re-run sprout prepare for this domain with --overwrite, "
                    "or choose another mixture policy."
                )
            entropy[name] = float(value)
        top = max(entropy.values())
        exp = {name: math.exp(h - top) for name, h in entropy.items()}  # shift for overflow safety
        total = sum(exp.values())
        weights = {name: e / total for name, e in exp.items()}
        report = {name: {"entropy": entropy[name], "weight": weights[name]} for name in entropy}
        if report != self.last_report:
            lines = "\n".join(
                f"  {name:<20} H={r['entropy']:.4f} nats  weight={r['weight']:.4f}" for name, r in report.items()
            )
            rank_zero_info(f"entropy mixture ({self.measure} entropy):\n{lines}")
        self.last_report = report
        return weights

    def metrics(self) -> dict[str, float]:
        """Entropy per domain of the last call, for logging next to ``mixture/weight/<domain>``."""
        return {f"entropy/{name}": r["entropy"] for name, r in self.last_report.items()}
