"""Checkpoints of a grown run: they hold a larger model than the recipe's ``model.arch``.

A checkpoint records its model's shape (``sprout.model_config``) and, once written after
growth, the growth callback's ``grown_at``. Resuming needs no option: the module is rebuilt in
the stored shape before Lightning loads the weights (``stored_config`` from the module's
``on_load_checkpoint``), or, under ``ModelParallelStrategy``, which loads weights into what
``configure_model`` built, the shape is read before the fit starts (``stored_shape``).
"""

from __future__ import annotations

import os
from typing import Any

from sprout.checkpoint.resume import callback_state, stored_entries
from sprout.errors import SproutError
from sprout.model import LlamaConfig

STATE_KEY = "Growth"  # the growth callback's checkpoint state


def grown_in(checkpoint: dict[str, Any]) -> bool:
    """Whether ``checkpoint`` was written after growth (so it may hold another shape than the recipe's)."""
    state = callback_state(checkpoint, STATE_KEY)
    return bool(state) and state.get("grown_at") is not None


def stored_shape(path: str | os.PathLike) -> LlamaConfig | None:
    """The grown model's config stored in the checkpoint at ``path``; ``None`` before growth."""
    stored = stored_entries(path)
    return (
        LlamaConfig.from_dict(stored["sprout"]["model_config"]) if stored.get("sprout") and grown_in(stored) else None
    )


def stored_config(config: LlamaConfig, checkpoint: dict[str, Any], path: Any) -> LlamaConfig | None:
    """The config of the model ``checkpoint`` holds, with ``config``'s attention and init (which
    do not change the weights' meaning); ``None`` when it records none. A shape other than
    ``config``'s is an error unless the checkpoint was written after growth."""
    saved = (checkpoint.get("sprout") or {}).get("model_config")
    if saved is None:
        return None
    stored = LlamaConfig.from_dict(
        {**saved, "attention": config.attention, "init_std": config.init_std, "init": config.init}
    )
    if stored != config and not grown_in(checkpoint):
        differ = ", ".join(
            f"{k} {v} (recipe: {getattr(config, k)})" for k, v in stored.to_dict().items() if v != getattr(config, k)
        )
        raise SproutError(
            f"The checkpoint {path or 'to resume from'} holds another model than the recipe's: {differ}. Resume with the recipe that wrote it "
            "(its model.arch and model.arch_overrides); to train a larger model from it, start a new run with growth.source set to it."
        )
    return stored
