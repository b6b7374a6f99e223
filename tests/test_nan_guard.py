"""The NaN/inf guard: bad steps change nothing and are counted; a streak stops the run with a
checkpoint holding the weights from before it and a message naming steps, domains and the
last finite loss."""

from pathlib import Path

import pytest
import torch
from tiny_run import recipe, scalars, sprout

EVERY_STEP = {"every_n_train_steps": 1, "save_top_k": -1}


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_training_state(a: Path, b: Path) -> None:
    """Same weights and the same optimizer state (moments, step counts)."""
    ca, cb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for key, tensor in ca["state_dict"].items():
        assert torch.equal(tensor, cb["state_dict"][key]), key
    sa, sb = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key, tensor in sa[i].items():
            assert torch.equal(tensor, sb[i][key]), (i, key)


def test_bad_steps_are_skipped_counted_and_training_goes_on(tiny_data, tmp_path):
    config = recipe(
        tmp_path / "r.yaml",
        tiny_data,
        tmp_path / "runs",
        6,
        checkpoint=EVERY_STEP,
        nan_guard={"max_consecutive": 3},
        model={"selector": {"class_path": "tiny_run.NaNAt", "init_args": {"batches": [2, 3]}}},
    )
    with pytest.warns(UserWarning) as warned:
        code, err = sprout("fit", "--config", str(config))
    assert code == 0, err[-2000:]
    skipped = [str(w.message) for w in warned if "not finite" in str(w.message)]
    assert skipped == [
        "Step 2: the loss (nan) or the gradient norm is not finite; its update was skipped (1 in a row, 1 in this run).",
        "Step 3: the loss (nan) or the gradient norm is not finite; its update was skipped (2 in a row, 2 in this run).",
    ]
    run = tmp_path / "runs" / "tiny" / "version_0"
    checkpoints = run / "checkpoints"
    # step{N}.ckpt holds the state after N steps: steps 2 and 3 changed neither weights nor optimizer
    assert_same_training_state(checkpoints / "step000002.ckpt", checkpoints / "step000004.ckpt")
    before, after = weights(checkpoints / "step000004.ckpt"), weights(checkpoints / "step000005.ckpt")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # step 4 trained again
    assert scalars(run, "nan_guard/skipped") == {0: 0.0, 1: 0.0, 2: 1.0, 3: 2.0, 4: 2.0, 5: 2.0}
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["callbacks"]["NaNGuard"]["skipped"] == 2


def test_a_streak_stops_the_run_with_the_weights_from_before_it(tiny_data, tmp_path):
    config = recipe(
        tmp_path / "r.yaml",
        tiny_data,
        tmp_path / "runs",
        12,
        checkpoint=EVERY_STEP,
        nan_guard={"max_consecutive": 3},
        model={"selector": {"class_path": "tiny_run.NaNAt", "init_args": {"from_batch": 3}}},
    )
    code, err = sprout("fit", "--config", str(config))
    run = tmp_path / "runs" / "tiny" / "version_0"
    stop = run / "checkpoints" / "nonfinite-step000005.ckpt"
    last_loss = scalars(run)[2]
    assert code == 2
    message = err[err.index("sprout: error: ") :]
    assert message.startswith(
        "sprout: error: Training stopped: the loss or gradient norm was not finite in 3 steps in a row (steps 3-5; domains in those batches: "
    )
    assert (
        f"the last finite loss was {last_loss:.4f} at step 2. Their updates were skipped, so {stop} holds the weights from before step 3;"
        in message
    )
    assert f"resume with --ckpt_path {stop}" in message and "Traceback" not in err
    assert_same_training_state(run / "checkpoints" / "step000003.ckpt", stop)
    assert torch.load(stop, weights_only=True)["global_step"] == 6
