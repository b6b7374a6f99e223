"""Checkpoints are written atomically: a process killed mid-save or a full disk never leaves a
file that looks like a checkpoint but is not, and retention keeps the newest N and the best."""

import builtins
import errno
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch
from tiny_run import recipe, scalars, sprout

from sprout.checkpoint import run as checkpoint_run
from sprout.checkpoint.run import AtomicCheckpointIO

# A process that saves one checkpoint, then starts a second and is stuck half way through writing it.
KILLED_MID_SAVE = """
import sys, time, torch
from sprout.checkpoint.run import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({"step": 1, "weights": torch.ones(1000)}, sys.argv[1])
real_save = torch.save
def stuck_save(obj, f):
    real_save(obj, f)  # all bytes but the end of the archive
    f.truncate(f.tell() // 2)
    f.flush()
    print("half written", flush=True)
    time.sleep(600)
torch.save = stuck_save
io.save_checkpoint({"step": 2, "weights": torch.zeros(1000)}, sys.argv[1])
"""


def test_sigkill_mid_save_leaves_the_previous_checkpoint_and_nothing_that_looks_valid(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_SAVE, str(target)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "half written"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert [p.name for p in target.parent.glob("*.ckpt")] == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["step"] == 1  # the previous checkpoint, whole
    leftovers = list(target.parent.glob(".last.ckpt.tmp-*"))
    assert len(leftovers) == 1  # the half-written file: hidden, and not named *.ckpt
    AtomicCheckpointIO().save_checkpoint({"step": 3}, target.with_name("step000003.ckpt"))
    assert not any(p.exists() for p in leftovers)  # the next save in that folder clears a dead process's leftovers
    AtomicCheckpointIO().save_checkpoint({"step": 3}, target)
    assert torch.load(target, weights_only=True)["step"] == 3


class FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: writing beyond them fails with ENOSPC."""

    room = 2048

    def write(self, data):
        room = self.room - self.tell()
        if len(data) > room:
            super().write(bytes(data)[: max(room, 0)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_disk_full_while_saving_is_a_clear_error_and_resume_from_the_earlier_checkpoint_runs_on(
    tiny_data, tmp_path, monkeypatch
):
    saves = []

    def open_on_filling_disk(path, mode="r", *args, **kwargs):
        saves.append(path)
        if len(saves) <= 2:  # step000002.ckpt and last.ckpt still fit
            return builtins.open(path, mode, *args, **kwargs)
        return FullDisk(path, "wb")

    monkeypatch.setattr(checkpoint_run, "open", open_on_filling_disk, raising=False)
    config = recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", 8, checkpoint={"every_n_train_steps": 2})
    code, err = sprout("fit", "--config", str(config))
    folder = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    assert code == 2
    found = re.search(
        rf"sprout: error: Could not write checkpoint {re.escape(str(folder / 'step000004.ckpt'))}: No space left on device "
        rf"\(it needs about ([0-9.]+) MiB; {re.escape(str(folder))} has [0-9,.]+ [MG]iB free\)\. Nothing was written there, "
        rf"and the checkpoints already in {re.escape(str(folder))} are intact\. Free space on that disk, set checkpoint\.dirpath "
        r"to a folder on a larger one, or keep fewer checkpoints \(checkpoint\.save_top_k\), then resume with --ckpt_path last\.",
        err,
    )
    assert found, err[-2000:]
    size = (folder / "last.ckpt").stat().st_size / 2**20  # the one that failed would have been as large
    assert abs(float(found[1]) - size) < 0.05 * size
    assert "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == [
        "last.ckpt",
        "step000002.ckpt",
    ]  # no partial file, hidden or not
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2

    monkeypatch.undo()  # space was freed
    assert sprout("fit", "--config", str(config), "--ckpt_path", "last")[0] == 0
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 8
    whole = recipe(tmp_path / "whole.yaml", tiny_data, tmp_path / "whole", 8, checkpoint={"every_n_train_steps": 2})
    assert sprout("fit", "--config", str(whole))[0] == 0
    got, want = scalars(folder.parent), scalars(tmp_path / "whole" / "tiny" / "version_0")
    assert sorted(got) == list(range(8)) and got == want  # the resumed steps are the uninterrupted run's


def test_keeps_the_newest_checkpoints_and_the_best_by_validation_loss(tiny_data, tmp_path):
    config = recipe(
        tmp_path / "r.yaml",
        tiny_data,
        tmp_path / "runs",
        9,
        checkpoint={"save_top_k": 2},
        trainer={"val_check_interval": 2},
    )
    assert sprout("fit", "--config", str(config))[0] == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    val = scalars(run, "val/loss")
    assert sorted(val) == [1, 3, 5, 7]  # logged at steps 2, 4, 6, 8 (0-based logger steps)
    best_step = min(val, key=val.get) + 1
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == sorted(
        [
            f"best-step{best_step:06d}-val{val[best_step - 1]:.4f}.ckpt",
            "last.ckpt",
            "step000006.ckpt",
            "step000008.ckpt",
        ]
    )
    assert (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9
    )  # the final step, between two saves
