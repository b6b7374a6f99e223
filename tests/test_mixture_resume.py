"""Mixtures end to end on data made by ``app/data/prepare.py`` (the ``tiny_data`` fixture): entropy weights from the
statistics in ``meta.json``, and a dynamic (doremi) mixture whose weights, batches and model
resume from a checkpoint exactly as if training had not stopped."""

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sprout.bimix import BiMixLaw, write_fit
from sprout.callbacks import MixtureFeedback
from sprout.checkpoint.weights import save_model
from sprout.commands.fit_bimix import recipe_snippet
from sprout.data.datamodule import SproutDataModule
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.lightning_cli import SproutCLI
from sprout.model import Llama, LlamaConfig
from sprout.module import SproutModule
from sprout.plugins.mixtures.bimix import BiMixMixture
from sprout.plugins.mixtures.doremi import DoReMi
from sprout.plugins.mixtures.entropy import EntropyMixture
from sprout.plugins.mixtures.static import Fixed
from sprout.protocols import DomainStats, TokenSelector
from sprout.schedule import WarmupCosine

SEQ = 32
STEPS, RESUME_AT, UPDATE_EVERY = 12, 5, 3  # resume between two updates: half a feedback window is in the checkpoint
ETA = 50.0  # DoReMi step size: at 5 the weights moved only 1.5e-4 in 12 steps on the tiny data


def vocab(data: Path) -> int:
    return Tokenizer.load(data / "tokenizer.json").vocab_size


@pytest.mark.parametrize(
    "measure, key", [("conditional", "conditional_entropy"), ("joint", "joint_entropy"), ("shannon", "unigram_entropy")]
)
def test_entropy_mixture_from_prepared_stats(tiny_data, measure, key):
    dm = SproutDataModule(str(tiny_data), mixture=EntropyMixture(measure), seq_len=SEQ, batch_size=4)
    dm.setup("fit")
    entropy = {d: json.loads((tiny_data / d / "meta.json").read_text())["stats"][key] for d in ("code", "text")}
    total = sum(math.exp(h) for h in entropy.values())
    want = {d: math.exp(h) / total for d, h in entropy.items()}
    assert abs(want["code"] - want["text"]) > 1e-3  # the two domains really differ
    assert dm.mixture_weights == pytest.approx(want, abs=1e-12)
    dm.train_dataloader()
    assert dm.sampler.weights == pytest.approx([want[d] for d in dm.domains], abs=1e-12)


