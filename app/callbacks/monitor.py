"""What a researcher watches besides the loss: tokens, tokens/s, FLOPs, MFU, mixture weights."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from app.flops import gpu_peak, measured_matmul_peak


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class ThroughputMonitor(L.Callback):
    """Logs ``perf/*`` every ``log_every`` steps and keeps cumulative tokens and FLOPs.

    FLOPs are counted with ``torch.utils.flop_counter`` over one real training step (forward,
    backward) and counted again whenever the model changes size (growth), so the totals
    include every stage. MFU divides achieved FLOP/s per device by ``peak_flops``: the
    datasheet value of a known GPU, the value given here, or on CPU the measured dense
    matmul peak of the machine.

    Args:
        peak_flops: peak FLOP/s of one device; ``null`` picks it as described above.
        log_every: steps between throughput logs.
    """

    def __init__(self, peak_flops: float | None = None, log_every: int = 10) -> None:
        self.peak_flops = peak_flops
        self.log_every = log_every
        self.tokens_seen = 0
        self.flops_seen = 0.0
        self._flops_per_batch: float | None = None
        self._counted_params = -1
        self._counter: FlopCounterMode | None = None
        self._window: tuple[float, int, float] | None = None  # (time, tokens, flops) at window start

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.peak_flops is None:
            dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
            self.peak_flops = gpu_peak(pl_module.device, dtype) or (measured_matmul_peak(dtype) if pl_module.device.type == "cpu" else None)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if _param_count(pl_module) != self._counted_params:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._flops_per_batch = float(self._counter.get_total_flops())
            self._counted_params = _param_count(pl_module)
            self._counter = None
            self._window = None  # the counted step is slow; start timing afresh
        world = trainer.world_size
        self.tokens_seen += batch["input_ids"].numel() * world
        self.flops_seen += (self._flops_per_batch or 0.0) * world
        step = trainer.global_step
        pl_module.log("perf/tokens_seen", float(self.tokens_seen))
        pl_module.log("perf/flops_seen", self.flops_seen)
        now = time.perf_counter()
        if self._window is None:
            self._window = (now, self.tokens_seen, self.flops_seen)
            return
        if step % self.log_every:
            return
        t0, tok0, fl0 = self._window
        dt = now - t0
        if dt <= 0:
            return
        tokens_per_s = (self.tokens_seen - tok0) / dt
        flops_per_s = (self.flops_seen - fl0) / dt / world
        pl_module.log("perf/tokens_per_s", tokens_per_s, prog_bar=True)
        pl_module.log("perf/tokens_per_s_per_device", tokens_per_s / world)
        pl_module.log("perf/flops_per_s_per_device", flops_per_s)
        if self.peak_flops:
            pl_module.log("perf/mfu", flops_per_s / self.peak_flops)
        dm = getattr(trainer, "datamodule", None)
        for domain, weight in getattr(dm, "mixture_weights", {}).items():
            pl_module.log(f"mixture/weight/{domain}", weight)
        self._window = (now, self.tokens_seen, self.flops_seen)

    def state_dict(self) -> dict[str, Any]:
        # The per-batch count is kept too: counting runs the step under FlopCounterMode, whose
        # kernels round differently, so recounting after a resume would break bit-exact resume.
        return {"tokens_seen": self.tokens_seen, "flops_seen": self.flops_seen, "flops_per_batch": self._flops_per_batch, "counted_params": self._counted_params}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens_seen = int(state_dict["tokens_seen"])
        self.flops_seen = float(state_dict["flops_seen"])
        self._flops_per_batch = state_dict.get("flops_per_batch")
        self._counted_params = int(state_dict.get("counted_params", -1))
