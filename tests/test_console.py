"""What a researcher reads on the console: a step bar without epochs or v_num, no Lightning tips
Sprout cannot act on, and a plugin listing that imports neither Lightning nor torch."""

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

from tiny_run import recipe, sprout

from sprout.callbacks.progress import describe

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sprout", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_the_bar_counts_steps_to_max_steps_with_loss_tokens_per_s_and_time_left(tiny_data, tmp_path):
    config = recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", 4)
    done = run("fit", "--config", str(config), "--trainer.enable_progress_bar", "true", "--monitor.log_every", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    out = (done.stdout + done.stderr).replace("\r", "\n")
    bars = [line for line in out.splitlines() if line.startswith("step ")]
    assert bars[-1].startswith("step 4/4 |") and "loss " in bars[-1] and " tok/s" in bars[-1], bars
    assert any("<00:" in line for line in bars)  # tqdm's time left
    assert "Epoch" not in out and "v_num" not in out and "/-2" not in out
    assert "litlogger" not in out and "LeafSpec" not in out  # Lightning's tip and torch's deprecation are gone


def test_describe_names_the_metrics_shortly():
    metrics = {"train/loss": 4.12345, "perf/tokens_per_s": 10234.4, "val/loss": 4.25, "select/fraction": 0.6}
    assert describe(metrics) == "loss 4.123, val 4.25, 10,234 tok/s, select/fraction 0.6"


def test_plugins_are_listed_without_importing_lightning_or_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from sprout.cli import main; main(['plugins']); "
        "print('imported:', sorted(m for m in ('torch', 'lightning', 'jsonargparse') if m in sys.modules), f'{time.perf_counter() - t:.3f}')"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout
    assert (
        "rho1" in done.stdout
        and "Rho-1: keep the top k% of tokens by excess loss over a reference model." in done.stdout
    )
    assert "gstack" in done.stdout and "sprout" in done.stdout
    print(f"sprout plugins: {wall:.2f} s wall including the interpreter")


def test_ckpt_path_last_without_a_checkpoint_says_so_in_sprouts_words(tiny_data, tmp_path):
    config = recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = sprout("fit", "--config", str(config), "--ckpt_path", "last")
    assert code == 0, err[-2000:]
    assert f"sprout: no checkpoint yet in {tmp_path / 'runs' / 'tiny'}; starting from scratch" in err
    assert not any("save_last" in str(w.message) for w in caught) and "save_last" not in err
    assert next((tmp_path / "runs").rglob("last.ckpt"))
