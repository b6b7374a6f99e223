"""Token selectors: exact top-k on hand-made losses, the objective over kept tokens, cross-rank agreement."""

import math
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sprout import registry
from sprout.errors import SproutError
from sprout.loss import IGNORE_INDEX, token_losses
from sprout.plugins.selectors.loss_topk import LossTopK
from sprout.plugins.selectors.random_tokens import RandomTokens
from sprout.plugins.selectors.rho1 import Rho1
from sprout.plugins.selectors.topk import top_k_mask
from sprout.protocols import TokenSelector


def batch_of(loss, ref=None, valid=None, batch_no=0):
    loss = torch.as_tensor(loss, dtype=torch.float32)
    batch = {
        "valid": torch.ones_like(loss, dtype=torch.bool) if valid is None else torch.as_tensor(valid),
        "batch_no": torch.tensor([batch_no]),
    }
    if ref is not None:
        batch["ref_loss"] = torch.as_tensor(ref, dtype=torch.float32)
    return loss, batch


def kept(mask):
    return mask.nonzero().tolist()


def test_rho1_keeps_top_excess_loss_exactly():
    loss, batch = batch_of([[3.0, 2.0, 5.0, 1.0, 4.0]], ref=[[0.0, 1.5, 4.5, 0.0, 1.0]])
    # excess = [3.0, 0.5, 0.5, 1.0, 3.0]; 60% of 5 = 3 tokens
    w = Rho1(k=60).token_weights(loss, batch)
    assert w.tolist() == [[1.0, 0.0, 0.0, 1.0, 1.0]]
    # the model's own loss picks others
    assert LossTopK(k=60).token_weights(loss, batch).tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0]]


def test_ties_are_broken_by_position_and_count_is_exact():
    scores = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    valid = torch.ones_like(scores, dtype=torch.bool)
    assert kept(top_k_mask(scores, valid, 40)) == [[0, 0], [0, 1]]
    assert kept(top_k_mask(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool), 50)) == [[0, 0], [0, 1], [0, 2]]
    # 60% of 10 is 6, not 7 (10 * 60 / 100 = 6.000000000000001 in floating point)
    assert top_k_mask(torch.rand(1, 10), torch.ones(1, 10, dtype=torch.bool), 60).sum() == 6


def test_k_edges():
    scores = torch.randn(3, 7)
    valid = torch.rand(3, 7) > 0.3
    assert torch.equal(top_k_mask(scores, valid, 100), valid)
    assert top_k_mask(scores, valid, 1e-6).sum() == 1  # any k > 0 keeps at least one token
    assert top_k_mask(scores, torch.zeros_like(valid), 50).sum() == 0
    for bad in (0, -5, 100.5, float("nan")):
        with pytest.raises(SproutError, match=r"k=.* outside \(0, 100\].*model.selector.init_args.k"):
            Rho1(k=bad)
    with pytest.raises(SproutError, match="scope"):
        LossTopK(scope="node")


def test_ignored_tokens_never_count():
    loss, batch = batch_of(
        [[9.0, 1.0, 2.0, 9.0], [3.0, 9.0, 0.5, 0.2]],
        ref=[[0.0] * 4] * 2,
        valid=[[False, True, True, False], [True, False, True, True]],
    )
    w = Rho1(k=50).token_weights(loss, batch)
    # 5 valid tokens -> ceil(2.5) = 3 kept, never the 9.0s at ignored positions
    assert kept(w) == [[0, 1], [0, 2], [1, 0]]
    seq = Rho1(k=50, scope="sequence").token_weights(loss, batch)
    assert kept(seq) == [[0, 2], [1, 0], [1, 2]]  # each row keeps ceil(50% of its valid tokens)


def test_random_is_reproducible_per_batch_and_keeps_k_percent():
    loss, batch = batch_of(torch.zeros(4, 25))
    sel = RandomTokens(k=30, seed=3)
    a, b = sel.token_weights(loss, batch), sel.token_weights(loss, batch)
    assert torch.equal(a, b) and a.sum() == 30
    _, next_batch = batch_of(torch.zeros(4, 25), batch_no=1)
    assert not torch.equal(a, sel.token_weights(loss, next_batch))


def test_metrics_report_excess_of_kept_and_dropped():
    loss, batch = batch_of([[3.0, 2.0, 1.0, 0.0]], ref=[[0.0, 0.0, 0.0, 0.0]])
    sel = Rho1(k=50)
    sel.token_weights(loss, batch)
    m = sel.metrics()
    assert m["kept_excess"].item() == pytest.approx(2.5) and m["dropped_excess"].item() == pytest.approx(0.5)
    sel100 = Rho1(k=100)
    sel100.token_weights(loss, batch)
    assert math.isnan(sel100.metrics()["dropped_excess"].item())


