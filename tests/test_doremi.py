import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from sprout import registry
from sprout.errors import SproutError
from sprout.objective import objective
from sprout.plugins.mixtures.doremi import DoReMi
from sprout.plugins.mixtures.static import Fixed
from sprout.protocols import DomainStats

VOCAB = 1024
DOMAINS = {d: DomainStats(name=d, tokens=1000, vocab_size=VOCAB) for d in ("books", "code", "math")}


def update(policy: DoReMi, step: int, feedback=None) -> dict[str, float]:
    """Feed the policy and return alpha (the loss weights under reweight, the sampling weights under resample)."""
    sampled = policy.weights(step, DOMAINS, feedback)
    return policy.loss_weights() if policy.mode == "reweight" else sampled


def test_registered():
    assert isinstance(registry.create("mixture", "doremi"), DoReMi)


def test_starts_uniform_and_feedbackless_calls_change_nothing():
    policy = DoReMi()
    for step in (0, 5, 9):
        assert policy.weights(step, DOMAINS) == pytest.approx({d: 1 / 3 for d in DOMAINS})
        assert policy.loss_weights() == pytest.approx({d: 1 / 3 for d in DOMAINS})
    assert policy.updates == 0


def test_algorithm_1_two_steps_by_hand():
    """Xie et al. 2023, Algorithm 1 with k = 3, eta = 1, c = 0.1, two steps: alpha_t =
    (1 - c) softmax(log alpha_{t-1} + eta lambda_t) + c / k, sampling stays uniform, the output
    is the mean of alpha_1 and alpha_2."""
    policy = DoReMi(eta=1.0, smoothing=0.1)
    assert policy.mode == "reweight" and policy.update_every == 1
    l1, l2 = {"books": 0.5, "code": 1.0, "math": 0.0}, {"books": 0.2, "code": 0.0, "math": 0.7}
    # step 1: from alpha_0 = 1/3: softmax(log 1/3 + l1) = e^l / (e^0.5 + e^1 + e^0)
    z1 = math.exp(0.5) + math.exp(1.0) + 1.0
    a1 = {
        "books": 0.9 * math.exp(0.5) / z1 + 0.1 / 3,
        "code": 0.9 * math.exp(1.0) / z1 + 0.1 / 3,
        "math": 0.9 / z1 + 0.1 / 3,
    }
    assert a1 == pytest.approx({"books": 0.309810, "code": 0.489166, "math": 0.201025}, abs=1e-6)
    assert policy.weights(1, DOMAINS, l1) == pytest.approx({d: 1 / 3 for d in DOMAINS})  # batches stay uniform
    assert policy.loss_weights() == pytest.approx(a1, abs=1e-12)
    # step 2: softmax(log a1 + l2) = a1 e^l2 / sum
    z2 = sum(a1[d] * math.exp(l2[d]) for d in DOMAINS)
    a2 = {d: 0.9 * a1[d] * math.exp(l2[d]) / z2 + 0.1 / 3 for d in DOMAINS}
    assert a2 == pytest.approx({"books": 0.300990, "code": 0.379337, "math": 0.319672}, abs=1e-6)
    policy.weights(2, DOMAINS, l2)
    assert policy.loss_weights() == pytest.approx(a2, abs=1e-12)
    assert policy.average == pytest.approx({d: (a1[d] + a2[d]) / 2 for d in DOMAINS}, abs=1e-12)


def test_official_step_from_configured_weights_with_an_absent_domain_by_hand():
    """The official code (doremi/train.py, trainer.py): alpha_0 is the configured domain weights
    (here also the sampling distribution s), every domain's score starts at log(vocab size), so
    ``math``, absent from the first batch, enters the update with log 1024; the loss factor is
    alpha_i / s_i renormalised."""
    policy = DoReMi(sampling={"books": 2.0, "code": 1.0, "math": 1.0}, eta=1.0, smoothing=0.1)
    s = {"books": 0.5, "code": 0.25, "math": 0.25}
    assert policy.weights(0, DOMAINS) == pytest.approx(s)
    assert policy.alpha == pytest.approx(s)  # (b): not uniform
    assert policy.loss_weights() == pytest.approx({d: 1 / 3 for d in DOMAINS})  # alpha_0 / s is flat
    policy.weights(1, DOMAINS, {"books": 0.5, "code": 1.0})
    lam = {"books": 0.5, "code": 1.0, "math": math.log(VOCAB)}  # (c)
    z = sum(s[d] * math.exp(lam[d]) for d in DOMAINS)
    a1 = {d: 0.9 * s[d] * math.exp(lam[d]) / z + 0.1 / 3 for d in DOMAINS}
    assert a1 == pytest.approx({"books": 0.036215, "code": 0.035708, "math": 0.928077}, abs=1e-6)
    assert policy.alpha == pytest.approx(a1, abs=1e-12)
    ratio = {d: a1[d] / s[d] for d in DOMAINS}
    factors = {d: r / sum(ratio.values()) for d, r in ratio.items()}  # (a)
    assert factors == pytest.approx({"books": 0.018441, "code": 0.036367, "math": 0.945192}, abs=1e-6)
    assert policy.loss_weights() == pytest.approx(factors, abs=1e-12)
    # in expectation over batches drawn by s, the weighted mean loss is sum_i alpha_i L_i
    losses = {"books": 2.0, "code": 3.0, "math": 5.0}
    f = policy.loss_weights()
    expected = sum(s[d] * f[d] * losses[d] for d in DOMAINS) / sum(s[d] * f[d] for d in DOMAINS)
    assert expected == pytest.approx(sum(a1[d] * losses[d] for d in DOMAINS), abs=1e-12)


