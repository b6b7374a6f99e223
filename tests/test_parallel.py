"""FSDP2, activation checkpointing and the strategy helpers, on CPU over gloo.

The sharded gradients are checked against one process's in two spawned ranks; the Lightning
path (ModelParallelStrategy and DDP, two processes each) trains, writes a sharded checkpoint,
resumes from it and consolidates it, each run in a subprocess so this process stays clean.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from sprout.checkpoint.weights import load_model, save_model
from sprout.errors import SproutError
from sprout.loss import chunked_token_losses
from sprout.model import Llama, LlamaConfig
from sprout.parallel import (
    Parallelism,
    compute_dtype,
    data_parallel_mesh,
    fused_optimizer_kwargs,
    parallelize,
    total_norm,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = LlamaConfig.from_name("micro", vocab_size=96, block_size=32)


def _loss(model, x, y):
    return chunked_token_losses(model.hidden_states(x), model.output.weight, y, chunk_size=24).mean()


def _batches(world):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, CONFIG.vocab_size, (world, 2, 16), generator=g), torch.randint(
        0, CONFIG.vocab_size, (world, 2, 16), generator=g
    )


def _sharded_worker(rank, world, init_file, reference_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # full sharding; hybrid as on one node of 2 ranks, and as on 2 nodes of 1 rank (replicate x shard)
        for sharding, per_node, shape in [("full", 2, (2,)), ("hybrid", 2, (1, 2)), ("hybrid", 1, (2, 1))]:
            strategy = SimpleNamespace(world_size=world, num_processes=per_node, root_device=torch.device("cpu"))
            mesh = data_parallel_mesh(strategy, sharding)
            assert mesh.shape == shape
            _check_sharded_gradients(rank, world, mesh)
        _check_sharded_reference(rank, reference_file, data_parallel_mesh(strategy, "full"))
    finally:
        dist.destroy_process_group()


def _check_sharded_reference(rank, reference_file, mesh):
    """A sharded Rho-1 reference keeps half the weights per rank and scores as the full copy."""
    from sprout.reference import Reference

    full, sharded = Reference(reference_file, CONFIG.vocab_size), Reference(reference_file, CONFIG.vocab_size)
    sharded.shard(mesh, torch.device("cpu"), None)
    local = sum(p.to_local().numel() for p in sharded.model.parameters())
    assert local <= sum(p.numel() for p in full.model.parameters()) // 2 + 64  # + uneven rows of the last shard
    x, y = _batches(2)
    with torch.no_grad():
        for _ in range(2):  # the second call finds the root's parameters still gathered
            torch.testing.assert_close(sharded.losses(x[rank], y[rank]), full.losses(x[rank], y[rank]))


def _check_sharded_gradients(rank, world, mesh):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    model = Llama(CONFIG)
    reference = copy.deepcopy(model)
    x, y = _batches(world)
    # one process over every rank's batch: the gradient data parallelism must reproduce
    sum(_loss(reference, x[r], y[r]) for r in range(world)).div(world).backward()

    parallelize(model, Parallelism(activation_checkpointing=True), mesh)
    assert isinstance(model, FSDPModule)
    _loss(model, x[rank], y[rank]).backward()

    grads = {n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in model.named_parameters()}
    assert grads.keys() == dict(reference.named_parameters()).keys()
    for name, ref in reference.named_parameters():
        got = grads[name]
        assert isinstance(got, DTensor) and got.device_mesh == mesh, name
        torch.testing.assert_close(got.full_tensor(), ref.grad, rtol=1e-5, atol=1e-6, msg=name)
    ref_norm = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()])
    torch.testing.assert_close(total_norm(list(grads.values())), ref_norm)
    # gradient clipping (what Lightning's gradient_clip_val calls) scales by the full norm
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.1)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    for (name, ref), got in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(got.grad.full_tensor(), ref.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_fsdp2_gradients_equal_one_process(tmp_path):
    """Sharded parameters (full and hybrid), the registered ``hidden_states`` forward and the
    chunked loss on the gathered head give the single-process gradients and grad norm; a
    sharded reference model gives the full copy's losses."""
    torch.manual_seed(5)
    save_model(Llama(CONFIG), tmp_path / "reference.ckpt")
    mp.spawn(_sharded_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "reference.ckpt")), nprocs=2, join=True)


