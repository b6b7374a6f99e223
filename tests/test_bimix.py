import itertools
import json

import numpy as np
import pytest
from tiny_run import sprout

from sprout.bimix import BiMixLaw, fit_law, optimal_mixture, read_fit
from sprout.commands.fit_bimix import fit_bimix
from sprout.errors import SproutError
from sprout.plugins.mixtures.bimix import BiMixMixture
from sprout.protocols import DomainStats
from sprout.registry import resolve

TRUE = {
    "code": BiMixLaw(A=1.0, B=4.0, C=1.6, alpha=0.12, beta=0.45),
    "text": BiMixLaw(A=1.0, B=6.0, C=2.8, alpha=0.05, beta=0.35),
}
STEPS = [25, 50, 100, 200, 300, 400, 600, 800, 1200, 1600]


def write_run(path, weights, laws=TRUE, steps=STEPS, noise=0.005, seed=0, weight_tags=True):
    """A proxy run's TensorBoard log as Sprout writes it, with losses drawn from ``laws``."""
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(seed)
    writer = SummaryWriter(str(path))
    for step in steps:
        for domain, law in laws.items():
            loss = float(law.loss(weights[domain], max(step, 1))) * (
                1 + noise * rng.standard_normal()
            )  # step 0: any finite loss
            writer.add_scalar(f"val/loss/{domain}", loss, step)
            if weight_tags:
                writer.add_scalar(f"mixture/weight/{domain}", weights[domain], step)
    writer.close()
    return str(path)


def objective(laws, r, steps):
    return sum(float(laws[k].loss(r[k], steps)) for k in laws)


def test_fit_recovers_law_from_noisy_runs(tmp_path, capsys):
    shares = [0.15, 0.35, 0.55, 0.75, 0.9]
    runs = [write_run(tmp_path / f"run{i}", {"code": c, "text": 1 - c}, seed=i) for i, c in enumerate(shares)]
    out = tmp_path / "fit.json"
    code, err = sprout("fit-bimix", "--run_dirs", json.dumps(runs), "--target_steps", "5000", "--out", str(out))
    assert code == 0, err
    fit = json.loads(out.read_text())
    mixture = fit["mixture"]
    for domain, true in TRUE.items():
        got = fit["domains"][domain]
        # A, B, C are known only up to A*B and A*C; alpha and beta are identifiable.
        assert got["A"] * got["B"] == pytest.approx(true.A * true.B, rel=0.1)
        assert got["A"] * got["C"] == pytest.approx(true.A * true.C, rel=0.1)
        assert got["alpha"] == pytest.approx(true.alpha, abs=0.01)
        assert got["beta"] == pytest.approx(true.beta, abs=0.05)
    assert fit["held_out"]["run"] == runs[-1]
    assert fit["held_out"]["mean_relative_error"] < 0.01
    assert fit["in_sample"]["r2"] > 0.99
    assert (tmp_path / "fit.png").stat().st_size > 10_000
    # The recommended mixture is the true law's optimum (up to the fit's error).
    assert mixture == pytest.approx(optimal_mixture(TRUE, 5000), abs=0.03)
    printed = capsys.readouterr().out
    assert "class_path: fixed" in printed and f"fit_file: {out}, target_steps: 5000" in printed
    assert read_fit(out).keys() == TRUE.keys()


def test_fit_law_direct_matches_generating_law():
    rng = np.random.default_rng(1)
    law = BiMixLaw(A=2.0, B=1.5, C=1.0, alpha=0.3, beta=0.6)
    r, s = np.meshgrid([0.1, 0.3, 0.6], [10, 30, 100, 300, 1000])
    loss = law.loss(r, s) * (1 + 0.002 * rng.standard_normal(r.shape))
    fit = fit_law(r, s, loss)
    grid_r, grid_s = np.meshgrid(np.linspace(0.1, 0.9, 9), np.geomspace(10, 5000, 9))
    assert np.max(np.abs(fit.loss(grid_r, grid_s) / law.loss(grid_r, grid_s) - 1)) < 0.02
    assert fit.B + fit.C == pytest.approx(1.0)


LAWS3 = {
    "a": BiMixLaw(A=1.0, B=4.0, C=2.5, alpha=0.08, beta=0.45),
    "b": BiMixLaw(A=1.2, B=3.0, C=1.5, alpha=0.20, beta=0.30),
    "c": BiMixLaw(A=0.8, B=5.0, C=3.0, alpha=0.02, beta=0.50),
}


