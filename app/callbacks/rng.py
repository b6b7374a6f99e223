"""Training randomness that a resumed run replays exactly.

Whatever runs between two training steps (validation, a new DataLoader iterator, the
sanity check of a resumed run) draws from the global generators too, and a stopped and
resumed run does so at other moments than an uninterrupted one. So every training step
starts from the generator states the previous step ended with, and those states are what
the checkpoint holds: dropout and any plugin drawing from the global generators see the
same numbers whether or not the run was interrupted. Work done once, at a moment a resumed
run reaches in another way (growth's random initialisation runs at the start of a run
resumed from the stage-1 checkpoint), draws from a stream of its own seeded by the run
seed instead (``sprout.callbacks.growth``).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist


def collect_states() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as types ``torch.load`` accepts safely."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class TrainingRNG(L.Callback):
    """Starts each training step from the generator states the last one ended with; checkpoints them per rank."""

    def __init__(self) -> None:
        self._end_of_step: dict[str, Any] | None = None
        self._loaded: list[dict[str, Any]] | None = None  # one entry per rank, from a checkpoint

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._loaded is not None:
            self._end_of_step = self._loaded[trainer.global_rank % len(self._loaded)]
            self._loaded = None
        if self._end_of_step is not None:
            restore_states(self._end_of_step)
            self._end_of_step = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._end_of_step = collect_states()

    def state_dict(self) -> dict[str, Any]:
        if self._loaded is not None:  # saved again before the first step after a resume
            return {"ranks": self._loaded}
        mine = self._end_of_step if self._end_of_step is not None else collect_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)  # every rank saves the checkpoint's state together
            return {"ranks": ranks}
        return {"ranks": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = list(state_dict["ranks"])
