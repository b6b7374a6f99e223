"""Online mixture by excess loss over a reference model (DoReMi, Xie et al. 2023).

Domains where the model trails the reference most get more weight: every ``update_every``
steps the policy receives each domain's excess loss lambda_i (per-token
max(L_model - L_ref, 0), averaged over the domain's tokens since the last update) and moves

    alpha <- softmax(log alpha + eta * lambda),   alpha <- (1 - smoothing) * alpha + smoothing / k

The weights the sampler uses change during training; their time average is the mixture
DoReMi recommends for a longer run, reported as a ``fixed`` mixture at the end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from app.errors import SproutError
from app.protocols import DomainStats, MixturePolicy


class DoReMi(MixturePolicy):
    """Exponentiated-gradient domain weights driven by per-domain excess loss.

    Starts from the uniform mixture. A domain missing from one update's feedback (it drew no
    tokens since the last update) keeps its last excess loss, so a rarely sampled domain is
    neither rewarded nor punished for being rare.

    Args:
        update_every: optimizer steps between weight updates; the excess loss is averaged
            over them.
        eta: step size of the exponentiated-gradient update (the paper's 1.0).
        smoothing: share of the uniform mixture mixed in after every update (the paper's
            1e-3); keeps every domain's weight at least ``smoothing / k``.
    """

    dynamic = True
    needs_reference = True

    def __init__(self, update_every: int = 10, eta: float = 1.0, smoothing: float = 1e-3) -> None:
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise SproutError(
                f"doremi mixture option update_every must be a positive integer (optimizer steps between weight updates), got {update_every!r}. Fix data.mixture.init_args.update_every."
            )
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta > 0):
            raise SproutError(
                f"doremi mixture option eta must be a positive number (the paper uses 1.0), got {eta!r}. Fix data.mixture.init_args.eta."
            )
        if not (isinstance(smoothing, (int, float)) and 0 <= smoothing <= 1):
            raise SproutError(
                f"doremi mixture option smoothing must be in [0, 1] (the paper uses 1e-3), got {smoothing!r}. Fix data.mixture.init_args.smoothing."
            )
        self.update_every = update_every
        self.eta = float(eta)
        self.smoothing = float(smoothing)
        self.alpha: dict[str, float] = {}  # the weights in use
        self.alpha_sum: dict[str, float] = {}  # sum of alpha over updates, for the time average
        self.updates = 0
        self.excess: dict[str, float] = {}  # last excess loss seen per domain

    def weights(
        self, step: int, domains: Mapping[str, DomainStats], feedback: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        if not domains:
            raise SproutError(
                "The doremi mixture got no domains; list at least one domain in the recipe's data.domains."
            )
        if not self.alpha:
            self.alpha = {d: 1.0 / len(domains) for d in domains}
            self.alpha_sum = {d: 0.0 for d in domains}
        if set(self.alpha) != set(domains):
            raise SproutError(
                f"The doremi mixture state covers domains {sorted(self.alpha)} but training uses {sorted(domains)}; resume with the same data.domains."
            )
        if feedback is not None:
            self._update(step, domains, feedback)
        return dict(self.alpha)

    def _update(self, step: int, domains: Mapping[str, DomainStats], feedback: Mapping[str, float]) -> None:
        unknown = sorted(set(feedback) - set(domains))
        if unknown:
            raise ValueError(f"feedback names domains {unknown} that are not training domains {sorted(domains)}")
        bad = {d: v for d, v in feedback.items() if not math.isfinite(v)}
        if bad:
            raise SproutError(
                f"doremi got non-finite excess losses {bad} at step {step}: the model or the reference produced NaN/inf losses. Lower the learning rate or check the reference model."
            )
        self.excess.update({d: float(v) for d, v in feedback.items()})
        logits = {d: math.log(self.alpha[d]) + self.eta * self.excess.get(d, 0.0) for d in domains}
        top = max(logits.values())
        exp = {d: math.exp(v - top) for d, v in logits.items()}
        total = sum(exp.values())
        k = len(domains)
        self.alpha = {d: (1.0 - self.smoothing) * exp[d] / total + self.smoothing / k for d in domains}
        self.updates += 1
        for d in domains:
            self.alpha_sum[d] += self.alpha[d]

    @property
    def average(self) -> dict[str, float]:
        """Time average of the weights over the updates so far (DoReMi's output mixture)."""
        if self.updates == 0:
            return dict(self.alpha)
        return {d: s / self.updates for d, s in self.alpha_sum.items()}

    def metrics(self) -> dict[str, float]:
        """The weights just set and their time average per domain, for logging at each update."""
        return {
            **{f"current/{d}": v for d, v in self.alpha.items()},
            **{f"average/{d}": v for d, v in self.average.items()},
        }

    def report(self) -> str:
        """The time-averaged weights as a recipe snippet for a ``fixed`` mixture."""
        average = self.average
        unit = 10_000
        counts = {d: round(w * unit) for d, w in average.items()}
        counts[max(counts, key=counts.get)] += unit - sum(counts.values())  # printed weights sum to exactly 1
        weights = ", ".join(f"{d}: {c / unit:.4f}" for d, c in counts.items())
        return (
            f"doremi: time-averaged weights over {self.updates} update(s) (every {self.update_every} steps, eta={self.eta}, smoothing={self.smoothing}); "
            f"train a longer run with them as:\n"
            f"data:\n  mixture:\n    class_path: fixed\n    init_args: {{weights: {{{weights}}}}}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": dict(self.alpha),
            "alpha_sum": dict(self.alpha_sum),
            "updates": self.updates,
            "excess": dict(self.excess),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.alpha = dict(state["alpha"])
        self.alpha_sum = dict(state["alpha_sum"])
        self.updates = int(state["updates"])
        self.excess = dict(state["excess"])
