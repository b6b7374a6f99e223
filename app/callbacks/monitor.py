"""What a researcher watches besides the loss: tokens, tokens/s, FLOPs, MFU/HFU, mixture weights."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from sprout.counter import Counter
from sprout.errors import check_option, is_count, is_number
from sprout.flops import flop_counter_mode
from sprout.peaks import gpu_peak, measured_matmul_peak


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class ThroughputMonitor(L.Callback):
    """Logs ``perf/*`` every ``log_every`` steps: the run's tokens and FLOPs (``sprout.counter``),
    their rates and utilisation.

    Two utilisations, as Megatron-LM and PaLM define them, both FLOP/s per device over
    ``peak_flops``:

    * ``perf/mfu`` (model FLOPs utilisation): the FLOPs the model needs, whatever the
      implementation, ``sprout.model.flops_per_token`` of the shape the batch ran with (6 per
      matmul weight per token plus attention), so it follows growth and does not depend on
      sharding. An online reference model (Rho-1's ``model.reference``) adds its forward,
      ``sprout.model.forward_flops_per_token`` of its shape (2 per weight per token), for every batch
      it scores: the run pays for it, so compute-matched comparisons must count it (offline
      scores cost nothing per step; their one-off scoring is the experiment's to report).
      ``perf/flops_seen`` and ``perf/flops_per_s_per_device`` count these model FLOPs too: they
      are what compute-matched comparisons and scaling laws use.
    * ``perf/hfu`` (hardware FLOPs utilisation): the FLOPs the device actually ran, counted
      with ``torch.utils.flop_counter`` over one real training step and again whenever the
      model changes size (growth). This includes recomputation (activation checkpointing,
      the chunked loss's head in backward where it recomputes rather than keeps its logits'
      gradient, attention's scores in backward) and an online reference model's forward, so
      it is at least MFU.

    Token selection does not change either: forward and backward still run over every token.
    ``peak_flops`` is the datasheet value of a known GPU, the value given here, or on CPU the
    measured dense matmul peak of the machine.

    Args:
        peak_flops: peak FLOP/s of one device; ``null`` picks it as described above.
        log_every: steps between throughput logs.
    """

    def __init__(self, peak_flops: float | None = None, log_every: int = 10) -> None:
        check_option(
            peak_flops is None or is_number(peak_flops, strict=True),
            "monitor.peak_flops",
            peak_flops,
            "a positive FLOP/s rate, or null to pick it",
        )
        check_option(is_count(log_every), "monitor.log_every", log_every, "a positive number of steps")
        self.peak_flops = peak_flops
        self.log_every = log_every
        self._counter = Counter()  # the module's (sprout.counter), from on_fit_start on
        self._flops_per_batch: float | None = None  # counted (hardware) FLOPs of one local batch
        self._counted_params = -1
        self._batch_params = 0
        self._counter_mode: FlopCounterMode | None = None
        self._counted_flops_seen = 0.0  # since this process started; only differences are used
        self._window: tuple[float, int, float, float] | None = (
            None  # (time, tokens, model FLOPs, counted FLOPs) at window start
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._counter = pl_module.counter
        if self.peak_flops is None:
            dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
            self.peak_flops = gpu_peak(pl_module.device, dtype) or (
                measured_matmul_peak(dtype) if pl_module.device.type == "cpu" else None
            )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Taken before the step: a growth callback may swap the model in its own batch-end hook.
        self._batch_params = _param_count(pl_module)
        if self._batch_params != self._counted_params:
            self._counter_mode = flop_counter_mode()
            self._counter_mode.__enter__()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._counter_mode is not None:
            self._counter_mode.__exit__(None, None, None)
            self._flops_per_batch = float(self._counter_mode.get_total_flops())
            self._counted_params = self._batch_params
            self._counter_mode = None
            self._window = None  # the counted step is slow; start timing afresh
        world = trainer.world_size
        tokens, flops = self._counter.tokens, self._counter.flops
        self._counted_flops_seen += (self._flops_per_batch or 0.0) * world
        step = trainer.global_step
        pl_module.log("perf/tokens_seen", float(tokens))
        pl_module.log("perf/flops_seen", flops)
        now = time.perf_counter()
        if self._window is None:
            self._window = (now, tokens, flops, self._counted_flops_seen)
            return
        if step % self.log_every:
            return
        t0, tokens0, model0, counted0 = self._window
        dt = now - t0
        if dt <= 0:
            return
        tokens_per_s = (tokens - tokens0) / dt
        model_flops_per_s = (flops - model0) / dt / world
        pl_module.log("perf/tokens_per_s", tokens_per_s, prog_bar=True)
        pl_module.log("perf/tokens_per_s_per_device", tokens_per_s / world)
        pl_module.log("perf/flops_per_s_per_device", model_flops_per_s)
        if self.peak_flops:
            pl_module.log("perf/mfu", model_flops_per_s / self.peak_flops)
            pl_module.log("perf/hfu", (self._counted_flops_seen - counted0) / dt / world / self.peak_flops)
        dm = getattr(trainer, "datamodule", None)
        for domain, weight in getattr(dm, "mixture_weights", {}).items():
            pl_module.log(f"mixture/weight/{domain}", weight)
        self._window = (now, tokens, flops, self._counted_flops_seen)

    def state_dict(self) -> dict[str, Any]:
        # The per-batch count is kept too: counting runs the step under FlopCounterMode, whose
        # kernels round differently, so recounting after a resume would break bit-exact resume.
        # The run's totals are the module's (a checkpoint's ``counter``); they are repeated here for
        # readers of this section, which held them before the counter had one home.
        return {
            **self._counter.state_dict(),
            "flops_per_batch": self._flops_per_batch,
            "counted_params": self._counted_params,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._flops_per_batch = state_dict.get("flops_per_batch")
        self._counted_params = int(state_dict.get("counted_params", -1))
