"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (TinyLlama, LitGPT)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class WarmupCosine:
    """``lr(step) = peak * factor(step)``; ``max_steps=None`` takes the trainer's ``max_steps``.

    ``min_lr`` is absolute (TinyLlama: 4e-4 decays to 4e-5).
    """

    warmup_steps: int = 2000
    min_lr: float = 4e-5
    max_steps: int | None = None

    def factor(self, step: int, peak_lr: float, max_steps: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        floor = self.min_lr / peak_lr
        progress = min(1.0, (step - self.warmup_steps) / max(1, max_steps - self.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