def test_doremi_needs_the_vocabulary_size():
    with pytest.raises(SproutError, match="tokenizer.vocab_size"):
        DoReMi().weights(0, {"books": DomainStats(name="books", tokens=10)})


def test_reweight_samples_from_the_given_reference_mixture():
    policy = DoReMi(sampling={"books": 2.0, "code": 1.0, "math": 1.0})
    assert policy.weights(0, DOMAINS) == pytest.approx({"books": 0.5, "code": 0.25, "math": 0.25})
    assert policy.weights(1, DOMAINS, {"books": 0.0, "code": 3.0, "math": 0.0}) == pytest.approx(
        {"books": 0.5, "code": 0.25, "math": 0.25}
    )
    assert policy.loss_weights()["code"] > 0.8


def test_resample_draws_by_alpha_and_leaves_the_loss_alone():
    policy = DoReMi(mode="resample")
    sampled = policy.weights(1, DOMAINS, {"books": 0.0, "code": 3.0, "math": 0.0})
    assert policy.loss_weights() is None
    assert sampled == pytest.approx(policy.alpha) and sampled["code"] > 0.8


def test_sampling_that_names_unknown_or_misses_domains_is_refused_naming_them():
    with pytest.raises(
        SproutError,
        match=r"names domains \['poetry'\] that are not training domains.*no weight to training domains \['math'\]",
    ):
        DoReMi(sampling={"books": 1.0, "code": 1.0, "poetry": 1.0}).weights(0, DOMAINS)
    with pytest.raises(SproutError, match="only applies to mode: reweight"):
        DoReMi(mode="resample", sampling={"books": 1.0, "code": 1.0, "math": 1.0})


def test_one_update_by_hand():
    policy = DoReMi(eta=0.5, smoothing=0.1)
    excess = {"books": 0.2, "code": 1.0, "math": 0.0}
    got = update(policy, 10, excess)
    # softmax(log(1/3) + 0.5 * lambda) = exp(0.5 * lambda) / sum, then 0.9 * that + 0.1 / 3
    z = sum(math.exp(0.5 * v) for v in excess.values())
    want = {d: 0.9 * math.exp(0.5 * v) / z + 0.1 / 3 for d, v in excess.items()}
    assert got == pytest.approx(want, abs=1e-12)
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-12)


def test_weights_move_towards_the_domain_with_larger_excess_loss():
    policy = DoReMi(eta=1.0, smoothing=1e-3)
    history = [update(policy, 0)["math"]]
    for step in range(10, 110, 10):
        history.append(update(policy, step, {"books": 0.1, "code": 0.1, "math": 0.6})["math"])
    assert all(b > a for a, b in zip(history, history[1:]))
    final = update(policy, 110)
    assert final["math"] > 0.95 and final["books"] == pytest.approx(final["code"])
    # the time average trails the current weights but leans the same way
    assert 1 / 3 < policy.average["math"] < final["math"]


def test_smoothing_keeps_every_domain_above_its_floor():
    policy = DoReMi(eta=50.0, smoothing=0.03)
    for step in range(1, 20):
        w = update(policy, step, {"books": 5.0, "code": 0.0, "math": 0.0})
    assert min(w.values()) >= 0.03 / 3 - 1e-12
    assert w["code"] == pytest.approx(0.01, abs=1e-9)


