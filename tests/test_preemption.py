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


def interrupt(config: Path, sig: signal.Signals, at: int, cwd: Path, **env: str) -> tuple[int, str]:
    """Run ``sprout fit`` in a real process, send ``sig`` where it pauses; (exit status, stderr)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sprout", "fit", "--config", str(config)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith(f"paused at step {at}"):
                proc.send_signal(sig)
                break
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.parametrize(
    "sig, during, at",
    [(signal.SIGTERM, "training", 3), (signal.SIGUSR1, "training", 3), (signal.SIGTERM, "validation", 4)],
)
def test_signal_saves_last_checkpoint_and_exits_cleanly(sig, during, at, tiny_data, uninterrupted, tmp_path):
    pause = {"class_path": "tiny_run.PauseAt", "init_args": {"step": at, "during": during}}
    config = recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", STEPS, trainer={"callbacks": [pause]})
    code, err = interrupt(config, sig, at, tmp_path)
    assert code == 128 + sig.value, err[-3000:]
    ckpt = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert (
        f"sprout: received {sig.name} during {during}; saved {ckpt} at step {at}. Resume with the same command and --ckpt_path last."
        in err
    )
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


@pytest.mark.parametrize("sig, works", [(signal.SIGUSR1, True), (signal.SIGUSR1, False), (signal.SIGTERM, True)])
def test_slurm_time_limit_warning_requeues_the_job(sig, works, tiny_data, tmp_path):
    """In a SLURM batch job SIGUSR1 saves, then requeues the job (``scontrol`` faked here); a
    failed requeue says how to do it by hand; SIGTERM (cancel, preemption) never requeues."""
    calls = tmp_path / "scontrol.calls"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n' + ("" if works else 'echo "Job is not requeueable" >&2\nexit 1\n')
    )
    fake.chmod(0o755)
    pause = {"class_path": "tiny_run.PauseAt", "init_args": {"step": 2, "during": "training"}}
    config = recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", STEPS, trainer={"callbacks": [pause]})
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "train.sh",
        "SLURM_ARRAY_JOB_ID": "4240",
        "SLURM_ARRAY_TASK_ID": "2",
        # one task started by srun: Lightning chooses its SLURMEnvironment (auto-requeue off, ours instead)
        **{"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"},
    }
    code, err = interrupt(config, sig, 2, tmp_path, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}", **slurm)
    assert code == 128 + sig.value, err[-3000:]
    if sig == signal.SIGTERM:
        assert not calls.exists() and "Resume with the same command and --ckpt_path last." in err
    elif works:
        assert calls.read_text() == "requeue 4240_2\n"  # an array task is requeued by its own id
        assert "Requeued SLURM job 4240_2; the job script's --ckpt_path last resumes from here." in err
    else:
        assert (
            "Requeueing SLURM job 4240_2 failed (Job is not requeueable); requeue it with `scontrol requeue 4240_2`"
            in err
        )


def test_lightning_requeue_handler_is_off_under_slurm(monkeypatch):
    """Under srun the Trainer gets SLURMEnvironment(auto_requeue=False), so Lightning installs no
    SIGUSR1 handler of its own; elsewhere, or with an environment the recipe chose, nothing changes."""
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    from sprout.callbacks.preemption import slurm_without_auto_requeue

    for name in [n for n in os.environ if n.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(name)
    assert slurm_without_auto_requeue(None) is None
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train.sh")
    (env,) = slurm_without_auto_requeue(None)
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue
    chosen = [LightningEnvironment()]
    assert slurm_without_auto_requeue(chosen) is chosen
