"""What to grow, into what, when, and how stage 2 trains: the recipe's ``growth:`` section, checked.

Every option of the section is a field here; a combination that cannot run is a recipe
error naming the option as soon as the plan is made, before any data is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sprout.errors import SproutError, check_option, is_count
from sprout.model import CONFIGS, SHAPE_FIELDS, LlamaConfig, param_count
from sprout.protocols import GrowthOperator
from sprout.schedule import WarmupCosine

_STAGE2 = ("stage2_lr", "stage2_min_lr", "stage2_warmup_steps", "stage2_max_steps")


@dataclass
class GrowthPlan:
    """The growth section (see ``sprout.callbacks.growth.Growth`` for each option's meaning)."""

    operator: GrowthOperator | None = None
    target_arch: str | None = None
    target_overrides: dict[str, Any] = field(default_factory=dict)
    at_step: int | None = None
    at_tokens: int | None = None
    source: str | None = None
    restart_schedule: bool = True
    fresh_optimizer: bool = True
    save_stage: bool = True
    stage2_lr: float | None = None
    stage2_min_lr: float | None = None
    stage2_warmup_steps: int | None = None
    stage2_max_steps: int | None = None

    def __post_init__(self) -> None:
        self.target_overrides = dict(self.target_overrides or {})
        check_option(
            self.at_step is None or is_count(self.at_step, 0),
            "growth.at_step",
            self.at_step,
            "a number of optimizer steps >= 0",
        )
        check_option(
            self.at_tokens is None or is_count(self.at_tokens, 0),
            "growth.at_tokens",
            self.at_tokens,
            "a number of training tokens >= 0",
        )
        if self.operator is None:
            self._check_inert()
        else:
            self._check_stage2()
            self._check_when_and_what()

    @property
    def stage2_options(self) -> dict[str, float | int]:
        """The stage-2 options the recipe sets, by name."""
        return {name: getattr(self, name) for name in _STAGE2 if getattr(self, name) is not None}

    def target_config(self, source: LlamaConfig) -> LlamaConfig:
        """The grown model's config: ``source`` with the target's shape fields."""
        shape = {}
        if self.target_arch is not None:
            if self.target_arch not in CONFIGS:
                raise SproutError(
                    f"growth.target_arch={self.target_arch!r} is not a known shape; use one of {', '.join(CONFIGS)} or set growth.target_overrides."
                )
            shape = {k: CONFIGS[self.target_arch][k] for k in SHAPE_FIELDS}  # the rest stays the trained model's
        try:
            return source.replace(**{**shape, **self.target_overrides})
        except SproutError as err:
            raise SproutError(
                f"growth.target_arch / growth.target_overrides give an invalid grown model: {err}"
            ) from None

    def stage2_schedule(self, schedule: WarmupCosine, step: int) -> WarmupCosine | None:
        """``schedule`` with the grown model's floor, warm-up and horizon (its cosine ends
        ``stage2_max_steps`` after growth at ``step``), if the recipe sets them."""
        end = None if self.stage2_max_steps is None else step + self.stage2_max_steps
        changes = {
            k: v
            for k, v in (
                ("min_lr", self.stage2_min_lr),
                ("warmup_steps", self.stage2_warmup_steps),
                ("max_steps", end),
            )
            if v is not None
        }
        return dataclasses.replace(schedule, **changes) if changes else None

    def describe(self, origin: str, source: LlamaConfig, target: LlamaConfig, stage_checkpoint: object) -> str:
        """The growth event in words, for the console and TensorBoard."""
        return (
            f"Growth {origin}: {type(self.operator).__name__} grew {_shape(source)} to {_shape(target)}; "
            f"schedule {'restarted' if self.restart_schedule else 'continued'}"
            + "".join(f", {name.removeprefix('stage2_')} {value}" for name, value in self.stage2_options.items())
            + f", optimizer {'fresh' if self.fresh_optimizer else 'carried over'}."
            + (f" Stage-1 checkpoint: {stage_checkpoint}" if stage_checkpoint else "")
        )

    def _check_inert(self) -> None:
        if stage2 := self.stage2_options:
            names = ", ".join(f"growth.{name}" for name in stage2)
            raise SproutError(
                f"{names} set(s) the learning rate of the grown model, but the recipe grows nothing (no growth.operator). Remove {names}, or add a growth.operator with its target and at_step."
            )
        if self.source or self.at_step is not None or self.at_tokens is not None:
            raise SproutError(
                "The recipe's growth section sets when or what to grow but no growth.operator; add e.g. `operator: {class_path: gstack}`."
            )

    def _check_stage2(self) -> None:
        for name, value in self.stage2_options.items():
            whole = name in ("stage2_warmup_steps", "stage2_max_steps")
            least = 1 if name == "stage2_max_steps" else 0
            if (
                isinstance(value, bool)
                or not isinstance(value, int if whole else (int, float))
                or not (value >= least if whole else 0 < value < float("inf"))
            ):
                raise SproutError(
                    f"growth.{name} must be {f'a number of steps >= {least}' if whole else 'a positive learning rate'}, got {value!r}; fix it in the recipe's growth section."
                )
        for name in ("stage2_warmup_steps", "stage2_max_steps"):
            if getattr(self, name) is not None and not self.restart_schedule:
                raise SproutError(
                    f"growth.{name} shapes a restarted schedule, but growth.restart_schedule is false; remove one of the two."
                )

    def _check_when_and_what(self) -> None:
        if self.source is not None:
            if self.at_step is not None or self.at_tokens is not None:
                raise SproutError(
                    "growth.source grows a checkpoint at the start of the run, so growth.at_step / growth.at_tokens must not be set with it; remove one of them."
                )
        elif (self.at_step is None) == (self.at_tokens is None):
            raise SproutError(
                "Set exactly one of growth.at_step (optimizer steps) or growth.at_tokens (training tokens) to say when to grow, or growth.source to grow a saved checkpoint."
            )
        if not self.fresh_optimizer and type(self.operator).source_parameter is GrowthOperator.source_parameter:
            raise SproutError(
                f"growth.fresh_optimizer: false needs an operator that maps each grown parameter to its source; {type(self.operator).__name__} does not "
                "(depth operators gstack, zero_depth and random_depth do). Set growth.fresh_optimizer: true."
            )
        if not self.fresh_optimizer and self.source is not None:
            raise SproutError(
                "growth.source loads only the small model's weights, not its optimizer state; set growth.fresh_optimizer: true with it."
            )
        if not self.target_arch and not self.target_overrides:
            raise SproutError(
                "growth needs the grown model's shape: set growth.target_arch (e.g. llama-1.1b-24l) or growth.target_overrides (e.g. {n_layer: 8})."
            )


def _shape(c: LlamaConfig) -> str:
    return f"{c.n_layer} layers x {c.n_embd} wide ({c.n_head} heads, {c.n_kv_head} KV, FFN {c.intermediate_size}; {param_count(c) / 1e6:.2f}M params)"
