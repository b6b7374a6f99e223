"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (TinyLlama, LitGPT)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.errors import check_option, is_count, is_number


@dataclass
class WarmupCosine:
    """``lr(step) = peak * factor(step)``; ``max_steps=None`` takes the trainer's ``max_steps``.

    ``min_lr`` is absolute (TinyLlama: 4e-4 decays to 4e-5).
    """

    warmup_steps: int = 2000
    min_lr: float = 4e-5
    max_steps: int | None = None

    def __post_init__(self) -> None:
        check_option(
            is_count(self.warmup_steps, 0),
            "model.schedule.warmup_steps",
            self.warmup_steps,
            "a whole number of steps >= 0",
        )
        check_option(
            is_number(self.min_lr),
            "model.schedule.min_lr",
            self.min_lr,
            "a finite learning rate >= 0 (TinyLlama: 4e-5)",
        )
        check_option(
            self.max_steps is None or is_count(self.max_steps),
            "model.schedule.max_steps",
            self.max_steps,
            "a positive number of steps, or null for trainer.max_steps",
        )

    def factor(self, step: int, peak_lr: float, max_steps: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        floor = self.min_lr / peak_lr
        progress = min(1.0, (step - self.warmup_steps) / max(1, max_steps - self.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
