"""What token selection costs per training step: ``rho1`` with offline scores, and with online
scoring, against ``all`` on the same model, data and batch.

    python -m tools.bench_selection --work_dir runs/selection      # after tools/experiments/selection.py

Offline, the reference losses arrive with the tokens (a memory-mapped float16 read) and the
selection is one sort of the micro-batch's losses: the target is at most 5% slower than
``all``. Online, every step adds a no-grad forward of the reference model. A step is timed
from the end of one training batch to the end of the next, so data loading counts. The
configurations alternate in rounds, so a busy machine slows all of them alike; the table gives
the median over all timed steps.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import lightning as L
import torch

from sprout import registry
from sprout.commands import run_function
from sprout.data.datamodule import SproutDataModule
from sprout.errors import SproutError
from sprout.module import SproutModule

CONFIGS = ("all", "rho1-offline", "rho1-online")


class StepTimer(L.Callback):
    """Wall time between consecutive ends of training batches, after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None and batch_idx > self.warmup:
            self.times.append(now - self._last)
        self._last = now


def run(config: str, steps: int, warmup: int, args: dict) -> list[float]:
    offline, online = config == "rho1-offline", config == "rho1-online"
    selector = (
        registry.create("selector", "all") if config == "all" else registry.create("selector", "rho1", k=args["k"])
    )
    module = SproutModule(
        arch=args["arch"],
        arch_overrides={"vocab_size": args["vocab_size"], "block_size": args["seq_len"]},
        selector=selector,
        reference=args["reference"] if online else None,
    )
    data = SproutDataModule(
        args["data_dir"],
        domains=args["domains"],
        seq_len=args["seq_len"],
        batch_size=args["batch_size"],
        reference_scores=args["scores"] if offline else None,
        val_blocks=1,
    )
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        max_steps=warmup + steps + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[timer],
        accelerator=args["accelerator"],
        devices=1,
    )
    trainer.fit(module, datamodule=data)
    return timer.times


def bench_selection(
    work_dir: str = "runs/selection",
    data_dir: str | None = None,
    reference: str | None = None,
    scores: str | None = None,
    domains: list[str] | None = None,
    arch: str = "tiny",
    vocab_size: int = 2048,
    seq_len: int = 128,
    batch_size: int = 16,
    k: float = 60.0,
    steps: int = 20,
    warmup: int = 3,
    rounds: int = 3,
    accelerator: str = "auto",
) -> dict[str, float]:
    """Time training steps of ``all``, ``rho1`` with offline scores and ``rho1`` scored online.

    Args:
        work_dir: a finished tools/experiments/selection.py run; supplies the defaults of
            data_dir (``data``), reference (``reference/checkpoints/last.ckpt``) and scores (``scores``).
        data_dir: prepared data.
        reference: the reference checkpoint (online scoring).
        scores: offline scores of that reference (sprout score).
        domains: domains to train on (default books, code, math: the experiment's).
        arch: model shape (the reference's, for online scoring).
        vocab_size: the model's vocabulary (the tokenizer's).
        seq_len: tokens per sequence (the scores' seq_len).
        batch_size: sequences per step.
        k: percent of tokens rho1 keeps.
        steps: timed steps per configuration and round.
        warmup: untimed steps at the start of each run.
        rounds: times every configuration runs, alternating.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
    """
    work = Path(work_dir).expanduser()
    args = {
        "data_dir": data_dir or str(work / "data"),
        "reference": reference or str(work / "reference" / "checkpoints" / "last.ckpt"),
        "scores": scores or str(work / "scores"),
        "domains": domains or ["books", "code", "math"],
        "arch": arch,
        "vocab_size": vocab_size,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "k": k,
        "accelerator": accelerator,
    }
    if not Path(args["reference"]).exists():
        raise SproutError(
            f"Reference checkpoint {args['reference']} not found: run tools/experiments/selection.py first, or pass --reference, --scores and --data_dir."
        )
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for r in range(rounds):
        for config in CONFIGS:
            times[config] += run(config, steps, warmup, args)
            print(
                f"round {r + 1}/{rounds} {config}: median {statistics.median(times[config]) * 1e3:.1f} ms/step so far"
            )
    base = statistics.median(times["all"])
    tokens = batch_size * seq_len
    print(
        f"\n{arch}, {batch_size} x {seq_len} tokens per step, torch threads {torch.get_num_threads()}, {rounds} rounds x {steps} steps each:"
    )
    print("| selector | ms/step (median) | tokens/s | vs all |")
    print("|---|---|---|---|")
    result = {}
    for config in CONFIGS:
        median = statistics.median(times[config])
        result[config] = median
        print(f"| {config} | {median * 1e3:.1f} | {tokens / median:,.0f} | {median / base:.3f}x |")
    return result


def main(args: list[str] | None = None) -> None:
    run_function(bench_selection, args, as_positional=False)


if __name__ == "__main__":
    main()
