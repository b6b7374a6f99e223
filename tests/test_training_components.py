"""The pieces the training step is made of, each alone: objective, schedule segments, clipping,
the growth plan, the token/FLOP counter and the experiments' shared settings."""

import math

import pytest
import torch
import yaml

from sprout.counter import Counter
from sprout.errors import SproutError
from sprout.growth.plan import GrowthPlan
from sprout.model import LlamaConfig, flops_per_token, forward_flops_per_token
from sprout.objective import kept_share, objective, token_weights
from sprout.optim import clip_gradients, clips_unscaled
from sprout.plugins.growth.direct import Gstack
from sprout.schedule import Schedule, WarmupCosine


def test_objective_is_the_weighted_mean_with_domain_factors_per_row():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    selected = torch.tensor([[1.0, 0.5, 1.0], [0.0, 1.0, 1.0]])
    weights = token_weights(selected, valid, torch.tensor([1, 0]), torch.tensor([2.0, 0.25]))
    assert weights.tolist() == [[0.25, 0.125, 0.0], [0.0, 2.0, 2.0]]
    want = (0.25 * 1 + 0.125 * 2 + 2 * 5 + 2 * 6) / (0.25 + 0.125 + 2 + 2)
    assert objective(loss, weights).item() == pytest.approx(want)
    assert objective(loss, torch.zeros_like(loss)).item() == 0.0  # nothing counts: 0, not 0/0
    assert kept_share(weights, torch.tensor([1, 0]), 2).tolist() == pytest.approx([0.5, 0.5])


def test_schedule_segments_restart_continue_and_survive_a_checkpoint():
    shape = WarmupCosine(warmup_steps=2, min_lr=1e-4)
    schedule = Schedule(shape)
    before = schedule.factor(5, 1e-3, 20)
    schedule.add(10, restart=True, shape=WarmupCosine(warmup_steps=4, min_lr=1e-5), peak_lr=5e-4)
    assert schedule.factor(5, 1e-3, 20) == before  # an earlier step keeps its segment
    assert schedule.factor(11, 1e-3, 20) == pytest.approx(2 / 4)  # warm-up again, one step in
    assert schedule.factor(20, 1e-3, 20) == pytest.approx(1e-5 / 5e-4)  # the stage's own floor at the end
    schedule.add(12, restart=False)  # continued: same curve from here on
    assert schedule.factor(15, 1e-3, 20) == schedule.segments[1].shape.factor(5, 5e-4, 10)
    resumed = Schedule(shape)
    resumed.load_state_dict(schedule.state_dict())
    assert [resumed.factor(s, 1e-3, 20) for s in range(12, 21)] == [schedule.factor(s, 1e-3, 20) for s in range(12, 21)]
    with pytest.raises(SproutError, match="needs a length"):
        shape.check(1e-3, -1)


def test_clipping_where_lightning_refuses_a_fused_optimizer():
    param = torch.nn.Parameter(torch.zeros(4))
    fused = torch.optim.AdamW([param], fused=True)
    assert clips_unscaled(object(), fused)  # no grad scaler: Sprout clips
    assert not clips_unscaled(type("AMP", (), {"scaler": object()})(), fused)  # fp16's scaler: Lightning's check
    assert not clips_unscaled(object(), torch.optim.AdamW([param]))
    param.grad = torch.tensor([3.0, -4.0, 0.0, 0.0])
    clip_gradients(fused, 1.0, "value")
    assert param.grad.tolist() == [1.0, -1.0, 0.0, 0.0]
    clip_gradients(fused, 0.5)  # by norm (default)
    assert torch.linalg.vector_norm(param.grad).item() == pytest.approx(0.5, rel=1e-5)


def test_growth_plan_is_checked_when_made_and_gives_the_grown_shape():
    with pytest.raises(SproutError, match="must not be set with it"):
        GrowthPlan(Gstack(), target_overrides={"n_layer": 4}, at_step=3, source="small.ckpt")
    with pytest.raises(SproutError, match="growth.at_step"):
        GrowthPlan(Gstack(), target_overrides={"n_layer": 4}, at_step=-1)
    plan = GrowthPlan(Gstack(), target_overrides={"n_layer": 4}, at_step=3, stage2_lr=3e-4, stage2_min_lr=3e-5)
    source = LlamaConfig.from_name("micro")
    assert plan.target_config(source) == source.replace(n_layer=4)
    assert plan.stage2_options == {"stage2_lr": 3e-4, "stage2_min_lr": 3e-5}
    assert plan.stage2_schedule(WarmupCosine(warmup_steps=7), 3) == WarmupCosine(warmup_steps=7, min_lr=3e-5)


def test_counter_counts_model_and_reference_flops_and_reads_older_checkpoints():
    config, reference = LlamaConfig.from_name("micro"), LlamaConfig.from_name("micro", n_layer=1)
    counter = Counter()
    counter.count(torch.zeros(2, 16, dtype=torch.long), config, None, world_size=2)
    counter.count(torch.zeros(2, 16, dtype=torch.long), config, reference, world_size=2)
    per_batch = flops_per_token(config, 16) * 32
    assert counter.tokens == 128
    assert counter.flops == 2 * (2 * per_batch + forward_flops_per_token(reference, 16) * 32)
    assert Counter.stored_in({"counter": counter.state_dict()}) == {"tokens_seen": 128, "flops_seen": counter.flops}
    older = {"callbacks": {"ThroughputMonitor": {"tokens_seen": 5, "flops_seen": 7.0}}}
    assert Counter.stored_in(older) == {"tokens_seen": 5, "flops_seen": 7.0}
    assert Counter.stored_in({"sprout": {}}) is None
    counter.carry(Counter.stored_in(older))
    assert counter.tokens == 133 and math.isclose(
        counter.flops, 2 * (2 * per_batch + forward_flops_per_token(reference, 16) * 32) + 7.0
    )


def test_experiments_share_settings_as_flat_options_with_their_own_defaults(capsys):
    from tools.experiments import compose, mixtures

    for module, want in (
        (compose, {"vocab_size": 1024, "threads": 1}),
        (mixtures, {"vocab_size": 2048, "threads": None}),
    ):
        with pytest.raises(SystemExit):
            module.main(["--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        assert {k: printed[k] for k in want} == want
        assert {"work_dir", "corpus", "seq_len", "seeds"} <= set(printed)
