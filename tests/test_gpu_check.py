"""tools/gpu_check.py runs end to end on CPU (--dry_run) and names what it skips."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tools import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_prints_the_table_and_the_loss_falls():
    run = subprocess.run(
        [sys.executable, "tools/gpu_check.py", "--dry_run", "--row_timeout", "900", "--time_limit", "3000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    table = {
        line.split("|")[1].strip(): line
        for line in run.stdout.splitlines()
        if line.startswith("| ") and "row |" not in line
    }
    for row in ("sprout eager sdpa", "sprout compiled sdpa"):
        assert "| yes |" in table[row], table[row]  # tokens/s measured, and the 20-step loss fell
    assert "skipped: flash-attn runs only on CUDA" in table["sprout compiled flash-attn 2"]
    if importlib.util.find_spec("transformers") is not None:
        assert "| yes |" in table["transformers compiled sdpa"]


def test_a_missing_package_is_named_and_only_its_rows_skip(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    rows = gpu_check.gpu_check(
        dry_run=True, rows=["sprout eager sdpa", "transformers compiled sdpa"], row_timeout=600, time_limit=3000
    )
    out = capsys.readouterr().out
    assert "transformers is not importable here: skipping the transformers row (pip install transformers" in out
    by_name = {r["row"]: r for r in rows}
    assert by_name["transformers compiled sdpa"] == {
        "row": "transformers compiled sdpa",
        "skipped": "transformers not installed",
    }
    assert by_name["sprout eager sdpa"]["loss_falls"] is True


def test_loss_check_fails_a_loss_that_does_not_fall():
    assert gpu_check.loss_falls([6.0, 5.9, 5.8] + [5.0] * 14 + [4.0, 3.9, 3.8])
    assert not gpu_check.loss_falls([6.0] * 20)
    assert not gpu_check.loss_falls([6.0, 5.0, 4.0] + [float("nan")] + [1.0] * 16)


def test_without_a_gpu_it_says_so(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="No CUDA GPU is visible"):
        gpu_check.gpu_check()