class Recorder(L.Callback):
    """Per step: the batch's (domain, block) keys; after the step, the policy's weights and the
    sampler's (those of the last batch drawn, which the monitor logs as ``mixture/weight/*``)."""

    def __init__(self) -> None:
        self.batches: dict[int, list] = {}
        self.policy: dict[int, dict[str, float]] = {}
        self.weights: dict[int, dict[str, float]] = {}
        self.outputs: dict[int, dict] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches[trainer.global_step] = list(zip(batch["domain"].tolist(), batch["block"].tolist()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.policy[trainer.global_step] = dict(trainer.datamodule.mixture.alpha)
        self.weights[trainer.global_step] = trainer.datamodule.mixture_weights
        self.outputs[trainer.global_step] = {
            **{k: v.detach().clone() for k, v in outputs.items()},
            "domain": batch["domain"].clone(),
            "targets": batch["targets"].clone(),
        }


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> Path:
    """A frozen reference the trained model starts below and soon overtakes, unevenly by domain."""
    torch.manual_seed(123)
    model = Llama(LlamaConfig.from_name("micro", vocab_size=vocab(tiny_data), block_size=SEQ))
    model.init_weights()
    return save_model(
        model,
        tmp_path_factory.mktemp("ref") / "reference.ckpt",
        {"tokenizer": Tokenizer.load(tiny_data / "tokenizer.json").identity},
    )


class FirstHalf(TokenSelector):
    """Keeps the first half of every sequence: a selector whose weights DoReMi's must multiply."""

    def token_weights(self, token_loss, batch):
        weights = torch.zeros_like(token_loss)
        weights[:, : token_loss.size(1) // 2] = 1.0
        return weights


def fit(
    tiny_data, reference, ckpt_dir, max_steps, ckpt_path=None, mode="reweight", update_every=UPDATE_EVERY, selector=None
):
    L.seed_everything(0)
    dm = SproutDataModule(
        str(tiny_data), mixture=DoReMi(mode=mode, update_every=update_every, eta=ETA), seq_len=SEQ, batch_size=4
    )
    module = SproutModule(
        arch="micro",
        arch_overrides={"vocab_size": vocab(tiny_data), "block_size": SEQ},
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        schedule=WarmupCosine(warmup_steps=2, min_lr=3e-4, max_steps=STEPS),
        reference=str(reference),
        selector=selector,
    )
    recorder = Recorder()
    checkpoints = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="at{step:03d}",
        auto_insert_metric_name=False,
        every_n_train_steps=RESUME_AT,
        save_top_k=-1,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[MixtureFeedback(), recorder, checkpoints],
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return recorder, dm.mixture, module


@pytest.mark.parametrize("mode", ["reweight", "resample"])
def test_dynamic_mixture_resumes_exactly(tiny_data, reference, tmp_path, mode):
    whole, whole_policy, whole_module = fit(tiny_data, reference, tmp_path / "a", STEPS, mode=mode)
    # the feedback path is live: the policy's weights change at every update step and only there
    changes = [s for s in range(1, STEPS + 1) if whole.policy[s] != whole.policy.get(s - 1, {"code": 0.5, "text": 0.5})]
    assert changes == list(range(UPDATE_EVERY, STEPS + 1, UPDATE_EVERY))
    assert abs(whole.policy[STEPS]["code"] - 0.5) > 0.01
    # resample draws batches by alpha; reweight keeps drawing uniformly
    assert (abs(whole.weights[STEPS]["code"] - 0.5) > 0.01) == (mode == "resample")
    assert whole_policy.updates == STEPS // UPDATE_EVERY

    ckpt = tmp_path / "a" / f"at{RESUME_AT:03d}.ckpt"
    resumed, resumed_policy, resumed_module = fit(
        tiny_data, reference, tmp_path / "b", STEPS, ckpt_path=ckpt, mode=mode
    )
    assert sorted(resumed.batches) == list(range(RESUME_AT, STEPS))
    assert resumed.batches == {s: whole.batches[s] for s in resumed.batches}
    assert resumed.policy == {s: whole.policy[s] for s in resumed.policy}
    assert resumed.weights == {s: whole.weights[s] for s in resumed.weights}
    assert resumed_policy.state_dict() == whole_policy.state_dict()
    for (name, a), b in zip(whole_module.state_dict().items(), resumed_module.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("selector", [None, FirstHalf()], ids=["all", "first-half"])
def test_reweighted_loss_of_two_steps_by_hand(tiny_data, reference, tmp_path, selector):
    """Algorithm 1 in a real run: step t's excess losses (of every token) update alpha first,
    then the loss is sum(w * alpha * token loss) / sum(w * alpha), w the selector's weights
    (the official trainer's normaliser when every token counts)."""
    run, policy, _ = fit(tiny_data, reference, tmp_path, 2, update_every=1, selector=selector)
    alpha, last = {"code": 0.5, "text": 0.5}, {"code": 0.0, "text": 0.0}
    for step in (1, 2):
        out = run.outputs[step]
        valid = out["targets"] != -100
        excess = (out["token_loss"].double() - out["ref_loss"].double()).clamp_min(0)
        names = ["code", "text"]
        lam = {
            d: float(excess[out["domain"] == i][valid[out["domain"] == i]].mean())
            for i, d in enumerate(names)
            if (out["domain"] == i).any()
        }
        lam = last = {d: lam.get(d, last[d]) for d in names}  # a domain absent from the batch keeps its last excess
        z = sum(alpha[d] * math.exp(ETA * lam[d]) for d in names)
        alpha = {d: (1 - 1e-3) * alpha[d] * math.exp(ETA * lam[d]) / z + 1e-3 / 2 for d in names}
        assert run.policy[step] == pytest.approx(alpha, abs=1e-9)
        w = torch.tensor([alpha[names[i]] for i in out["domain"].tolist()], dtype=torch.float64)[:, None] * valid
        if selector is not None:
            w[:, SEQ // 2 :] = 0
        want = (w * out["token_loss"].double()).sum() / w.sum()
        assert float(out["loss"]) == pytest.approx(float(want), rel=1e-5)


def test_doremi_without_a_reference_is_a_clear_error(tiny_data):
    dm = SproutDataModule(str(tiny_data), mixture=DoReMi(), seq_len=SEQ, batch_size=4)
    module = SproutModule(arch="micro", arch_overrides={"vocab_size": vocab(tiny_data), "block_size": SEQ})
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    with pytest.raises(SproutError, match="mixture DoReMi needs reference losses: set model.reference"):
        trainer.fit(module, dm)


def test_printed_mixtures_are_recipes_the_cli_accepts(tiny_data, tmp_path):
    """What sprout fit-bimix and doremi print for the user to paste must parse and build."""
    write_fit(
        tmp_path / "fit.json", {"code": BiMixLaw(3.0, 0.6, 0.4, 0.2, 0.3), "text": BiMixLaw(4.0, 0.5, 0.5, 0.1, 0.4)}
    )
    snippet = recipe_snippet({"code": 0.25, "text": 0.75}, str(tmp_path / "fit.json"), 1000, 0.05, 1.0)
    fixed, law = snippet.split("\n# or ")  # two alternatives, each a recipe fragment
    law = "# or " + law
    doremi = DoReMi()
    doremi.weights(3, {d: DomainStats(d, 100, vocab_size=256) for d in ("code", "text")}, {"code": 0.4, "text": 0.1})
    averaged = doremi.report().split("\n", 1)[1]
    for text, cls, weights in (
        (fixed, Fixed, {"code": 0.25, "text": 0.75}),
        (law, BiMixMixture, None),
        (averaged, Fixed, doremi.average),
    ):
        (tmp_path / "mixture.yaml").write_text(text)
        args = [
            "--data.data_dir",
            str(tiny_data),
            "--trainer.logger",
            "false",
            "--config",
            str(tmp_path / "mixture.yaml"),
        ]
        mixture = SproutCLI(SproutModule, SproutDataModule, args=args, run=False).datamodule.mixture
        assert isinstance(mixture, cls)
        if weights is not None:
            assert mixture.fixed == pytest.approx(weights, abs=1e-4)
