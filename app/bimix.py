"""The BiMix bivariate data-mixing law (Ge et al. 2024): fit it per domain, solve it for a mixture.

A domain given share ``r`` of the training tokens has, after ``s`` steps, validation loss

    L(r, s) = (A / r^alpha) * (B / s^beta + C).

Only the products ``A*B`` and ``A*C`` are determined by data (scaling A up and B, C down gives
the same curve), so the fit works on those two, ``alpha`` and ``beta``, and reports A, B, C in
the gauge ``B + C = 1`` (A is then the loss at r = 1, s = 1). The ``bimix`` mixture policy and
``sprout fit-bimix`` share these functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from sprout.errors import SproutError

COEFFICIENTS = ("A", "B", "C", "alpha", "beta")


@dataclass(frozen=True)
class BiMixLaw:
    """One domain's fitted law."""

    A: float
    B: float
    C: float
    alpha: float
    beta: float

    def loss(self, r, s):
        """Predicted validation loss at share(s) ``r`` after ``s`` steps (broadcasts)."""
        r, s = np.asarray(r, dtype=float), np.asarray(s, dtype=float)
        return self.A / r**self.alpha * (self.B / s**self.beta + self.C)

    @classmethod
    def from_mapping(cls, values: Mapping, where: str) -> BiMixLaw:
        """Build from ``{A, B, C, alpha, beta}``; ``where`` names the source in error messages."""
        if not isinstance(values, Mapping) or set(values) != set(COEFFICIENTS):
            got = sorted(values) if isinstance(values, Mapping) else type(values).__name__
            raise SproutError(
                f"{where} must map exactly {', '.join(COEFFICIENTS)} to numbers, got {got}. Copy the block printed by sprout fit-bimix or pass its --out file as fit_file."
            )
        law = {}
        for key in COEFFICIENTS:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SproutError(f"{where}.{key} must be a finite number, got {value!r}.")
            law[key] = float(value)
        if law["A"] <= 0 or law["B"] < 0 or law["C"] < 0 or law["alpha"] < 0 or law["beta"] < 0:
            raise SproutError(
                f"{where} has {law}: the law needs A > 0 and B, C, alpha, beta >= 0. Re-run sprout fit-bimix, which keeps them in range."
            )
        return cls(**law)


def fit_law(r, s, loss, domain: str = "domain") -> BiMixLaw:
    """Bounded least-squares fit (Trust Region Reflective) of one domain's law on its points.

    Residuals are on log loss, i.e. relative errors, so early high losses do not dominate
    the late ones the mixture is chosen for. Several starting betas guard against a poor
    local minimum; the best fit wins.
    """
    r, s, loss = (np.asarray(x, dtype=float).ravel() for x in (r, s, loss))
    if not (len(r) == len(s) == len(loss)):
        raise ValueError("r, s and loss must have the same length")
    if len(np.unique(r)) < 2:
        raise SproutError(
            f"Domain {domain!r} has shares {sorted(set(r.tolist()))} over the runs that trained on it; with fewer than 2 distinct shares how its loss depends on its share (alpha) cannot be fit. Add a proxy run that gives {domain!r} a different weight."
        )
    if len(np.unique(s)) < 3:
        raise SproutError(
            f"Domain {domain!r} has validation losses at only {len(np.unique(s))} distinct step(s); the law needs at least 3. Validate more often in the proxy runs (trainer.val_check_interval) or train them longer."
        )
    if np.any(r <= 0) or np.any(s <= 0) or np.any(loss <= 0):
        raise ValueError("shares, steps and losses must be positive")
    log_r, log_s, log_loss = np.log(r), np.log(s), np.log(loss)

    def residuals(theta):
        log_ab, log_ac, alpha, beta = theta
        return -alpha * log_r + np.logaddexp(log_ab - beta * log_s, log_ac) - log_loss

    lower = [-50.0, -50.0, 0.0, 0.0]
    upper = [50.0, 50.0, 10.0, 5.0]
    best = None
    for beta0 in (0.1, 0.3, 0.6, 1.0):
        start = [log_loss.max() + beta0 * log_s.min(), math.log(0.5) + log_loss.min(), 0.1, beta0]
        result = least_squares(residuals, start, bounds=(lower, upper), method="trf", x_scale="jac", max_nfev=2000)
        if best is None or result.cost < best.cost:
            best = result
    log_ab, log_ac, alpha, beta = best.x
    ab, ac = math.exp(log_ab), math.exp(log_ac)
    a = ab + ac
    return BiMixLaw(A=a, B=ab / a, C=ac / a, alpha=float(alpha), beta=float(beta))