def test_activation_checkpointing_keeps_names_and_gradients():
    torch.manual_seed(0)
    plain = Llama(CONFIG)
    checkpointed = parallelize(copy.deepcopy(plain), Parallelism(activation_checkpointing=True))
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # checkpoints stay interchangeable
    x, y = _batches(1)
    for model in (plain, checkpointed):
        _loss(model, x[0], y[0]).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_compiled_checkpointed_blocks_match_the_plain_model_in_bf16():
    """Compile + activation checkpointing in bf16 on CPU: the recomputed blocks take the
    written-out attention backward (sprout.model.attention), and the gradients are the plain
    model's within bf16 rounding."""
    torch.manual_seed(0)
    plain = Llama(CONFIG)
    laid_out = parallelize(copy.deepcopy(plain), Parallelism(activation_checkpointing=True, compile=True))
    x, y = _batches(1)

    def step(model):
        with torch.autocast("cpu", torch.bfloat16):
            loss = _loss(model, x[0], y[0])
        loss.backward()

    step(plain)
    step(laid_out)  # compiles
    laid_out.zero_grad()
    with torch.profiler.profile() as prof:
        step(laid_out)
    assert not any("flash_attention_for_cpu_backward" in e.key for e in prof.key_averages())
    for (name, a), b in zip(plain.named_parameters(), laid_out.parameters()):
        assert ((b.grad - a.grad).norm() / a.grad.norm()).item() < 0.03, name


def test_parallelism_checks_sharding():
    with pytest.raises(SproutError, match="model.parallel.sharding"):
        Parallelism(sharding="zero3")


def test_compute_dtype_follows_precision():
    assert compute_dtype("bf16-mixed") is torch.bfloat16
    assert compute_dtype("bf16-true") is torch.bfloat16
    assert compute_dtype("16-mixed") is torch.float16
    assert compute_dtype("32-true") is None


def test_fused_adamw_on_cuda_and_cpu_only_when_unset():
    cuda = [SimpleNamespace(device=torch.device("cuda", 0))]
    assert fused_optimizer_kwargs(torch.optim.AdamW, [torch.zeros(1)]) == {"fused": True}
    assert fused_optimizer_kwargs(torch.optim.AdamW, [torch.zeros(1, device="meta")]) == {}  # no kernel there
    assert fused_optimizer_kwargs(torch.optim.AdamW, cuda) == {"fused": True}
    assert fused_optimizer_kwargs(torch.optim.RMSprop, cuda) == {}  # no fused kernel
    from functools import partial

    assert fused_optimizer_kwargs(partial(torch.optim.AdamW, lr=1e-3, fused=None, foreach=None), cuda) == {
        "fused": True
    }
    assert (
        fused_optimizer_kwargs(partial(torch.optim.AdamW, lr=1e-3, fused=False, foreach=None), cuda) == {}
    )  # recipe chose
    assert fused_optimizer_kwargs(partial(torch.optim.AdamW, fused=None, foreach=True), cuda) == {}


# -- Lightning, two processes --------------------------------------------------------------
def _recipe(tmp_path, data_dir, strategy, max_steps, **parallel):
    recipe = {
        "seed_everything": 3,
        "trainer": {
            "accelerator": "cpu",
            "devices": 2,
            "strategy": strategy,
            "max_steps": max_steps,
            "limit_val_batches": 0,
            "log_every_n_steps": 1,
            "gradient_clip_val": 1.0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "logs"), "name": "run"},
            },
        },
        "model": {
            "arch": "micro",
            "arch_overrides": {"vocab_size": 384, "block_size": 32},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003}},
            "schedule": {"warmup_steps": 2, "min_lr": 0.0003},
            "parallel": parallel,
        },
        "data": {"data_dir": str(data_dir), "seq_len": 32, "batch_size": 2, "mixture": {"class_path": "uniform"}},
        "checkpoint": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 2},
        "monitor": {"log_every": 1, "peak_flops": 1e11},
    }
    path = tmp_path / f"recipe_{max_steps}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _fit(recipe, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "sprout", "fit", "--config", str(recipe), *extra],
        cwd=recipe.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-6000:]
    return run


def _metrics(tmp_path, version, tag="train/loss"):
    import csv

    rows = list(csv.DictReader((tmp_path / "logs" / "run" / f"version_{version}" / "metrics.csv").open()))
    return {int(r["step"]): r for r in rows if r.get(tag)}


