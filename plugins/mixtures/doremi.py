"""Online domain weights by excess loss over a reference model (DoReMi, Xie et al. 2023, Algorithm 1).

Every step the policy receives each domain's excess loss lambda_i (per token
max(L_model - L_ref, 0), averaged over the domain's tokens in the step's batch) and moves

    alpha <- softmax(log alpha + eta * lambda),   alpha <- (1 - smoothing) * alpha + smoothing / k

By default (``mode: reweight``, the paper's Algorithm 1 and the official ``doremi/trainer.py``)
the batches are drawn from a fixed distribution s (uniform, or the reference mixture), and every
token's loss is multiplied by its domain's alpha_i / s_i (renormalised over the domains, as the
official code does), so that in expectation over the batches the model minimises
sum_i alpha_i * (loss of domain i) whatever s is. ``mode: resample`` instead draws the batches
by alpha and leaves the loss alone (an online-mixture variant, not the paper's proxy training).

As in the official ``doremi/train.py``, alpha starts from the configured domain weights (``sampling``,
or uniform) and every domain's excess loss starts at log(vocabulary size), the loss of a uniform
guess, so a domain absent from the first updates is pushed up until it is seen.
Either way the output is the time average of alpha over the updates, reported as a ``fixed``
mixture for a longer run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sprout.errors import SproutError
from sprout.protocols import DomainStats, MixturePolicy

MODES = ("reweight", "resample")


class DoReMi(MixturePolicy):
    """Exponentiated-gradient domain weights driven by per-domain excess loss.

    Starts from ``sampling`` (or uniform). A domain missing from one update's feedback (it drew
    no tokens since the last update) keeps its last excess loss, log(vocabulary size) before its
    first, as in the official code.

    Args:
        mode: ``reweight`` (default, Algorithm 1): batches from ``sampling``, token losses
            times alpha; ``resample``: batches drawn by alpha, plain loss.
        sampling: the fixed distribution ``reweight`` draws batches from, ``{domain: weight}``
            over every training domain (normalised); default uniform. Not used by ``resample``.
        update_every: optimizer steps between updates (the paper: 1); the excess loss is
            averaged over them.
        eta: step size of the exponentiated-gradient update (the paper's 1.0).
        smoothing: share of the uniform mixture mixed in after every update (the paper's
            1e-3); keeps every domain's weight at least ``smoothing / k``.
    """

    dynamic = True
    needs_reference = True

    def __init__(
        self,
        mode: str = "reweight",
        sampling: dict[str, float] | None = None,
        update_every: int = 1,
        eta: float = 1.0,
        smoothing: float = 1e-3,
    ) -> None:
        if mode not in MODES:
            raise SproutError(
                f"doremi mixture option mode must be one of {', '.join(MODES)}, got {mode!r}. Fix data.mixture.init_args.mode."
            )
        if sampling is not None:
            bad = {
                d: w for d, w in sampling.items() if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0)
            }
            if bad or not sampling or sum(sampling.values()) <= 0:
                raise SproutError(
                    f"doremi mixture option sampling must map domains to finite non-negative weights, not all zero; got {sampling}. Fix data.mixture.init_args.sampling."
                )
            if mode == "resample":
                raise SproutError(
                    "doremi mixture option sampling (the fixed distribution batches are drawn from) only applies to mode: reweight; mode: resample draws by alpha. Remove data.mixture.init_args.sampling or set mode: reweight."
                )
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
        self.mode = mode
        self.sampling = dict(sampling) if sampling is not None else None
        self.update_every = update_every
        self.eta = float(eta)
        self.smoothing = float(smoothing)
        self.alpha: dict[str, float] = {}  # the domain weights
        self.alpha_sum: dict[str, float] = {}  # sum of alpha over updates, for the time average
        self.updates = 0
        self.excess: dict[str, float] = {}  # last excess loss seen per domain

    def weights(
        self, step: int, domains: Mapping[str, DomainStats], feedback: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """The sampling distribution: fixed under ``reweight``, alpha under ``resample``."""
        if not domains:
            raise SproutError(
                "The doremi mixture got no domains; list at least one domain in the recipe's data.domains."
            )
        if not self.alpha:
            self._check_sampling(domains)
            self.alpha = self._sampling(domains)  # the configured weights (resample has none: uniform)
            self.alpha_sum = {d: 0.0 for d in domains}
        if set(self.alpha) != set(domains):
            raise SproutError(
                f"The doremi mixture state covers domains {sorted(self.alpha)} but training uses {sorted(domains)}; resume with the same data.domains."
            )
        for d, stats in domains.items():  # before a domain's first feedback (also in a checkpoint of older code)
            self.excess.setdefault(d, math.log(self._vocab_size(stats)))
        if feedback is not None:
            self._update(step, domains, feedback)
        return dict(self.alpha) if self.mode == "resample" else self._sampling(domains)

    def _sampling(self, domains: Mapping[str, DomainStats]) -> dict[str, float]:
        """The fixed distribution ``reweight`` draws batches from, normalised over ``domains``."""
        if self.sampling is None:
            return {d: 1.0 / len(domains) for d in domains}
        total = sum(self.sampling[d] for d in domains)
        return {d: self.sampling[d] / total for d in domains}

    @staticmethod
    def _vocab_size(stats: DomainStats) -> int:
        if stats.vocab_size < 1:
            raise SproutError(
                f"doremi starts every domain's excess loss at log(vocabulary size), but domain {stats.name}'s metadata gives no "
                "vocabulary size (meta.json tokenizer.vocab_size); prepare the domain again with sprout prepare."
            )
        return stats.vocab_size

    def loss_weights(self) -> dict[str, float] | None:
        """The factor on every token's loss by its domain under ``reweight``: alpha_i / s_i,
        renormalised (a domain never sampled, s_i = 0, gets 0); None under ``resample``."""
        if self.mode != "reweight" or not self.alpha:
            return None
        s = self._sampling(self.alpha)
        ratio = {d: a / s[d] if s[d] > 0 else 0.0 for d, a in self.alpha.items()}
        total = sum(ratio.values())
        return {d: r / total for d, r in ratio.items()}

    def _check_sampling(self, domains: Mapping[str, DomainStats]) -> None:
        if self.sampling is None:
            return
        unknown, missing = sorted(set(self.sampling) - set(domains)), sorted(set(domains) - set(self.sampling))
        if unknown or missing:
            problem = "; ".join(
                ([f"names domains {unknown} that are not training domains"] if unknown else [])
                + ([f"gives no weight to training domains {missing}"] if missing else [])
            )
            raise SproutError(
                f"doremi: data.mixture.init_args.sampling {problem} (training domains: {sorted(domains)}). Give one weight per training domain, or leave sampling out for uniform."
            )
        if sum(self.sampling[d] for d in domains) <= 0:
            raise SproutError(
                f"doremi: data.mixture.init_args.sampling gives every training domain weight 0: {self.sampling}. Give some domain a positive weight."
            )

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
        logits = {  # a domain sampled with weight 0 starts at alpha 0: log 0 = -inf until smoothing lifts it
            d: (math.log(self.alpha[d]) if self.alpha[d] > 0 else -math.inf) + self.eta * self.excess[d]
            for d in domains
        }
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
        """Time average of alpha over the updates so far (DoReMi's output mixture)."""
        if self.updates == 0:
            return dict(self.alpha)
        return {d: s / self.updates for d, s in self.alpha_sum.items()}

    def metrics(self) -> dict[str, float]:
        """alpha just set and its time average per domain, for logging at each update."""
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
            f"doremi ({self.mode}): time-averaged weights over {self.updates} update(s) (every {self.update_every} step(s), eta={self.eta}, smoothing={self.smoothing}); "
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
