"""The run's one count of what it trained on: tokens and model FLOPs, over every rank.

The module counts each training batch as it runs it, with the shape it runs (so the count
follows growth); the monitor logs the totals, growth waits for ``growth.at_tokens`` on them
and the experiments compare runs at equal FLOPs. Model FLOPs are ``sprout.model.flops_per_token``
of the trained shape plus, for a batch an online reference model scores, its forward
(``sprout.model.forward_flops_per_token``): the run pays for it, so compute-matched comparisons
count it. The totals are run state, in a checkpoint's ``counter`` entry (not in ``sprout``,
the model's metadata, which ``save_model`` files carry on), so a resumed run continues them
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sprout.checkpoint.resume import callback_state
from sprout.model import LlamaConfig, flops_per_token, forward_flops_per_token

_MONITOR = "ThroughputMonitor"  # where checkpoints written before the counter existed kept the totals


@dataclass
class Counter:
    KEY: ClassVar[str] = "counter"  # its entry in a checkpoint
    tokens: int = 0
    flops: float = 0.0

    def count(
        self, input_ids: torch.Tensor, config: LlamaConfig, reference: LlamaConfig | None, world_size: int
    ) -> None:
        """Add one local batch run on every rank: ``config``'s model FLOPs and, when given, the
        forward of an online ``reference`` of that shape."""
        seq, tokens = input_ids.shape[-1], input_ids.numel()
        flops = float(flops_per_token(config, seq) * tokens)
        if reference is not None:
            flops += float(forward_flops_per_token(reference, seq) * tokens)
        self.tokens += tokens * world_size
        self.flops += flops * world_size

    def carry(self, stored: dict[str, Any]) -> None:
        """Add another run's totals (``stored``, from ``stored_in``): growth.source's small stage."""
        self.tokens += int(stored["tokens_seen"])
        self.flops += float(stored["flops_seen"])

    def state_dict(self) -> dict[str, Any]:
        return {"tokens_seen": self.tokens, "flops_seen": self.flops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens = int(state["tokens_seen"])
        self.flops = float(state["flops_seen"])

    @staticmethod
    def stored_in(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
        """The totals a checkpoint holds, or ``None`` (a ``save_model`` file, a run of other code)."""
        return checkpoint.get(Counter.KEY) or callback_state(checkpoint, _MONITOR)
