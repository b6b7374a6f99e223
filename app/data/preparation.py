"""Data a recipe can build on first use, so a run needs no separate preparation step."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


class Preparation(ABC):
    """Builds a prepared ``data_dir`` (domains + tokenizer) if it is not there yet.

    ``run`` is called on the main process before training; it must be idempotent, so a
    second run reuses what the first one wrote.
    """

    @abstractmethod
    def run(self, data_dir: Path, tokenizer_path: Path) -> None: ...