@pytest.mark.parametrize("r_min", [0.0, 0.1])
def test_solver_matches_grid_search_two_domains(r_min):
    laws = {k: LAWS3[k] for k in ("a", "c")}
    best = optimal_mixture(laws, 1000, r_min=r_min)
    grid = np.linspace(max(r_min, 1e-6), 1 - max(r_min, 1e-6), 200_001)
    values = laws["a"].loss(grid, 1000) + laws["c"].loss(1 - grid, 1000)
    assert best["a"] == pytest.approx(grid[np.argmin(values)], abs=1e-4)
    assert objective(laws, best, 1000) <= values.min() + 1e-12
    assert min(best.values()) >= r_min - 1e-12 and sum(best.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("r_min, r_max", [(0.0, 1.0), (0.1, 1.0), (0.0, 0.5)])
def test_solver_matches_grid_search_three_domains(r_min, r_max):
    best = optimal_mixture(LAWS3, 2000, r_min=r_min, r_max=r_max)
    step = 0.0025
    candidates = []
    for a, b in itertools.product(np.arange(step, 1, step), repeat=2):
        r = {"a": a, "b": b, "c": 1 - a - b}
        if all(max(r_min, 1e-9) - 1e-12 <= v <= r_max + 1e-12 for v in r.values()):
            candidates.append((objective(LAWS3, r, 2000), r))
    grid_value, grid_r = min(candidates, key=lambda c: c[0])
    assert objective(LAWS3, best, 2000) <= grid_value + 1e-12
    assert best == pytest.approx(grid_r, abs=2 * step)
    assert sum(best.values()) == pytest.approx(1.0)
    assert all(r_min - 1e-12 <= v <= r_max + 1e-12 for v in best.values())


def test_r_min_binds_for_a_domain_the_law_does_not_need():
    laws = {**LAWS3, "d": BiMixLaw(A=1.0, B=1.0, C=1.0, alpha=0.0, beta=0.3)}
    assert optimal_mixture(laws, 1000)["d"] == 0.0
    assert optimal_mixture(laws, 1000, r_min=0.05)["d"] == pytest.approx(0.05)


@pytest.mark.parametrize("r_min, r_max", [(0.4, 1.0), (0.0, 0.3), (0.5, 0.5)])
def test_infeasible_bounds_are_refused(r_min, r_max):
    with pytest.raises(SproutError, match="r_min"):
        optimal_mixture(LAWS3, 1000, r_min=r_min, r_max=r_max)


def coefficients(laws):
    return {k: {"A": v.A, "B": v.B, "C": v.C, "alpha": v.alpha, "beta": v.beta} for k, v in laws.items()}


def domains(*names):
    return {n: DomainStats(name=n, tokens=100) for n in names}


def test_policy_from_coefficients_and_from_fit_file(tmp_path):
    from sprout.bimix import write_fit

    inline = BiMixMixture(target_steps=1000, coefficients=coefficients(LAWS3), r_min=0.05)
    weights = inline.weights(0, domains("a", "b", "c"))
    assert weights == pytest.approx(optimal_mixture(LAWS3, 1000, r_min=0.05))
    write_fit(tmp_path / "fit.json", LAWS3)
    from_file = BiMixMixture(target_steps=1000, fit_file=str(tmp_path / "fit.json"), r_min=0.05)
    assert from_file.weights(10, domains("c", "b", "a")) == pytest.approx(weights)
    assert set(inline.metrics()) == {"predicted_loss/a", "predicted_loss/b", "predicted_loss/c"}
    assert resolve("mixture", "bimix") is BiMixMixture


def test_policy_refuses_domains_the_law_does_not_cover():
    policy = BiMixMixture(target_steps=1000, coefficients=coefficients(LAWS3))
    with pytest.raises(
        SproutError,
        match=r"covers \['a', 'b', 'c'\] but training uses \['a', 'b', 'math'\]; missing from the law: \['math'\], extra in the law: \['c'\]",
    ):
        policy.weights(0, domains("a", "b", "math"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_steps=100), "exactly one of"),
        (dict(target_steps=100, coefficients={"a": {}}, fit_file="x.json"), "exactly one of"),
        (dict(target_steps=0, coefficients={"a": {}}), "target_steps"),
        (
            dict(target_steps=100, coefficients={"a": {"A": 1, "B": 1, "C": 1, "alpha": 0.1}}),
            r"coefficients\.a must map exactly",
        ),
        (dict(target_steps=100, coefficients={"a": {"A": -1, "B": 1, "C": 1, "alpha": 0.1, "beta": 0.1}}), "A > 0"),
        (dict(target_steps=100, fit_file="/nonexistent/fit.json"), "does not exist"),
    ],
)
def test_policy_bad_init_args(kwargs, message):
    with pytest.raises(SproutError, match=message):
        BiMixMixture(**kwargs)


