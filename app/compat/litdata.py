"""litdata's on-disk format where Sprout writes or reads it by hand, for the litdata versions it was checked against.

Preparation writes chunk files with litdata's ``BinaryWriter`` (one per worker task) and then
merges the tasks' indexes into one ``index.json`` per split, renaming chunks across tasks and
appending to an existing split (``sprout.data.prepare.merge``, ``.parts``). litdata's own
``merge_datasets`` copies whole datasets into an empty folder, so it cannot append or rename;
the index is written here instead, in the schema litdata reads (``chunks``, ``config``,
``updated_at``). ``read_chunk_tokens`` reads the tokens of a ``TokensLoader`` chunk past its header.
``require_litdata`` is the version check, for any module that relies on litdata's internals.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sprout.compat import require

LITDATA_TESTED = ("0.2.76", "0.2.77")  # [at least, below): pyproject.toml pins litdata==0.2.76


def require_litdata(why: str) -> str:
    """The installed litdata version, if these patches were written for it; else a ``SproutError`` saying ``why``."""
    return require("litdata", *LITDATA_TESTED, why)


require_litdata(
    "preparation writes litdata's index.json and reads TokensLoader chunk headers by hand (app/compat/litdata.py)"
)


def split_index(chunks: list[dict], config: dict | None) -> dict:
    """The ``index.json`` of one split: its chunk entries in reading order and the writer's config."""
    return {"chunks": chunks, "config": config, "updated_at": str(time.time())}


def read_chunk_tokens(path: Path, chunk: dict) -> np.ndarray:
    """The int32 tokens of one ``TokensLoader`` chunk file, after its header (the item count and
    ``chunk_size + 1`` offsets, 4 bytes each)."""
    return np.fromfile(path, dtype=np.int32, offset=(chunk["chunk_size"] + 2) * 4)