def test_a_domain_missing_from_feedback_keeps_its_last_excess():
    a, b = DoReMi(), DoReMi()
    a.weights(1, DOMAINS, {"books": 0.5, "code": 0.2, "math": 0.1})
    b.weights(1, DOMAINS, {"books": 0.5, "code": 0.2, "math": 0.1})
    assert update(a, 2, {"books": 0.3, "code": 0.4}) == update(b, 2, {"books": 0.3, "code": 0.4, "math": 0.1})


def test_state_dict_round_trip_continues_identically():
    feedback = [
        {"books": 0.3, "code": 0.9, "math": 0.1},
        {"books": 0.5, "code": 0.2, "math": 0.4},
        {"books": 0.1, "code": 0.1, "math": 0.7},
    ]
    uninterrupted = DoReMi(eta=2.0)
    for i, f in enumerate(feedback):
        uninterrupted.weights(i, DOMAINS, f)
    first = DoReMi(eta=2.0)
    first.weights(0, DOMAINS, feedback[0])
    resumed = DoReMi(eta=2.0)
    resumed.load_state_dict(first.state_dict())
    for i, f in enumerate(feedback[1:], start=1):
        resumed.weights(i, DOMAINS, f)
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_report_is_a_fixed_mixture_of_the_time_average():
    policy = DoReMi()
    policy.weights(1, DOMAINS, {"books": 0.1, "code": 0.8, "math": 0.3})
    policy.weights(2, DOMAINS, {"books": 0.2, "code": 0.5, "math": 0.3})
    snippet = yaml.safe_load(policy.report().split("\n", 1)[1])
    mixture = snippet["data"]["mixture"]
    assert mixture["class_path"] == "fixed"
    weights = mixture["init_args"]["weights"]
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-12)
    assert weights == pytest.approx(policy.average, abs=1e-4)
    assert Fixed(**mixture["init_args"]).weights(0, DOMAINS) == pytest.approx(policy.average, abs=1e-4)


def test_changed_domains_and_bad_feedback_are_clear_errors():
    policy = DoReMi()
    policy.weights(0, DOMAINS)
    with pytest.raises(SproutError, match="data.domains"):
        policy.weights(1, {"books": DOMAINS["books"]})
    with pytest.raises(SproutError, match="non-finite"):
        policy.weights(1, DOMAINS, {"books": float("nan"), "code": 0.1, "math": 0.1})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"update_every": 0}, "update_every"),
        ({"eta": -1.0}, "eta"),
        ({"smoothing": 1.5}, "smoothing"),
        ({"mode": "mix"}, "mode"),
        ({"sampling": {"books": -1.0}}, "sampling"),
    ],
)
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(SproutError, match=f"data.mixture.init_args.{field}"):
        DoReMi(**kwargs)


# Two ranks' token losses l = theta * c and weights w (domain factors differ per rank), [1, 3] each.
RANK_C = torch.tensor([[[1.0, 2.0, 3.0]], [[4.0, 5.0, 6.0]]])
RANK_W = torch.tensor([[[0.1, 0.1, 0.2]], [[0.5, 0.9, 0.9]]])


def _normaliser_worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        grads = []
        for across in (True, False):
            theta = torch.ones((), requires_grad=True)
            objective(theta * RANK_C[rank], RANK_W[rank], across_ranks=across).backward()
            grad = theta.grad.clone()
            dist.all_reduce(grad)  # DDP: the ranks' gradients averaged
            grads.append(grad / world)
        if rank == 0:
            torch.save(torch.stack(grads), out_file)
    finally:
        dist.destroy_process_group()


def test_normaliser_is_all_reduced_over_ranks_as_the_official_trainer(tmp_path):
    """doremi/trainer.py all-reduces Σw and divides by the world size; with DDP's gradient mean
    the step's gradient is that of Σ_all w·l / Σ_all w. Each rank's own Σw gives the mean of the
    ranks' weighted means, which is not the same when the ranks' Σw differ."""
    mp.spawn(_normaliser_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "g.pt")), nprocs=2, join=True)
    across, per_rank = torch.load(tmp_path / "g.pt")
    global_mean = float((RANK_W * RANK_C).sum() / RANK_W.sum())  # d/dtheta of Σ_all w·theta·c / Σ_all w
    mean_of_means = float(sum((RANK_W[r] * RANK_C[r]).sum() / RANK_W[r].sum() for r in range(2)) / 2)
    assert float(across) == pytest.approx(global_mean, rel=1e-6)
    assert float(per_rank) == pytest.approx(mean_of_means, rel=1e-6)
    assert abs(global_mean - mean_of_means) > 0.1
