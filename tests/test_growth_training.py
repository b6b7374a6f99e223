"""Multi-stage training end to end: grow at a step inside one fit, resume from either stage
exactly, carry optimizer state, restart the schedule, start stage 2 from a small checkpoint,
and the shipped tiny recipe through the CLI."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sprout.callbacks.growth import Growth
from sprout.checkpoint.weights import load_model, save_model
from sprout.cli import main
from sprout.data.datamodule import SproutDataModule
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.model import Llama, LlamaConfig
from sprout.module import SproutModule
from sprout.plugins.growth.direct import DirectWidth, Gstack
from sprout.plugins.growth.learn import LearnedGrowth, LigoModel
from sprout.plugins.growth.random import RandomWidth
from sprout.plugins.mixtures.static import Uniform
from sprout.schedule import WarmupCosine

REPO = Path(__file__).resolve().parents[1]
VOCAB, SEQ = 320, 32
STEPS, GROW_AT, SAVE_EVERY, PHASE = 10, 4, 3, 3  # checkpoints at 3, 6, 9: step 6 is mid-ramp / mid-learning
LR, WARMUP = 3e-3, 2


def fit(data, ckpt_dir, growth, max_steps=STEPS, ckpt_path=None):
    L.seed_everything(0)
    dm = SproutDataModule(str(data), mixture=Uniform(), seq_len=SEQ, batch_size=4)
    module = SproutModule(
        arch="micro",
        arch_overrides={"vocab_size": VOCAB, "block_size": SEQ},
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR),
        schedule=WarmupCosine(warmup_steps=WARMUP, min_lr=3e-4),
    )
    checkpoints = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="at{step:03d}",
        auto_insert_metric_name=False,
        every_n_train_steps=SAVE_EVERY,
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
        callbacks=[growth, checkpoints],
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module, trainer


def run_cli(cwd: Path, *args: str) -> None:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        main(list(args))
    finally:
        os.chdir(old)


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    values = {}
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


def deeper(operator, **options):
    return Growth(operator=operator, target_overrides={"n_layer": 4}, at_step=GROW_AT, **options)


@pytest.mark.parametrize(
    "make_growth",
    [
        lambda: deeper(Gstack()),
        lambda: Growth(
            operator=RandomWidth(ramp_steps=PHASE),
            target_overrides={"n_embd": 128, "n_head": 8, "n_kv_head": 4, "intermediate_size": 352},
            at_step=GROW_AT,
        ),
        lambda: deeper(LearnedGrowth(learn_steps=PHASE)),
    ],
    ids=["gstack", "random_width", "learn"],
)
def test_growth_inside_one_fit_resumes_exactly_from_either_stage(tiny_data, tmp_path, make_growth):
    whole, trainer = fit(tiny_data, tmp_path / "whole", make_growth())
    growth = trainer.callbacks[0]
    assert growth.grown_at == GROW_AT and isinstance(whole.model, Llama)
    assert whole.config.n_layer * whole.config.n_embd > 2 * 64  # grown
    stage1 = tmp_path / "whole" / f"stage1-step{GROW_AT:06d}.ckpt"
    small, meta = load_model(stage1)
    assert small.config.n_layer == 2 and small.config.n_embd == 64
    mid = tmp_path / "whole" / "at006.ckpt"
    assert load_model(mid)[0].config == whole.config  # stage-2 checkpoints hold the plain grown Llama

    for start in (stage1, mid):
        resumed, _ = fit(tiny_data, tmp_path / start.stem, make_growth(), ckpt_path=start)
        assert resumed.config == whole.config
        for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
            assert torch.equal(a, b), (start.name, name)


def test_learn_resumed_mid_phase_trains_its_map_then_the_plain_model(tiny_data, tmp_path):
    _, trainer = fit(tiny_data, tmp_path / "a", deeper(LearnedGrowth(learn_steps=PHASE)), max_steps=GROW_AT + 1)
    module = trainer.lightning_module
    assert isinstance(module.model, LigoModel)  # one step into learning: only the map trains
    trainable = {id(p) for p in module.model.parameters() if p.requires_grad}
    assert {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} == trainable
    assert all(not p.requires_grad for p in module.model.source.parameters())


def test_schedule_restarts_at_growth_or_continues(tiny_data, tmp_path):
    lrs = {}
    for restart in (True, False):
        _, trainer = fit(
            tiny_data, tmp_path / str(restart), deeper(Gstack(), restart_schedule=restart), max_steps=GROW_AT + 1
        )
        lrs[restart] = trainer.optimizers[0].param_groups[0]["lr"]
    schedule = WarmupCosine(warmup_steps=WARMUP, min_lr=3e-4)
    assert lrs[True] == pytest.approx(LR * schedule.factor(1, LR, GROW_AT + 1 - GROW_AT))  # warm-up again, one step in
    assert lrs[False] == pytest.approx(LR * schedule.factor(GROW_AT + 1, LR, GROW_AT + 1))


def test_stage_two_trains_at_its_own_peak_floor_and_warm_up(tiny_data, tmp_path):
    """Gstack's official scripts: the small model at 1e-3 -> 1e-4, the grown one at 3e-4 -> 3e-5
    with a warm-up of its own; here scaled down, and the stage-2 schedule survives a resume."""
    growth = lambda: deeper(Gstack(), stage2_lr=LR / 3, stage2_min_lr=LR / 30, stage2_warmup_steps=3)  # noqa: E731
    steps = GROW_AT + 5
    module, trainer = fit(tiny_data, tmp_path / "a", growth(), max_steps=steps)
    stage2 = WarmupCosine(warmup_steps=3, min_lr=LR / 30)
    assert module.peak_lr == LR / 3 and module.schedule == stage2
    want = LR / 3 * stage2.factor(steps - GROW_AT, LR / 3, steps - GROW_AT)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(want)
    assert want == pytest.approx(LR / 30)  # the grown model decayed to its own floor
    _, during = fit(tiny_data, tmp_path / "b", growth(), max_steps=GROW_AT + 1)
    assert during.optimizers[0].param_groups[0]["lr"] == pytest.approx(
        LR / 3 * stage2.factor(1, LR / 3, 1)
    )  # its own warm-up, one step in
    resumed, again = fit(tiny_data, tmp_path / "c", growth(), max_steps=steps, ckpt_path=tmp_path / "a" / "at006.ckpt")
    assert resumed.peak_lr == LR / 3 and resumed.schedule == stage2
    assert again.optimizers[0].param_groups[0]["lr"] == pytest.approx(want)


def test_optimizer_state_carries_over_from_the_copied_layer(tiny_data, tmp_path):
    _, trainer = fit(tiny_data, tmp_path / "carry", deeper(Gstack(), fresh_optimizer=False), max_steps=GROW_AT)
    optimizer, model = trainer.optimizers[0], trainer.lightning_module.model
    state = {name: optimizer.state[p] for name, p in model.named_parameters()}
    assert int(state["layers.2.attention.wq.weight"]["step"]) == GROW_AT
    assert torch.equal(
        state["layers.2.attention.wq.weight"]["exp_avg"], state["layers.0.attention.wq.weight"]["exp_avg"]
    )
    _, fresh = fit(tiny_data, tmp_path / "fresh", deeper(Gstack()), max_steps=GROW_AT)
    assert not fresh.optimizers[0].state


def test_stage_two_from_a_small_checkpoint(tiny_data, tmp_path):
    torch.manual_seed(7)
    small = Llama(LlamaConfig.from_name("micro", vocab_size=VOCAB, block_size=SEQ))
    path = save_model(
        small, tmp_path / "small.ckpt", {"tokenizer": Tokenizer.load(tiny_data / "tokenizer.json").identity}
    )
    module, trainer = fit(
        tiny_data,
        tmp_path / "ckpt",
        Growth(
            operator=DirectWidth(),
            target_overrides={"n_embd": 128, "n_head": 8, "n_kv_head": 4, "intermediate_size": 352},
            source=str(path),
        ),
        max_steps=2,
    )
    assert trainer.callbacks[0].grown_at == 0 and module.config.n_embd == 128
    assert not (tmp_path / "ckpt" / "stage1-step000000.ckpt").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"operator": Gstack(), "target_overrides": {"n_layer": 4}}, "exactly one of growth.at_step"),
        ({"operator": Gstack(), "at_step": 3}, "growth.target_arch"),
        ({"at_step": 3}, "no growth.operator"),
        (
            {
                "operator": DirectWidth(),
                "target_overrides": {"n_embd": 128, "n_head": 8, "n_kv_head": 4},
                "at_step": 3,
                "fresh_optimizer": False,
            },
            "fresh_optimizer",
        ),
        (
            {"operator": Gstack(), "target_overrides": {"n_layer": 4, "n_embd": 128, "n_head": 8}, "at_step": 3},
            "cannot change `n_embd`",
        ),
        ({"operator": Gstack(), "target_arch": "no-such-shape", "at_step": 3}, "growth.target_arch"),
        (
            {"stage2_lr": 3e-4},
            r"growth.stage2_lr set\(s\) the learning rate of the grown model, but the recipe grows nothing",
        ),
        ({"stage2_min_lr": 3e-5, "stage2_warmup_steps": 3000}, "growth.stage2_min_lr, growth.stage2_warmup_steps"),
        (
            {"operator": Gstack(), "target_overrides": {"n_layer": 4}, "at_step": 3, "stage2_lr": -1.0},
            "growth.stage2_lr must be a positive learning rate",
        ),
        (
            {
                "operator": Gstack(),
                "target_overrides": {"n_layer": 4},
                "at_step": 3,
                "stage2_warmup_steps": 5,
                "restart_schedule": False,
            },
            "restart_schedule is false",
        ),
    ],
)
def test_bad_growth_sections_fail_before_training(tiny_data, tmp_path, options, message):
    with pytest.raises(SproutError, match=message):
        fit(tiny_data, tmp_path, Growth(**options), max_steps=1)


def test_tiny_recipe_runs_through_the_cli(tiny_data, tmp_path):
    """recipes/gstack-tiny.yaml, shortened, on the test data: both stages, a stage-1 checkpoint,
    growth/stage and more FLOPs per step after growth in TensorBoard."""
    recipe = yaml.safe_load((REPO / "recipes" / "gstack-tiny.yaml").read_text())
    run_cli(
        tmp_path,
        "fit",
        "--config",
        str(REPO / "recipes" / "gstack-tiny.yaml"),
        "--trainer.max_steps",
        "6",
        "--trainer.val_check_interval",
        "3",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--trainer.enable_progress_bar",
        "false",
        "--data.data_dir",
        str(tiny_data),
        "--data.prepare",
        "null",
        "--data.seq_len",
        str(SEQ),
        "--data.batch_size",
        "2",
        "--model.arch_overrides",
        yaml.safe_dump({**recipe["model"]["arch_overrides"], "block_size": SEQ}, default_flow_style=True).strip(),
        "--model.schedule.warmup_steps",
        "1",
        "--growth.at_step",
        "3",
        "--monitor.peak_flops",
        "1e12",
    )
    run = next((tmp_path / "runs").glob("*/version_0"))
    assert (run / "checkpoints" / "stage1-step000003.ckpt").is_file()
    grown, _ = load_model(run / "checkpoints" / "last.ckpt")
    assert grown.config.n_layer == 4 * recipe["model"]["arch_overrides"]["n_layer"]
    stage = scalars(run, "growth/stage")
    assert stage[1] == 0.0 and stage[5] == 1.0
    flops = scalars(run, "perf/flops_seen")
    assert flops[5] - flops[4] > 2 * (flops[2] - flops[1])


def test_fsdp2_grows_mid_run_and_resumes_in_the_grown_shape(tiny_data, tmp_path):
    """Two ranks over gloo: the sharded stage-1 model is gathered, grown (G_random width, masks on
    the sharded copy) and sharded again; resuming from the grown sharded checkpoint builds the
    grown shape before Lightning loads the shards."""

    def recipe(max_steps):
        config = {
            "seed_everything": 3,
            "trainer": {
                "accelerator": "cpu",
                "devices": 2,
                "strategy": {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"},
                "max_steps": max_steps,
                "limit_val_batches": 0,
                "log_every_n_steps": 1,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(tmp_path / "logs"), "name": "run"},
                },
            },
            "model": {
                "arch": "micro",
                "arch_overrides": {"vocab_size": VOCAB, "block_size": SEQ},
                "parallel": {"activation_checkpointing": True},
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": LR}},
                "schedule": {"warmup_steps": WARMUP, "min_lr": 3e-4},
            },
            "data": {"data_dir": str(tiny_data), "seq_len": SEQ, "batch_size": 2, "mixture": {"class_path": "uniform"}},
            "checkpoint": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 2},
            "monitor": {"peak_flops": 1e11},
            "growth": {
                "operator": {"class_path": "random_width", "init_args": {"ramp_steps": 4}},
                "at_step": 2,
                "target_overrides": {"n_embd": 128, "n_head": 8, "n_kv_head": 4, "intermediate_size": 352},
            },
        }
        path = tmp_path / f"recipe{max_steps}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for max_steps, extra in ((4, []), (5, ["--ckpt_path", "last"])):
        run = subprocess.run(
            [sys.executable, "-m", "sprout", "fit", "--config", str(recipe(max_steps)), *extra],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "ckpt" / "stage1-step000002.ckpt" / ".metadata").is_file()  # a sharded stage-1 checkpoint
    grown, meta = load_model(tmp_path / "ckpt" / "last.ckpt")
    assert grown.config.n_embd == 128 and meta["schedule_start"] == 2
    rows = [
        r
        for r in csv.DictReader((tmp_path / "logs" / "run" / "version_1" / "metrics.csv").open())
        if r.get("train/loss")
    ]
    assert [int(r["step"]) for r in rows] == [4] and float(rows[0]["growth/stage"]) == 1.0


def test_growth_plan_writes_sections_the_cli_accepts(tmp_path, capsys):
    from sprout.commands.plan_growth import plan_growth

    plan_growth(tokens="50M", arch="tiny", write_recipe=str(tmp_path / "plan.yaml"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(
            [
                "fit",
                "--config",
                str(REPO / "recipes" / "gstack-tiny.yaml"),
                "--config",
                str(tmp_path / "plan.yaml"),
                "--print_config",
            ]
        )
    assert done.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["growth"]["operator"]["class_path"] == "sprout.plugins.growth.direct.Gstack"
    module = SproutModule(arch=config["model"]["arch"], arch_overrides=config["model"]["arch_overrides"])
    assert module.config.n_layer == 1
    assert Growth(target_arch=config["growth"]["target_arch"]).target_config(module.config).n_layer == 4


def test_growth_at_a_token_count(tiny_data, tmp_path):
    tokens_per_step = 4 * SEQ  # batch_size x seq_len, one device
    growth = Growth(
        operator=Gstack(), target_overrides={"n_layer": 4}, at_tokens=2 * tokens_per_step + 1, save_stage=False
    )
    module, _ = fit(tiny_data, tmp_path, growth, max_steps=4)
    assert growth.grown_at == 3 and growth.tokens_seen == 4 * tokens_per_step and module.config.n_layer == 4
