"""Exact resume: a run stopped and resumed with ``--ckpt_path last`` logs the very same losses.

The stopped run ends at a step that is no multiple of the validation or checkpoint interval
(its final ``last.ckpt`` must still hold that step) and the uninterrupted run and the
resumed one are compared bit for bit, on CPU with deterministic settings, with two
DataLoader workers, a dynamic mixture (DoReMi, whose loss weights change every 3 steps from
the training losses) and a selector that draws from the global torch generator.
"""

import torch
from tiny_run import recipe, save_reference, scalars, sprout

STEPS, STOP = 12, 5


def test_stop_and_resume_with_ckpt_path_last_is_bit_identical(tiny_data, tmp_path):
    sections = {
        "trainer": {"num_sanity_val_steps": 2},  # the sanity check draws random numbers only in the resumed run
        "model": {
            "selector": {"class_path": "tiny_run.GlobalRandomTokens"},
            "reference": str(save_reference(tiny_data, tmp_path / "ref.ckpt")),
        },
        "data": {"num_workers": 2, "mixture": {"class_path": "doremi", "init_args": {"update_every": 3, "eta": 5.0}}},
    }
    whole = recipe(tmp_path / "whole.yaml", tiny_data, tmp_path / "whole", STEPS, **sections)
    assert sprout("fit", "--config", str(whole))[0] == 0

    legs = recipe(tmp_path / "legs.yaml", tiny_data, tmp_path / "legs", STEPS, **sections)
    # the same command serves the first launch (nothing to resume yet) and the restart
    assert sprout("fit", "--config", str(legs), "--trainer.max_steps", str(STOP), "--ckpt_path", "last")[0] == 0
    run = tmp_path / "legs" / "tiny" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STOP
    assert sprout("fit", "--config", str(legs), "--ckpt_path", "last")[0] == 0
    assert not (tmp_path / "legs" / "tiny" / "version_1").exists()  # continued in its own folder

    expected = tmp_path / "whole" / "tiny" / "version_0"
    for tag in ("train/loss", "train/grad_norm", "select/fraction"):
        got, want = scalars(run, tag), scalars(expected, tag)
        assert sorted(got) == list(range(STEPS)), tag
        assert got == want, tag  # exact float equality, every step, both legs

    a = torch.load(expected / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    dm_a, dm_b = a["SproutDataModule"], b["SproutDataModule"]
    # DoReMi (Algorithm 1) keeps drawing uniformly and moved its loss weights, identically
    assert dm_a["sampler"]["weights"] == dm_b["sampler"]["weights"] == [0.5, 0.5]
    assert dm_a["mixture"]["alpha"] == dm_b["mixture"]["alpha"] != {"code": 0.5, "text": 0.5}
    assert dm_a["consumed"] == dm_b["consumed"] == STEPS


def test_resume_across_the_growth_boundary_is_bit_identical(tiny_data, tmp_path):
    """G_random depthwise at step 4 (fresh random layers, from the global generator, faded in
    over 4 steps): resumed from step 2 the growth happens in the resumed run, from step 6 the
    grown model and its half-open masks come from the checkpoint."""
    sections = {
        "growth": {
            "operator": {"class_path": "random_depth", "init_args": {"ramp_steps": 4}},
            "at_step": 4,
            "target_overrides": {"n_layer": 4},
        },
        "checkpoint": {"every_n_train_steps": 2, "save_top_k": -1},
        "model": {
            "selector": {"class_path": "tiny_run.GlobalRandomTokens"}
        },  # so the generators' states differ by step
    }
    steps = 9
    whole = recipe(tmp_path / "whole.yaml", tiny_data, tmp_path / "whole", steps, **sections)
    assert sprout("fit", "--config", str(whole))[0] == 0
    expected = tmp_path / "whole" / "tiny" / "version_0"
    want = scalars(expected)
    assert scalars(expected, "growth/stage") == {s: float(s >= 3) for s in range(steps)}  # logged after step s + 1

    for start in (2, 6):
        resumed = recipe(tmp_path / f"from{start}.yaml", tiny_data, tmp_path / f"from{start}", steps, **sections)
        ckpt = expected / "checkpoints" / f"step{start:06d}.ckpt"
        assert sprout("fit", "--config", str(resumed), "--ckpt_path", str(ckpt))[0] == 0
        got = scalars(tmp_path / f"from{start}" / "tiny" / "version_0")
        assert sorted(got) == list(range(start, steps))
        assert got == {s: want[s] for s in got}, start
