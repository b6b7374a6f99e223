"""Fit the BiMix law to a few proxy runs and print the mixture it recommends for a longer run.

Each proxy run trains with a different static mixture and logs, per validation, the loss of
every domain (``val/loss/<domain>``) and the weights it trained with
(``mixture/weight/<domain>``). This command reads those TensorBoard scalars, fits
L_i(r_i, s) = (A_i / r_i^alpha_i)(B_i / s^beta_i + C_i) per domain, checks the fit on a run
it did not see, and solves the law for the best mixture at ``--target_steps``:

    sprout fit-bimix --run_dirs '[runs/uniform, runs/natural, runs/entropy]' --target_steps 20000 --out bimix_fit.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sprout.bimix import (
    BiMixLaw,
    extrapolated,
    fit_law,
    mean_relative_error,
    optimal_mixture,
    r_squared,
    share_ranges,
    write_fit,
)
from sprout.errors import SproutError
from sprout.tensorboard_logs import read_scalars

MIN_STEPS = 3


@dataclass
class Run:
    """One proxy run: the static mixture it trained with and each domain's validation curve."""

    path: str
    weights: dict[str, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # domain -> (steps, losses)


def read_run(
    run_dir: str, loss_prefix: str = "val/loss/", weight_prefix: str = "mixture/weight/", step_tag: str | None = None
) -> Run:
    """The mixture and per-domain validation curves logged by one proxy run."""
    scalars = read_scalars(Path(run_dir))
    losses = {
        tag[len(loss_prefix) :]: points
        for tag, points in scalars.items()
        if tag.startswith(loss_prefix) and len(tag) > len(loss_prefix)
    }
    weights = {
        tag[len(weight_prefix) :]: points
        for tag, points in scalars.items()
        if tag.startswith(weight_prefix) and len(tag) > len(weight_prefix)
    }
    if not losses:
        raise SproutError(
            f"Run {run_dir} has no '{loss_prefix}<domain>' scalars (tags found: {sorted(scalars)[:20]}). Use runs whose recipe validates every domain, or set --loss_prefix."
        )
    if set(losses) != set(weights):
        raise SproutError(
            f"Run {run_dir} logs validation losses for {sorted(losses)} but mixture weights ('{weight_prefix}<domain>') for {sorted(weights)}. "
            "Each domain needs both; use proxy runs trained by Sprout with a mixture policy, or set --weight_prefix."
        )
    if step_tag is not None and step_tag not in scalars:
        raise SproutError(
            f"Run {run_dir} has no scalar {step_tag!r} to read steps from (--step_tag). Drop --step_tag to use the event step."
        )
    mixture = {}
    for domain, points in weights.items():
        values = np.array(list(points.values()))
        if values.max() - values.min() > 1e-4:
            raise SproutError(
                f"Run {run_dir} changed the weight of {domain!r} during training ({values.min():.4f} to {values.max():.4f}); the BiMix law describes static mixtures. Fit on runs of fixed, natural, uniform or entropy policies."
            )
        mixture[domain] = float(values.mean())
    curves = {}
    for domain, points in losses.items():
        if step_tag is None:
            pairs = sorted(points.items())
        else:
            step_of = scalars[step_tag]
            missing = [s for s in points if s not in step_of]
            if missing:
                raise SproutError(
                    f"Run {run_dir}: {step_tag!r} is not logged at event steps {missing[:5]} where '{loss_prefix}{domain}' is. Drop --step_tag to use the event step."
                )
            pairs = sorted((step_of[s], v) for s, v in points.items())
        pairs = [(s, v) for s, v in pairs if s > 0]  # the law diverges at step 0
        if len({s for s, _ in pairs}) < MIN_STEPS:
            raise SproutError(
                f"Run {run_dir} has '{loss_prefix}{domain}' at only {len(pairs)} step(s) after step 0; the fit needs at least {MIN_STEPS} per run. Validate more often (trainer.val_check_interval) or train the proxy run longer."
            )
        steps, values = (np.array(x, dtype=float) for x in zip(*pairs))
        curves[domain] = (steps, values)
    return Run(path=str(run_dir), weights=mixture, curves=curves)


def _points(runs: list[Run], domain: str):
    """Stack a domain's (share, step, loss) over runs, skipping runs that gave it no tokens."""
    r, s, loss = [], [], []
    for run in runs:
        if run.weights[domain] > 0:
            steps, losses = run.curves[domain]
            r += [run.weights[domain]] * len(steps)
            s += list(steps)
            loss += list(losses)
    return np.array(r), np.array(s), np.array(loss)


def _distinct_mixtures(runs: list[Run]) -> int:
    return len({tuple(round(run.weights[d], 6) for d in sorted(run.weights)) for run in runs})


def fit_runs(runs: list[Run]) -> dict[str, BiMixLaw]:
    """One law per domain, fitted on every point of ``runs``."""
    if _distinct_mixtures(runs) < 2:
        raise SproutError(
            f"The runs {[run.path for run in runs]} use {_distinct_mixtures(runs)} distinct mixture(s); the law needs at least 2 to fit how loss depends on the weights. Add a proxy run with a different mixture."
        )
    return {domain: fit_law(*_points(runs, domain), domain=domain) for domain in sorted(runs[0].curves)}


def goodness(laws: dict[str, BiMixLaw], runs: list[Run]) -> dict:
    """R^2 and mean relative error of the laws' predictions on ``runs``, per domain and pooled."""
    per_domain, observed_all, predicted_all = {}, [], []
    for domain, law in laws.items():
        r, s, observed = _points(runs, domain)
        if len(r) == 0:
            continue  # the run gave this domain no tokens: the law says nothing there
        predicted = law.loss(r, s)
        per_domain[domain] = {
            "r2": r_squared(observed, predicted),
            "mean_relative_error": mean_relative_error(observed, predicted),
        }
        observed_all.append(observed)
        predicted_all.append(predicted)
    observed, predicted = np.concatenate(observed_all), np.concatenate(predicted_all)
    return {
        "r2": r_squared(observed, predicted),
        "mean_relative_error": mean_relative_error(observed, predicted),
        "per_domain": per_domain,
    }


def check_runs(runs: list[Run]) -> None:
    if len(runs) < 2:
        raise SproutError(
            f"Got {len(runs)} proxy run dir(s); the law needs at least 2 runs with different mixtures (3 or more to also check the fit on a held-out run)."
        )
    domains = set(runs[0].curves)
    for run in runs[1:]:
        if set(run.curves) != domains:
            raise SproutError(
                f"Runs cover different domains: {runs[0].path} has {sorted(domains)}, {run.path} has {sorted(run.curves)}. Fit on proxy runs over the same domains."
            )


def plot(
    path: Path,
    laws: dict[str, BiMixLaw],
    runs: list[Run],
    held_out: Run | None,
    held_out_laws: dict[str, BiMixLaw] | None,
) -> None:
    """Observed validation curves (dots) against the law (lines); the held-out run's
    prediction from the fit that did not see it is dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted(laws)
    cols = min(3, len(domains))
    rows = -(-len(domains) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    for ax, domain in zip(axes.flat, domains):
        for i, run in enumerate(runs):
            color = f"C{i % 10}"
            steps, losses = run.curves[domain]
            label = f"{Path(run.path).name} (r={run.weights[domain]:.3f})"
            ax.plot(steps, losses, "o", ms=3, color=color, label=label)
            if run.weights[domain] > 0:
                grid = np.geomspace(steps.min(), steps.max(), 100)
                ax.plot(grid, laws[domain].loss(run.weights[domain], grid), "-", color=color, lw=1)
                if run is held_out and held_out_laws is not None:
                    ax.plot(
                        grid,
                        held_out_laws[domain].loss(run.weights[domain], grid),
                        "--",
                        color=color,
                        lw=1.5,
                        label="held-out prediction",
                    )
        ax.set_title(domain)
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(domains) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _rounded(weights: dict[str, float], places: int = 4) -> dict[str, float]:
    """Weights rounded so the printed values still sum to exactly 1."""
    unit = 10**places
    counts = {k: round(v * unit) for k, v in weights.items()}
    counts[max(counts, key=counts.get)] += unit - sum(counts.values())
    return {k: c / unit for k, c in counts.items()}


def recipe_snippet(mixture: dict[str, float], fit_file: str, target_steps: int, r_min: float, r_max: float) -> str:
    weights = ", ".join(f"{k}: {v:.4f}" for k, v in _rounded(mixture).items())
    bounds = "" if (r_min, r_max) == (0.0, 1.0) else f", r_min: {r_min}, r_max: {r_max}"
    return (
        "# either the solved weights as a fixed mixture:\n"
        "data:\n  mixture:\n    class_path: fixed\n"
        f"    init_args: {{weights: {{{weights}}}}}\n"
        "# or the law itself, solved when training starts:\n"
        "data:\n  mixture:\n    class_path: bimix\n"
        f"    init_args: {{fit_file: {fit_file}, target_steps: {target_steps}{bounds}}}\n"
    )


def fit_bimix(
    run_dirs: list[str],
    target_steps: int,
    out: str = "bimix_fit.json",
    plot_file: str | None = None,
    holdout: str = "last",
    r_min: float = 0.0,
    r_max: float = 1.0,
    loss_prefix: str = "val/loss/",
    weight_prefix: str = "mixture/weight/",
    step_tag: str | None = None,
) -> dict[str, float]:
    """Fit the law per domain, score it on a held-out run, write OUT and a plot, print the mixture
    that minimises the summed predicted loss at TARGET_STEPS as a recipe snippet; return it.

    Args:
        run_dirs: TensorBoard log dir of each proxy run (searched recursively for event files), one
            static mixture per run: ``'[runs/a, runs/b, runs/c]'``.
        target_steps: step count S of the run to plan, in the proxy runs' step unit.
        out: where to write the fitted coefficients, goodness of fit and mixture (JSON, usable as
            the bimix policy's fit_file).
        plot_file: PNG of fitted vs observed curves per domain (default: OUT with .png).
        holdout: run dir to leave out of a first fit and score the law on (R2, mean relative
            error): 'last', one of the run dirs, or 'none'. The written fit uses every run.
        r_min: lower bound on every domain's weight.
        r_max: upper bound on every domain's weight.
        loss_prefix: scalar tag prefix of per-domain validation losses.
        weight_prefix: scalar tag prefix of the per-domain mixture weights a run trained with.
        step_tag: scalar whose value is the step (e.g. trainer/global_step); default: the event's own step.
    """
    runs = [read_run(d, loss_prefix, weight_prefix, step_tag) for d in run_dirs]
    check_runs(runs)
    held_out, held_out_laws, held_out_fit = None, None, None
    if holdout != "none":
        index = (
            len(runs) - 1
            if holdout == "last"
            else next((i for i, d in enumerate(run_dirs) if Path(d) == Path(holdout)), None)
        )
        if index is None:
            raise SproutError(
                f"--holdout {holdout!r} is none of the run dirs {run_dirs}; give one of them, 'last' or 'none'."
            )
        held_out = runs[index]
        rest = runs[:index] + runs[index + 1 :]
        if _distinct_mixtures(rest) < 2:
            raise SproutError(
                f"With {held_out.path} held out, the remaining runs use {_distinct_mixtures(rest)} distinct mixture(s) and the law needs 2. "
                "Add a proxy run with another mixture, or pass --holdout none to fit on every run without a held-out check."
            )
        held_out_laws = fit_runs(rest)
        held_out_fit = goodness(held_out_laws, [held_out])
    laws = fit_runs(runs)
    in_sample = goodness(laws, runs)
    mixture = optimal_mixture(laws, target_steps, r_min=r_min, r_max=r_max)

    print(f"BiMix fit on {len(runs)} runs: L_i(r, s) = A_i / r^alpha_i * (B_i / s^beta_i + C_i)  (gauge B + C = 1)")
    print(f"{'domain':<20}{'A':>10}{'B':>10}{'C':>10}{'alpha':>9}{'beta':>9}{'R2':>8}{'MRE':>9}")
    for domain, law in laws.items():
        g = in_sample["per_domain"][domain]
        print(
            f"{domain:<20}{law.A:>10.4g}{law.B:>10.4g}{law.C:>10.4g}{law.alpha:>9.4f}{law.beta:>9.4f}{g['r2']:>8.4f}{g['mean_relative_error']:>9.2%}"
        )
    print(f"in-sample: R2 {in_sample['r2']:.4f}, mean relative error {in_sample['mean_relative_error']:.2%}")
    if held_out_fit is not None:
        print(
            f"held-out run {held_out.path} (fit on the other {len(runs) - 1}): R2 {held_out_fit['r2']:.4f}, mean relative error {held_out_fit['mean_relative_error']:.2%}"
        )
    print(f"\noptimal mixture at {target_steps} steps (r_min={r_min}, r_max={r_max}):")
    for domain, weight in mixture.items():
        print(f"  {domain:<20} {weight:.4f}  predicted loss {float(laws[domain].loss(weight, target_steps)):.4f}")

    warnings = extrapolated(mixture, laws, share_ranges([run.weights for run in runs]))
    for domain, why in warnings.items():
        print(f"warning: {domain}: {why}.")

    runs_info = [
        {"dir": run.path, "weights": run.weights, "points": int(sum(len(c[0]) for c in run.curves.values()))}
        for run in runs
    ]
    held_out_info = None if held_out is None else {"run": held_out.path, **held_out_fit}
    write_fit(
        out,
        laws,
        target_steps=target_steps,
        r_min=r_min,
        r_max=r_max,
        mixture=mixture,
        extrapolated=warnings,
        runs=runs_info,
        in_sample=in_sample,
        held_out=held_out_info,
    )
    plot_path = Path(plot_file) if plot_file else Path(out).with_suffix(".png")
    plot(plot_path, laws, runs, held_out, held_out_laws)
    print(f"\nwrote {out} and {plot_path}\n")
    print(recipe_snippet(mixture, out, target_steps, r_min, r_max))
    return mixture