def r_squared(observed, predicted) -> float:
    """Coefficient of determination: 1 - SS_res / SS_tot."""
    observed, predicted = np.asarray(observed, dtype=float), np.asarray(predicted, dtype=float)
    ss_tot = float(np.sum((observed - observed.mean()) ** 2))
    ss_res = float(np.sum((observed - predicted) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def mean_relative_error(observed, predicted) -> float:
    observed, predicted = np.asarray(observed, dtype=float), np.asarray(predicted, dtype=float)
    return float(np.mean(np.abs(predicted - observed) / np.abs(observed)))


def optimal_mixture(
    laws: Mapping[str, BiMixLaw], steps: float, r_min: float = 0.0, r_max: float = 1.0
) -> dict[str, float]:
    """argmin_r sum_i L_i(r_i, steps) subject to sum_i r_i = 1 and r_min <= r_i <= r_max.

    At fixed ``steps`` each term is ``a_i * r_i^-alpha_i`` with ``a_i > 0``: convex and
    separable, so the KKT conditions give ``r_i(lam) = clip((alpha_i a_i / lam)^(1/(1+alpha_i)))``
    for one multiplier ``lam``. Their sum falls monotonically in ``lam``; bisection on
    ``log lam`` for a sum of 1 is exact up to floating point.
    """
    names = list(laws)
    n = len(names)
    if n == 0:
        raise SproutError("The BiMix law has no domains; give coefficients for every training domain.")
    if not steps > 0:
        raise SproutError(f"target_steps must be positive, got {steps}.")
    if not (0.0 <= r_min < r_max <= 1.0):
        raise SproutError(f"Mixture bounds must satisfy 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}.")
    if n * r_min > 1.0 + 1e-12 or n * r_max < 1.0 - 1e-12:
        raise SproutError(
            f"No mixture of {n} domains sums to 1 with every weight in [r_min={r_min}, r_max={r_max}]: need r_min <= {1 / n:.4g} <= r_max. Loosen r_min or r_max."
        )
    alpha = np.array([laws[k].alpha for k in names])
    scale = np.array([laws[k].A * (laws[k].B / steps ** laws[k].beta + laws[k].C) for k in names])
    gain = alpha * scale  # -dL_i/dr_i at r_i = 1
    log_gain = np.log(np.where(gain > 0, gain, 1.0))
    log_lo = math.log(r_min) if r_min > 0 else -math.inf
    log_hi = math.log(r_max)

    def shares(log_lam: float) -> np.ndarray:
        log_r = np.where(gain > 0, (log_gain - log_lam) / (1.0 + alpha), -math.inf)
        return np.exp(np.clip(log_r, log_lo, log_hi))

    lo, hi = -1.0, 1.0
    for _ in range(64):
        if shares(lo).sum() >= 1.0:
            break
        lo *= 2.0
    else:
        flat = [k for k, g in zip(names, gain) if g <= 0]
        raise SproutError(
            f"The BiMix law cannot place a mixture: domains {flat} have alpha = 0 (their loss does not depend on their share) and the others cannot take the rest within r_max={r_max}. Refit with proxy runs whose mixtures differ more, or raise r_max."
        )
    while shares(hi).sum() > 1.0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if shares(mid).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    r = shares(0.5 * (lo + hi))
    r = r / r.sum()
    return {k: float(v) for k, v in zip(names, r)}


EXTRAPOLATION = 2.0  # a weight this factor outside the shares the proxies gave a domain is far from the fit


def extrapolated(
    mixture: Mapping[str, float], laws: Mapping[str, BiMixLaw], shares: Mapping[str, tuple[float, float]]
) -> dict[str, str]:
    """Domains whose weight lies far outside the (smallest, largest) share the proxy runs gave
    them, with why to distrust it. A law's ``alpha`` is pinned down only over the shares it saw:
    proxies whose shares of a domain barely differ leave ``alpha`` near 0 ("its loss does not
    depend on its share"), and the optimum then starves that domain."""
    found = {}
    for domain, weight in mixture.items():
        if domain not in shares:
            continue
        lo, hi = shares[domain]
        if weight < lo / EXTRAPOLATION or weight > hi * EXTRAPOLATION:
            found[domain] = (
                f"weight {weight:.4f} is far outside the shares {lo:.3f}-{hi:.3f} the proxy runs gave it (alpha {laws[domain].alpha:.3g}); "
                f"the law was not fitted there. Add a proxy run with a {'smaller' if weight < lo else 'larger'} share of {domain!r}, or bound the weights with r_min/r_max"
            )
    return found


def _read_fit_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SproutError(
            f"BiMix fit_file {path} does not exist. Write it with `sprout fit-bimix RUN_DIR ... --out {path}`."
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise SproutError(
            f"BiMix fit_file {path} is not readable JSON ({err}). Re-create it with sprout fit-bimix --out {path}."
        ) from None
    return data


def share_ranges(mixtures: list[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """The (smallest, largest) weight each domain has over ``mixtures`` (0 where one omits it)."""
    domains = set().union(*mixtures) if mixtures else set()
    return {d: (min(m.get(d, 0.0) for m in mixtures), max(m.get(d, 0.0) for m in mixtures)) for d in domains}


def fitted_shares(path: str | Path) -> dict[str, tuple[float, float]]:
    """``share_ranges`` of the proxy runs a fit file was made from (its ``runs``); empty for a
    file that does not record them."""
    data = _read_fit_file(Path(path))
    return share_ranges([run.get("weights", {}) for run in data.get("runs") or [] if isinstance(run, dict)])


def read_fit(path: str | Path) -> dict[str, BiMixLaw]:
    """Laws from a JSON file written by ``sprout fit-bimix``."""
    path = Path(path)
    data = _read_fit_file(path)
    domains = data.get("domains") if isinstance(data, dict) else None
    if not isinstance(domains, dict) or not domains:
        raise SproutError(
            f"BiMix fit_file {path} has no 'domains' mapping of per-domain coefficients. Re-create it with sprout fit-bimix --out {path}."
        )
    return {name: BiMixLaw.from_mapping(values, f"{path}: domains.{name}") for name, values in domains.items()}


def write_fit(path: str | Path, laws: Mapping[str, BiMixLaw], **info) -> None:
    """Write laws (plus any JSON-able ``info`` such as goodness of fit) for ``read_fit``."""
    data = {
        "law": "L_i(r, s) = A_i / r^alpha_i * (B_i / s^beta_i + C_i)",
        "domains": {k: asdict(v) for k, v in laws.items()},
        **info,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
