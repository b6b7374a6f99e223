"""The console's training bar: ``step N/max_steps``, loss, tokens/s and the time left.

Lightning's bars count batches within epochs. Sprout's sampler never ends an epoch and a run
is as long as ``trainer.max_steps``, so they showed ``Epoch 0/-2`` and an unknown total, plus the
logger's ``v_num``. This bar counts optimizer steps against ``max_steps`` (from the resumed step
after ``--ckpt_path``, so the time left is right), and shows the metrics the module and the
throughput monitor mark for the progress bar under short names. Validation keeps Lightning's bar.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm import tqdm

# progress-bar metrics shown under a short name, in this order; others keep their own name
SHORT_NAMES = {"train/loss": "loss", "val/loss": "val", "perf/tokens_per_s": "tok/s"}


def describe(metrics: dict[str, Any]) -> str:
    """``loss 4.123, val 4.250, 10,234 tok/s``: the known metrics first, then any other, by name."""
    parts = []
    for name in [*(n for n in SHORT_NAMES if n in metrics), *sorted(n for n in metrics if n not in SHORT_NAMES)]:
        value = float(metrics[name])
        if name == "perf/tokens_per_s":
            parts.append(f"{value:,.0f} tok/s")
        else:
            parts.append(f"{SHORT_NAMES.get(name, name)} {value:.4g}")
    return ", ".join(parts)


class StepProgressBar(TQDMProgressBar):
    """A TQDM bar over optimizer steps: ``step 120/200 |████      | loss 4.123, 10,234 tok/s [00:12<00:08]``."""

    BAR = "step {n_fmt}/{total_fmt} |{bar:20}| {desc} [{elapsed}<{remaining}]"  # the metrics go in desc: tqdm prefixes a postfix with ", "

    def init_train_tqdm(self) -> tqdm:
        return tqdm(
            desc="",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Once per run rather than per epoch: total = max_steps, starting at the resumed step."""
        bar = self.train_progress_bar
        if bar.total is not None or bar.n:
            return  # a later (data-module) epoch of the same run: keep counting
        bar.reset(total=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None)
        bar.initial = bar.n = trainer.global_step  # tqdm's rate, hence the time left, counts from here

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        due = self.refresh_rate > 0 and (step % self.refresh_rate == 0 or step == bar.total)
        if bar.disable or step == bar.n or not due:
            return
        bar.n = step
        bar.set_description_str(describe(trainer.progress_bar_metrics), refresh=False)
        bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_description_str(describe(trainer.progress_bar_metrics))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Nothing for Lightning's postfix (``v_num`` and long names, set after each validation): the bar's text says it all."""
        return {}