def test_fsdp2_run_checkpoints_resumes_and_consolidates(tmp_path, tiny_data):
    strategy = {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}
    recipe = yaml.safe_load(_recipe(tmp_path, tiny_data, strategy, 4, activation_checkpointing=True).read_text())
    recipe["eval"] = {"tasks": ["stdlib_mc"], "every_n_steps": 4, "limit": 4}  # the sharded model, gathered to rank 0
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(recipe))
    _fit(tmp_path / "first.yaml")
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file()
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one shard per rank
    first = _metrics(tmp_path, 0)
    assert sorted(first) == [0, 1, 2, 3] and float(first[3]["train/loss"]) < float(first[0]["train/loss"])
    from sprout.commands.evaluate import evaluate

    during = _metrics(tmp_path, 0, "eval/stdlib_mc/acc")
    assert sorted(during) == [4]  # logged at step 4 by rank 0 only; the same score from the sharded checkpoint:
    assert evaluate(last, tasks="stdlib_mc", limit=4, out_dir=tmp_path / "eval")["stdlib_mc/acc"] == float(
        during[4]["eval/stdlib_mc/acc"]
    )

    _fit(_recipe(tmp_path, tiny_data, strategy, 6, activation_checkpointing=True), "--ckpt_path", str(last))
    resumed = _metrics(tmp_path, 1)
    assert sorted(resumed) == [4, 5]  # continued from step 4, optimizer and schedule restored
    assert float(resumed[4]["perf/tokens_seen"]) == 5 * 2 * 2 * 32

    out = tmp_path / "model.ckpt"
    from sprout.commands.consolidate import consolidate

    consolidate(last, out)
    single, meta = load_model(out)
    sharded, _ = load_model(last)
    assert meta["model_config"]["vocab_size"] == 384
    for name, tensor in sharded.state_dict().items():
        assert torch.equal(single.state_dict()[name], tensor), name

    # the consolidated model as the online Rho-1 reference of a new sharded run (sharded too)
    recipe = yaml.safe_load(_recipe(tmp_path, tiny_data, strategy, 2).read_text())
    recipe["model"].update(selector={"class_path": "rho1", "init_args": {"k": 50}}, reference=str(out))
    recipe["checkpoint"]["dirpath"] = str(tmp_path / "ckpt_rho1")
    (tmp_path / "rho1.yaml").write_text(yaml.safe_dump(recipe))
    _fit(tmp_path / "rho1.yaml")
    selected = _metrics(tmp_path, 2)
    assert sorted(selected) == [0, 1] and all(0.4 < float(row["select/fraction"]) <= 0.6 for row in selected.values())

    shard = last / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])  # the model tensors come first; cut into them
    with pytest.raises(
        SproutError,
        match=rf"Cannot read distributed checkpoint {last} \(EOFError.*\)\. A shard is missing or truncated; use an earlier checkpoint\.$",
    ):
        load_model(last)


def test_ddp_run_with_checkpointed_blocks(tmp_path, tiny_data):
    _fit(_recipe(tmp_path, tiny_data, "ddp", 2, activation_checkpointing=True))
    rows = _metrics(tmp_path, 0)
    assert sorted(rows) == [0, 1]
    assert all(float(r["train/grad_norm"]) > 0 for r in rows.values())
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()  # DDP writes one ordinary file
    assert isinstance(load_model(tmp_path / "ckpt" / "last.ckpt")[0], Llama)


def test_bf16_mixed_clips_gradients_with_fused_adamw(tmp_path, tiny_data):
    """Lightning's AMP plugin refuses to clip for fused AdamW (it unscales gradients itself);
    in bf16-mixed nothing is scaled, so Sprout clips there and the run trains."""
    from tests.tiny_run import recipe, scalars, sprout

    path = recipe(
        tmp_path / "r.yaml",
        tiny_data,
        tmp_path / "runs",
        steps=3,
        trainer={"precision": "bf16-mixed", "gradient_clip_val": 1e-3},
    )
    code, err = sprout("fit", "--config", str(path), "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false")
    assert code == 0, err[-2000:]
    assert len(scalars(next((tmp_path / "runs").rglob("version_0")), "train/loss")) == 3

    from lightning.pytorch.plugins.precision import MixedPrecision

    from sprout.module import SproutModule

    module = SproutModule(arch="micro")
    module.configure_model()
    optimizer = torch.optim.AdamW(module.parameters(), fused=True)
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    module._trainer = SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cpu"))
    module.configure_gradient_clipping(optimizer, 1.0, "norm")
    assert (
        abs(total_norm([p.grad for p in module.parameters()]).item() - 1.0) < 1e-3
    )  # clip_grad_norm_ divides by norm + 1e-6
