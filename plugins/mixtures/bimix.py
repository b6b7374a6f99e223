"""Mixture that minimises a fitted BiMix law at the planned step count (Ge et al. 2024)."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from sprout.bimix import BiMixLaw, extrapolated, fitted_shares, optimal_mixture, read_fit
from sprout.errors import SproutError, check_option, is_number
from sprout.protocols import DomainStats, MixturePolicy


class BiMixMixture(MixturePolicy):
    """Weights r* = argmin sum_i (A_i / r_i^alpha_i)(B_i / S^beta_i + C_i), sum r_i = 1, r_min <= r_i <= r_max.

    The coefficients come from ``sprout fit-bimix`` run on a few short proxy runs: either
    its ``--out`` JSON (``fit_file``) or the per-domain block it prints (``coefficients``).
    ``target_steps`` is S, the length of the run being planned, in the same step unit as the
    proxy runs' logs.
    """

    def __init__(
        self,
        target_steps: int,
        coefficients: dict[str, dict[str, float]] | None = None,
        fit_file: str | None = None,
        r_min: float = 0.0,
        r_max: float = 1.0,
    ):
        if (coefficients is None) == (fit_file is None):
            raise SproutError(
                "The bimix mixture needs exactly one of init_args.coefficients (the block printed by sprout fit-bimix) or init_args.fit_file (its --out JSON); got "
                + ("both." if fit_file else "neither.")
            )
        if isinstance(target_steps, bool) or not isinstance(target_steps, int) or target_steps <= 0:
            raise SproutError(
                f"bimix mixture option target_steps must be a positive integer (the planned run's optimizer steps), got {target_steps!r}."
            )
        check_option(
            is_number(r_min) and r_min < 1,
            "data.mixture.init_args.r_min",
            r_min,
            "a share in [0, 1), the least weight of any domain",
        )
        check_option(
            is_number(r_max, r_min, strict=True) and r_max <= 1,
            "data.mixture.init_args.r_max",
            r_max,
            f"a share in (r_min={r_min}, 1], the most weight of any domain",
        )
        if fit_file is not None:
            self.source = f"fit_file {fit_file}"
            self.laws = read_fit(fit_file)
        else:
            self.source = "init_args.coefficients"
            if not isinstance(coefficients, Mapping) or not coefficients:
                raise SproutError(
                    f"bimix mixture option coefficients must map each domain to {{A, B, C, alpha, beta}}, got {coefficients!r}."
                )
            self.laws = {
                name: BiMixLaw.from_mapping(values, f"bimix coefficients.{name}")
                for name, values in coefficients.items()
            }
        self.target_steps = target_steps
        self.mixture = optimal_mixture(self.laws, target_steps, r_min=r_min, r_max=r_max)
        self.predicted = {name: float(law.loss(self.mixture[name], target_steps)) for name, law in self.laws.items()}
        self.warnings = extrapolated(self.mixture, self.laws, fitted_shares(fit_file)) if fit_file is not None else {}
        self._announced = False

    def weights(
        self, step: int, domains: Mapping[str, DomainStats], feedback: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        if set(domains) != set(self.laws):
            missing, extra = sorted(set(domains) - set(self.laws)), sorted(set(self.laws) - set(domains))
            raise SproutError(
                f"The bimix law ({self.source}) was fitted for other domains than the training data: it covers {sorted(self.laws)} "
                f"but training uses {sorted(domains)}; missing from the law: {missing or 'none'}, extra in the law: {extra or 'none'}. "
                "Fit the law on proxy runs over the same domains (sprout fit-bimix), or change data.domains to match."
            )
        if not self._announced:
            lines = "\n".join(
                f"  {name:<20} weight={self.mixture[name]:.4f}  predicted val loss={self.predicted[name]:.4f}"
                for name in domains
            )
            rank_zero_info(f"bimix mixture at {self.target_steps} steps ({self.source}):\n{lines}")
            for name, why in self.warnings.items():
                rank_zero_warn(f"bimix mixture, domain {name!r}: {why}.")
            self._announced = True
        return {name: self.mixture[name] for name in domains}

    def metrics(self) -> dict[str, float]:
        """The law's predicted validation loss per domain at ``target_steps``, for logging."""
        return {f"predicted_loss/{name}": loss for name, loss in self.predicted.items()}
