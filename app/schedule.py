"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (TinyLlama, LitGPT),
in segments: growth starts a new one at its step."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sprout.errors import SproutError, check_option, is_count, is_number, warn


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

    def check(self, peak_lr: float, trainer_max_steps: int | None, warn_odd: bool = True) -> None:
        """The run's schedule needs a length; with ``warn_odd``, warn of settings that are legal but
        almost surely wrong: a run that never leaves warm-up, a floor above the peak."""
        max_steps = self.max_steps or trainer_max_steps
        if max_steps is None or max_steps < 0:
            raise SproutError(
                "The LR schedule needs a length: set trainer.max_steps or model.schedule.max_steps in the recipe."
            )
        source = "model.schedule.max_steps" if self.max_steps else "trainer.max_steps"
        if warn_odd and max_steps > 0 and self.warmup_steps >= max_steps:
            reached = self.factor(max_steps - 1, peak_lr, max_steps)
            warn(
                f"model.schedule.warmup_steps={self.warmup_steps} is not below the run's {max_steps} steps ({source}={max_steps}): "
                f"the learning rate never leaves warm-up and ends at {reached:.1%} of its peak lr={peak_lr:g}. "
                f"Set model.schedule.warmup_steps to a small share of the run, e.g. {max(1, max_steps // 10)}."
            )
        if warn_odd and self.min_lr > peak_lr:
            warn(
                f"model.schedule.min_lr={self.min_lr:g} is above the peak model.optimizer.init_args.lr={peak_lr:g}: the cosine "
                f'"decay" raises the learning rate after warm-up. Set min_lr below lr (TinyLlama: lr 4e-4, min_lr 4e-5).'
            )


@dataclass(frozen=True)
class Segment:
    """One piece of a run's schedule: ``shape``'s warm-up + cosine, counted from ``start``, at
    ``peak_lr`` (``None``: the optimizer's), in force from step ``at``. A segment that continues
    its predecessor's curve (growth without a restart) keeps its ``start``."""

    at: int
    start: int
    shape: WarmupCosine
    peak_lr: float | None = None


class Schedule:
    """The run's learning-rate factor as segments: the recipe's first, and one more each time
    growth restarts (or re-peaks) the schedule, so growth adds a segment instead of setting
    state on the module. A checkpoint records the segment in force (``state_dict``): no step
    after it falls in an earlier one."""

    def __init__(self, shape: WarmupCosine) -> None:
        self.segments = [Segment(0, 0, shape)]

    @property
    def current(self) -> Segment:
        return self.segments[-1]

    def add(self, at: int, restart: bool, shape: WarmupCosine | None = None, peak_lr: float | None = None) -> None:
        """From step ``at`` on: a new warm-up + cosine over the steps left (``restart``) or the
        current curve continued; ``shape`` and ``peak_lr``, when given, replace the current ones."""
        now = self.current
        self.segments.append(
            Segment(
                at,
                at if restart else now.start,
                shape if shape is not None else now.shape,
                peak_lr if peak_lr is not None else now.peak_lr,
            )
        )

    def factor(self, step: int, optimizer_lr: float, run_steps: int) -> float:
        """``lr(step) / peak``: the segment in force at ``step``, over its steps up to its shape's
        ``max_steps`` or else the run's ``run_steps``."""
        segment = next((s for s in reversed(self.segments) if s.at <= step), self.segments[0])
        end = segment.shape.max_steps or run_steps
        return segment.shape.factor(max(0, step - segment.start), segment.peak_lr or optimizer_lr, end - segment.start)

    def state_dict(self) -> dict[str, Any]:
        now = self.current
        return {"schedule_start": now.start, "schedule": dataclasses.asdict(now.shape), "peak_lr": now.peak_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The segment in force when the checkpoint was written (older checkpoints: no shape stored, the recipe's)."""
        shape = WarmupCosine(**state["schedule"]) if "schedule" in state else self.segments[0].shape
        start = state.get("schedule_start", 0)
        self.segments = [Segment(start, start, shape, state.get("peak_lr"))]
