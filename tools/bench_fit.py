"""``sprout fit`` end to end against the bare training step, in one run: how much the loop costs.

Both train the benchmark's reference shape (``bench-6l-384``: 6 layers, width 384, 6 heads,
2 KV groups, FFN 1024, vocab 8192) at batch 8 x 256 tokens with fused AdamW and compiled
blocks, each in a fresh process, in alternating rounds:

- ``bare``: ``tools/bench_train.py``'s ``sprout`` worker: random tokens, forward, backward,
  optimizer step and nothing else; tokens/s from the median step time, as that tool reports it;
- ``fit``: ``sprout fit --config recipes/quickstart.yaml`` with the model set to that shape and
  ``model.parallel.compile`` on: the quick start's real shards through the data module and its
  sampler, the recipe's logging (TensorBoard every 10 steps, the throughput monitor with its
  counted-FLOPs step, the LR monitor, the progress bar), gradient clipping and the NaN guard;
  checkpoints and validation off. Tokens/s is the timed steps' tokens over their wall time
  between the ends of the warm-up and of the last step, so everything the loop does between
  two steps (data, logging, callbacks, the periodic logger flushes) counts.

The ratio fit / bare is the share of the bare step's speed that a real run keeps.

    python -m tools.bench_fit                                    # bf16, all cores, 3 rounds
    python -m tools.bench_fit --precision 32-true --threads 1      # ratio from tokens per CPU-second
    python -m tools.bench_fit --fit_args '[--trainer.gradient_clip_val=null]'   # what clipping costs
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

REPO = Path(__file__).resolve().parents[1]
SHAPE = "bench-6l-384"
DTYPES = {"bf16-mixed": "bfloat16", "32-true": "float32"}


class StepClock(L.Callback):
    """Writes the wall and process CPU time at the end of every training step to ``path`` when training ends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.times: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append((time.perf_counter(), time.process_time()))

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.path).write_text(json.dumps(self.times))


def _fit_command(folder: Path, precision: str, max_steps: int, data_dir: str | None, fit_args: list[str]) -> list[str]:
    from sprout.model import CONFIGS

    shape = CONFIGS[SHAPE]
    command = [
        sys.executable, "-m", "sprout", "fit", "--config", str(REPO / "recipes" / "quickstart.yaml"),
        "--model.arch", SHAPE, "--model.arch_overrides", json.dumps({"vocab_size": shape["vocab_size"], "block_size": shape["block_size"]}),
        "--model.parallel.compile", "true", "--trainer.precision", precision, "--trainer.max_steps", str(max_steps),
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false", "--best_checkpoint.save_top_k", "0",
        "--trainer.logger.init_args.save_dir", str(folder / "runs"),
        "--trainer.callbacks+=tools.bench_fit.StepClock", "--trainer.callbacks.path", str(folder / "times.json"),
    ]  # fmt: skip
    if data_dir is not None:
        command += ["--data.data_dir", data_dir]
    return command + list(fit_args)


def _fit_tokens_per_s(
    precision: str, threads: int, warmup: int, steps: int, data_dir: str | None, fit_args: list[str]
) -> dict:
    from sprout.model import CONFIGS

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
        run = subprocess.run(
            _fit_command(folder, precision, warmup + steps, data_dir, fit_args),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0 or not (folder / "times.json").is_file():
            raise RuntimeError(f"sprout fit failed:\n{run.stderr[-3000:]}")
        times = json.loads((folder / "times.json").read_text())
        leftovers = list(folder.rglob("*.ckpt"))
        if leftovers:
            raise RuntimeError(f"sprout fit wrote checkpoints although they were turned off: {leftovers}")
    if len(times) != warmup + steps:
        raise RuntimeError(f"sprout fit ran {len(times)} steps, expected {warmup + steps}")
    tokens = steps * 8 * CONFIGS[SHAPE]["block_size"]  # the quick start's batch_size x seq_len
    return {
        "tokens_per_s": tokens / (times[-1][0] - times[warmup - 1][0]),
        "tokens_per_cpu_s": tokens / (times[-1][1] - times[warmup - 1][1]),
    }


def _bare_tokens_per_s(precision: str, threads: int, warmup: int, steps: int) -> dict:
    from sprout.model import CONFIGS
    from tools.bench_train import _run_worker

    shape = CONFIGS[SHAPE]
    args = {
        "candidate": "sprout",
        "shape": shape,
        "batch": 8,
        "seq_len": shape["block_size"],
        "dtype": DTYPES[precision],
        "warmup": warmup,
        "steps": steps,
        "threads": threads,
    }
    return _run_worker(sys.executable, args)


def bench_fit(
    precision: str = "bf16-mixed",
    rounds: int = 3,
    warmup: int = 3,
    steps: int = 20,
    threads: int = os.cpu_count() or 1,
    data_dir: str | None = None,
    fit_args: list[str] | None = None,
) -> dict:
    """Measure both in alternating rounds and print their medians and the ratio.

    Args:
        precision: bf16-mixed or 32-true.
        rounds: alternating rounds (a fresh process each for bare and fit).
        warmup: untimed steps in each (compilation, the throughput monitor's counted step).
        steps: timed steps in each (fit: over 10 steps, so the periodic logging is inside).
        threads: torch threads of each process.
        data_dir: the shards for ``fit`` (default: the quick start's, built on first use).
        fit_args: more ``sprout fit`` arguments, e.g. to turn a part of the loop off and see its cost.
    """
    if precision not in DTYPES:
        raise SystemExit(f"--precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    if warmup < 2:
        raise SystemExit("--warmup must be at least 2: the first step of a fit compiles and counts FLOPs")
    bare, fit = [], []
    for r in range(rounds):
        order = ["bare", "fit"] if r % 2 == 0 else ["fit", "bare"]
        for what in order:
            if what == "bare":
                bare.append(_bare_tokens_per_s(precision, threads, warmup, steps))
            else:
                fit.append(_fit_tokens_per_s(precision, threads, warmup, steps, data_dir, list(fit_args or [])))
            last = (bare if what == "bare" else fit)[-1]
            print(
                f"  round {r + 1}: {what} {last['tokens_per_s']:.0f} tokens/s, {last['tokens_per_cpu_s']:.0f} per CPU-s",
                file=sys.stderr,
            )
    basis = (
        "tokens_per_cpu_s" if threads == 1 else "tokens_per_s"
    )  # as bench_train: CPU time is the steadier measure of one thread
    result = {"precision": precision, "threads": threads, "basis": basis}
    for what, runs in (("bare", bare), ("fit", fit)):
        result[what] = {
            key: statistics.median(run[key] for run in runs) for key in ("tokens_per_s", "tokens_per_cpu_s")
        }
        result[what + "_runs"] = [round(run[basis]) for run in runs]
    result["ratio"] = result["fit"][basis] / result["bare"][basis]
    print(
        f"\n{SHAPE}, batch 8 x 256, {precision}, {threads} thread(s), median of {rounds} alternating rounds x {steps} timed steps; ratio from {basis.replace('_', ' ')}"
    )
    print("| run | tokens/s | tokens/CPU-s | runs |\n|---|---:|---:|---|")
    for what in ("bare", "fit"):
        print(
            f"| {what} | {result[what]['tokens_per_s']:.0f} | {result[what]['tokens_per_cpu_s']:.0f} | {', '.join(map(str, result[what + '_runs']))} |"
        )
    print(f"fit / bare: {100 * result['ratio']:.1f}%")
    return result


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(bench_fit)
