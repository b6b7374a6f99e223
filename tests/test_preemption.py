"""Preemption: SIGTERM or SIGUSR1 to a real training process saves last.ckpt and exits cleanly;
``--ckpt_path last`` then continues with the very losses of an uninterrupted run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_run import recipe, scalars, sprout

STEPS = 8
TESTS = Path(__file__).parent



@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whole")
    assert sprout("fit", "--config", str(recipe(root / "r.yaml", tiny_data, root / "runs", STEPS)))[0] == 0
    return root / "runs" / "tiny" / "version_0"


def interrupt(config: Path, sig: signal.Signals, at: int, cwd: Path) -> tuple[int, str]:
    """Run ``sprout fit`` in a real process, send ``sig`` where it pauses; (exit status, stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "app", "fit", "--config", str(config)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith(f"paused at step {at}"):
                proc.send_signal(sig)
                break
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.parametrize("sig, during, at", [(signal.SIGTERM, "training", 3), (signal.SIGUSR1, "training", 3), (signal.SIGTERM, "validation", 4)])
def test_signal_saves_last_checkpoint_and_exits_cleanly(sig, during, at, tiny_data, uninterrupted, tmp_path):
    pause = {"class_path": "tiny_run.PauseAt", "init_args": {"step": at, "during": during}}
    config = recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", STEPS, trainer={"callbacks": [pause]})
    code, err = interrupt(config, sig, at, tmp_path)
    assert code == 128 + sig.value, err[-3000:]
    ckpt = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"sprout: received {sig.name} during {during}; saved {ckpt} at step {at}. Resume with the same command and --ckpt_path last." in err
    assert "Traceback" not in err
    assert torch.load(ckpt, weights_only=True)["global_step"] == at
    if sig == signal.SIGUSR1:
        return  # resuming does not depend on which signal stopped the run

    assert sprout("fit", "--config", str(config), "--trainer.callbacks", "[]", "--ckpt_path", "last")[0] == 0
    resumed = scalars(tmp_path / "runs" / "tiny" / "version_0")
    assert sorted(resumed) == list(range(STEPS))
    assert resumed == scalars(uninterrupted)  # bit-identical, the steps before the signal included
    # validations after the restart agree; one cut short by the signal is not run again
    val, want = scalars(tmp_path / "runs" / "tiny" / "version_0", "val/loss"), scalars(uninterrupted, "val/loss")
    assert val == {s: v for s, v in want.items() if during == "training" or s != at - 1}