def test_registered_by_short_name():
    assert {"all", "rho1", "loss_topk", "random"} <= set(registry.names("selector"))
    assert isinstance(registry.create("selector", "rho1", k=10), Rho1)


def test_objective_is_mean_over_kept_tokens():
    from sprout.module import SproutModule  # here, so the gloo workers below need not import Lightning

    torch.manual_seed(0)
    module = SproutModule(arch="micro", arch_overrides={"vocab_size": 64, "block_size": 16}, selector=LossTopK(k=25))
    module.configure_model()
    input_ids = torch.randint(0, 64, (2, 16))
    targets = torch.randint(0, 64, (2, 16))
    targets[0, :5] = IGNORE_INDEX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        out = module.training_step({"input_ids": input_ids, "targets": targets}, 0)
    objective = out["loss"] if isinstance(out, dict) else out
    with torch.no_grad():
        loss = token_losses(module.model(input_ids), targets)
    valid = targets != IGNORE_INDEX
    n_keep = math.ceil(valid.sum().item() * 0.25)
    expected = loss[valid].topk(n_keep).values.mean()
    assert objective.item() == pytest.approx(expected.item(), rel=1e-5)


# -- global scope: two gloo processes agree on one threshold ------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_inputs(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    scores = (torch.randn(3, 11, generator=g) + rank).round(decimals=1)  # rank 1 scores higher; rounding makes ties
    valid = torch.rand(3, 11, generator=g) > 0.2 + 0.3 * rank  # ranks hold different numbers of valid tokens
    return scores, valid


def _global_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        scores, valid = _rank_inputs(rank)
        loss, batch = batch_of(scores, ref=torch.zeros_like(scores), valid=valid)
        weights = Rho1(k=37, scope="global").token_weights(loss, batch)
        torch.save(weights, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_global_scope_agrees_across_two_gloo_processes(tmp_path):
    mp.spawn(_global_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    inputs = [_rank_inputs(r) for r in range(2)]
    # The same selection as one process ranking both micro-batches together.
    together = top_k_mask(torch.cat([s for s, _ in inputs]), torch.cat([v for _, v in inputs]), 37)
    assert torch.equal(torch.cat(got).bool(), together)
    n_valid = sum(v.sum().item() for _, v in inputs)
    assert sum(w.sum().item() for w in got) == math.ceil(n_valid * 0.37 * (1 - 1e-9))
    # ... and not what each rank would keep on its own
    alone = [top_k_mask(s, v, 37) for s, v in inputs]
    assert not all(torch.equal(a, g.bool()) for a, g in zip(alone, got))


class _Soft(TokenSelector):
    """Fixed soft weights that sum to well under 1 (as DoReMi's or a third party's may)."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.fixed = weights

    def token_weights(self, token_loss, batch):
        return self.fixed


def _step(selector):
    from sprout.module import SproutModule

    torch.manual_seed(0)
    module = SproutModule(arch="micro", arch_overrides={"vocab_size": 64, "block_size": 16}, selector=selector)
    module.configure_model()
    input_ids, targets = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    targets[1, :3] = IGNORE_INDEX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        objective = module.training_step({"input_ids": input_ids, "targets": targets}, 0)["loss"]
    module.model.zero_grad()
    objective.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.model.parameters()]
    return module, input_ids, targets, objective, grads


def test_soft_weights_give_exactly_the_weighted_mean_and_its_gradient():
    """Σ w·ℓ / Σ w over valid tokens, even when Σ w < 1 (no clamp at 1 shrinking loss and gradient)."""
    w = torch.rand(2, 16, generator=torch.Generator().manual_seed(1)) * 0.01  # Σ w ≈ 0.16
    module, input_ids, targets, objective, grads = _step(_Soft(w))
    valid = targets != IGNORE_INDEX
    wv = w * valid
    assert wv.sum() < 1
    module.model.zero_grad()
    expected = (wv * token_losses(module.model(input_ids), targets)).sum() / wv.sum()
    expected.backward()
    assert objective.item() == pytest.approx(expected.item(), rel=1e-6)
    for got, want in zip(grads, (p.grad for p in module.model.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    # scaling every weight leaves loss and gradient unchanged: only the weights' proportions matter
    _, _, _, scaled, scaled_grads = _step(_Soft(w * 1000))
    assert scaled.item() == pytest.approx(objective.item(), rel=1e-5)
    for a, b in zip(scaled_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_all_zero_weights_give_zero_loss_and_no_gradient():
    _, _, _, objective, grads = _step(_Soft(torch.zeros(2, 16)))
    assert objective.item() == 0.0 and torch.isfinite(objective)
    assert all(torch.count_nonzero(g) == 0 for g in grads)
