import types

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.flop_counter import FlopCounterMode

import sprout.callbacks.monitor as monitor
import sprout.flops  # noqa: F401  (registers the CPU attention formulas)
from sprout.callbacks import ThroughputMonitor
from sprout.callbacks.growth import Growth
from sprout.model import Llama, LlamaConfig, flops_per_token
from sprout.module import SproutModule
from sprout.parallel import Parallelism, parallelize
from sprout.plugins.growth.direct import Gstack

VOCAB, SEQ, BATCH = 256, 32, 2
PEAK = 1e9
TICK = 0.25  # seconds the fake clock advances per reading: one reading per batch


def test_counted_training_flops_include_cpu_attention():
    config = LlamaConfig.from_name("micro", block_size=64, vocab_size=512)
    model = Llama(config)
    model.init_weights()
    x = torch.randint(0, 512, (2, 64))
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    counted = counter.get_total_flops()
    closed_form = flops_per_token(config, 64) * x.numel()
    attention = counter.get_flop_counts()["Global"].get(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, 0)
    assert attention > 0
    assert abs(counted - closed_form) / closed_form < 0.05


class Recorder(Logger):
    """Keeps every logged scalar in memory: ``{tag: [(step, value), ...]}``."""

    name = "recorder"
    version = 0

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, list[tuple[int, float]]] = {}

    def log_metrics(self, metrics, step=None):
        for tag, value in metrics.items():
            self.values.setdefault(tag, []).append((step, float(value)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _batches(steps: int) -> list[dict]:
    return [
        {"input_ids": torch.randint(0, VOCAB, (BATCH, SEQ)), "targets": torch.randint(0, VOCAB, (BATCH, SEQ))}
        for _ in range(steps)
    ]


def _fit(module, batches, callbacks) -> dict[str, list[tuple[int, float]]]:
    """Fit ``module`` on ``batches`` (one step each) and return what it logged, every step."""
    logger = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return logger.values


def _run(monkeypatch, callbacks, checkpointing, steps=4):
    """A tiny real fit on random tokens whose clock advances exactly ``TICK`` per batch."""
    readings = iter(TICK * i for i in range(1000))
    monkeypatch.setattr(monitor, "time", types.SimpleNamespace(perf_counter=lambda: next(readings)))
    L.seed_everything(0)
    batches = _batches(steps)
    module = SproutModule(
        arch="micro",
        arch_overrides={"vocab_size": VOCAB, "block_size": SEQ},
        parallel=Parallelism(activation_checkpointing=checkpointing),
    )
    return _fit(module, batches, callbacks)


def _utilisation(flops_per_token: float) -> float:
    return flops_per_token * (BATCH * SEQ / TICK) / PEAK


def _counted_per_token(config: LlamaConfig, checkpointing: bool) -> float:
    """What the device runs per token in the module's training step, counted on a fresh model."""
    module = SproutModule(parallel=Parallelism(activation_checkpointing=checkpointing))
    module.model = parallelize(Llama(config), module.parallel)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    with FlopCounterMode(display=False) as counter:
        module._token_losses({"input_ids": tokens, "targets": tokens}).sum().backward()
    return counter.get_total_flops() / tokens.numel()


@pytest.mark.parametrize("checkpointing", [True, False])
def test_mfu_counts_model_flops_and_hfu_counts_recomputation(monkeypatch, checkpointing):
    """MFU is the analytic model FLOPs at the run's tokens/s, also after growth (the growth
    callback, listed first, swaps the model before the monitor sees the batch end); HFU is
    what the device ran, recomputation included, and more than MFU."""
    growth = Growth(operator=Gstack(), target_overrides={"n_layer": 4}, at_step=2, save_stage=False)
    values = _run(monkeypatch, [growth, ThroughputMonitor(peak_flops=PEAK, log_every=1)], checkpointing)
    small = LlamaConfig.from_name("micro", vocab_size=VOCAB, block_size=SEQ)
    grown = small.replace(n_layer=4)
    # Batches 0 and 2 are counted (timing restarts after them), so batches 1 and 3 log
    # (Lightning repeats the last value at batch 2).
    mfu, hfu = dict(values["perf/mfu"]), dict(values["perf/hfu"])
    assert 0 not in mfu and dict(values["perf/tokens_per_s"])[3] == BATCH * SEQ / TICK
    for step, config in ((1, small), (3, grown)):
        assert mfu[step] == pytest.approx(_utilisation(flops_per_token(config, SEQ)), rel=1e-6)
        assert hfu[step] == pytest.approx(_utilisation(_counted_per_token(config, checkpointing)), rel=1e-6)
        assert hfu[step] > mfu[step] * (1.2 if checkpointing else 1.0)
    flops_seen = [v for _, v in values["perf/flops_seen"]]
    model_flops = [flops_per_token(c, SEQ) * BATCH * SEQ for c in (small, small, grown, grown)]
    assert flops_seen == pytest.approx([sum(model_flops[: i + 1]) for i in range(4)], rel=1e-6)


@pytest.mark.parametrize("offline", [False, True])
def test_flops_seen_counts_an_online_reference_forward(monkeypatch, tmp_path, offline):
    """Rho-1 against a model.reference pays one forward of the reference per batch: 2 FLOPs per
    reference weight per token (plus its attention) join perf/flops_seen. Batches that carry
    offline scores (``ref_loss``) run no reference and add nothing."""
    from sprout.checkpoint.weights import save_model
    from sprout.model import forward_flops_per_token
    from sprout.plugins.selectors.rho1 import Rho1

    ref_config = LlamaConfig.from_name("micro", vocab_size=VOCAB, block_size=SEQ, n_layer=1)
    path = save_model(Llama(ref_config), tmp_path / "reference.ckpt")
    monkeypatch.setattr(monitor, "time", types.SimpleNamespace(perf_counter=lambda: 0.0))
    L.seed_everything(0)
    steps = 3
    batches = _batches(steps)
    if offline:
        batches = [{**b, "ref_loss": torch.rand(BATCH, SEQ)} for b in batches]
    module = SproutModule(
        arch="micro", arch_overrides={"vocab_size": VOCAB, "block_size": SEQ}, selector=Rho1(k=50), reference=str(path)
    )
    logged = _fit(module, batches, [ThroughputMonitor(peak_flops=PEAK)])
    trained = flops_per_token(LlamaConfig.from_name("micro", vocab_size=VOCAB, block_size=SEQ), SEQ)
    reference = 0 if offline else forward_flops_per_token(ref_config, SEQ)
    assert [v for _, v in logged["perf/flops_seen"]] == pytest.approx(
        [(trained + reference) * BATCH * SEQ * (i + 1) for i in range(steps)]
    )
