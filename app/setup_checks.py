"""What a run checks before it trains that no single component owns: the data fits the model."""

from __future__ import annotations

from typing import Any

from sprout.errors import SproutError
from sprout.model import LlamaConfig


def check_data_fits(config: LlamaConfig, dm: Any) -> None:
    """The data module's tokenizer and sequences fit the model's embedding and context."""
    if dm.vocab_size > config.vocab_size:
        raise SproutError(
            f"The tokenizer {dm.tokenizer_path} has {dm.vocab_size} tokens but the model's embedding has "
            f"vocab_size={config.vocab_size}. Set model.arch_overrides.vocab_size to at least {dm.vocab_size} "
            f"(a multiple of 64 is fastest) or use the tokenizer the model was built for."
        )
    if dm.seq_len > config.block_size:
        raise SproutError(
            f"data.seq_len={dm.seq_len} is longer than the model's context block_size={config.block_size}. Lower data.seq_len or set model.arch_overrides.block_size."
        )
