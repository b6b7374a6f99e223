"""tools/experiments/compose.py at a CI size: every arm runs at equal FLOPs, the table is written,
and an interrupted experiment redoes only its unfinished runs."""

import json
import os

import pytest

from tools.experiments import compose

TINY = {
    "seeds": 1,
    "steps": 24,
    "validations": 2,
    "arch": "micro",
    "target_layers": 2,
    "small_layers": 1,
    "grow_at": 4,
    "ref_layers": 1,
    "ref_steps": 8,
    "vocab_size": 320,
    "seq_len": 32,
    "batch_size": 4,
    "val_blocks": 4,
    "warmup_steps": 2,
    "jobs": 2,
    "threads": 1,
}


@pytest.fixture(scope="module")
def experiment(tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("compose")
    summary = compose.compose(work_dir=str(work), data_dir=str(tiny_data), **TINY)
    return work, summary


def test_every_arm_runs_at_equal_flops_and_the_table_is_written(experiment):
    work, summary = experiment
    assert list(summary) == list(compose.ARMS)
    for arm in compose.ARMS:
        assert (work / "runs" / arm / "seed0" / "result.json").is_file()
    budget = summary["baseline"]["flops"][0]
    for arm, s in summary.items():
        assert abs(s["flops"][0] / budget - 1) < 0.05, (arm, s["flops"][0], budget)
    assert (
        summary["growth"]["steps"] > summary["baseline"]["steps"] > summary["selection"]["steps"]
    )  # cheaper small stage; reference forward
    table = (work / "compose.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(compose.ARMS)
    assert "1 seed: no noise estimate" in table and "One-off cost of the selection arms" in table
    assert summary["selection"]["one_off"] > 0 and summary["mixture"]["one_off"] == 0
    assert (work / "compose.png").stat().st_size > 0


def test_an_interrupted_experiment_redoes_only_unfinished_runs(experiment, tiny_data):
    work, _ = experiment
    finished = {arm: (work / "runs" / arm / "seed0" / "result.json").stat().st_mtime_ns for arm in compose.ARMS}
    interrupted = work / "runs" / "growth" / "seed0"
    (interrupted / "result.json").unlink()  # killed before its completion marker was written
    (interrupted / "checkpoints" / "last.ckpt").write_bytes(b"half")
    compose.compose(work_dir=str(work), data_dir=str(tiny_data), **TINY)
    assert json.loads((interrupted / "result.json").read_text())["flops"] > 0
    assert (interrupted / "checkpoints" / "last.ckpt").read_bytes() != b"half"
    for arm, mtime in finished.items():
        if arm != "growth":
            assert (work / "runs" / arm / "seed0" / "result.json").stat().st_mtime_ns == mtime, arm
    assert not list(work.rglob(".result.json.tmp-*")) and not list(work.rglob("*.tmp*"))
    assert os.path.getsize(work / "compose.md") > 0


def test_arm_steps_spend_the_baseline_budget():
    args = {
        **TINY,
        "steps": 200,
        "validations": 8,
        "arch": "tiny",
        "target_layers": 8,
        "small_layers": 2,
        "ref_layers": 4,
        "grow_at": 50,
        "vocab_size": 1024,
        "seq_len": 64,
        "batch_size": 8,
    }
    budget = 200 * compose.step_flops(8, args)
    for arm in compose.ARMS:
        steps = compose.arm_steps(arm, args)
        assert steps % 8 == 0
        used = compose.methods(arm)
        ref = compose.step_flops(4, args, forward_only=True) if "selection" in used else 0
        small = min(steps, 50) if "growth" in used else 0
        spent = small * (compose.step_flops(2, args) + ref) + (steps - small) * (compose.step_flops(8, args) + ref)
        assert abs(spent / budget - 1) < 0.03, arm