def test_a_weight_far_outside_the_proxies_shares_is_flagged(tmp_path, capsys):
    """Proxies that barely vary a domain's share cannot pin its alpha; an optimum that starves
    the domain is then an extrapolation, said on screen and in the fit file."""
    laws = {
        **TRUE,
        "math": BiMixLaw(A=1.0, B=5.0, C=2.0, alpha=0.0, beta=0.4),
    }  # as fitted when math's share hardly moved
    mixes = [{"code": c, "text": 0.75 - c - m, "math": 0.25 + m} for c, m in ((0.2, -0.02), (0.35, 0.0), (0.5, 0.03))]
    runs = [write_run(tmp_path / f"r{i}", mix, laws=laws, seed=i) for i, mix in enumerate(mixes)]
    out = tmp_path / "fit.json"
    mixture = fit_bimix(runs, target_steps=1000, out=str(out), holdout="none")
    assert mixture["math"] < 0.125
    flagged = json.loads(out.read_text())["extrapolated"]
    assert list(flagged) == ["math"] and "shares 0.230-0.280" in flagged["math"] and "r_min" in flagged["math"]
    assert "warning: math: weight" in capsys.readouterr().out
    policy = BiMixMixture(target_steps=1000, fit_file=str(out))  # training from that fit says so too
    stats = {name: DomainStats(name=name, tokens=1000) for name in laws}
    with pytest.warns(UserWarning, match="bimix mixture, domain 'math': weight .* far outside the shares 0.230-0.280"):
        policy.weights(0, stats)
    fit_bimix(runs, target_steps=1000, out=str(out), holdout="none", r_min=0.2)  # bounded: nothing to flag
    assert json.loads(out.read_text())["extrapolated"] == {}


def test_too_few_mixtures_is_refused(tmp_path):
    runs = [write_run(tmp_path / f"r{i}", {"code": 0.3, "text": 0.7}, seed=i) for i in range(3)]
    with pytest.raises(SproutError, match="1 distinct mixture"):
        fit_bimix(runs, target_steps=100, out=str(tmp_path / "fit.json"), holdout="none")


def test_holdout_needs_two_mixtures_left(tmp_path):
    runs = [write_run(tmp_path / f"r{i}", {"code": c, "text": 1 - c}, seed=i) for i, c in enumerate([0.3, 0.6])]
    with pytest.raises(SproutError, match="--holdout none"):
        fit_bimix(runs, target_steps=100, out=str(tmp_path / "fit.json"))
    assert fit_bimix(runs, target_steps=100, out=str(tmp_path / "fit.json"), holdout="none")


def test_too_few_steps_names_the_run(tmp_path):
    good = write_run(tmp_path / "good", {"code": 0.3, "text": 0.7})
    short = write_run(tmp_path / "short", {"code": 0.6, "text": 0.4}, steps=[0, 100, 200])
    with pytest.raises(SproutError, match=r"short has 'val/loss/\w+' at only 2 step\(s\)"):
        fit_bimix([good, short], target_steps=100, out=str(tmp_path / "fit.json"), holdout="none")


def test_missing_weight_tags_name_the_run(tmp_path):
    good = write_run(tmp_path / "good", {"code": 0.3, "text": 0.7})
    bare = write_run(tmp_path / "bare", {"code": 0.6, "text": 0.4}, weight_tags=False)
    with pytest.raises(SproutError, match=r"bare logs validation losses for \['code', 'text'\] but mixture weights"):
        fit_bimix([good, bare], target_steps=100, out=str(tmp_path / "fit.json"), holdout="none")


def test_dir_without_event_files_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SproutError, match="No TensorBoard event files.*empty"):
        fit_bimix([str(tmp_path / "empty")], target_steps=100, out=str(tmp_path / "fit.json"))
