"""The on-disk format of prepared data, which ``sprout.data.prepare`` writes and everything else reads::

    <data_dir>/<domain>/train/      litdata chunks + index.json (TokensLoader, int32)
    <data_dir>/<domain>/val/        the same for held-out documents
    <data_dir>/<domain>/unigram.npy train unigram counts
    <data_dir>/<domain>/pairs.npz   train counts of adjacent token pairs (codes a * vocab + b, counts)
    <data_dir>/<domain>/meta.json   written last: its presence means the domain is complete

``meta.json`` records the format, the tokenizer's identity, per-split token and document
counts, the input files (each with size, time, hash and documents given), the validation
split's options and the domain's entropy statistics. The readers here turn a missing or
damaged file into one clear error naming the file and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sprout.errors import SproutError
from sprout.protocols import DomainStats

SHARD_FORMAT = "sprout-shards/1"
META_FILE = "meta.json"
INDEX_FILE = "index.json"  # litdata's list of a split's chunks
TOKEN_DTYPE = np.int32  # the tokens in a chunk, after its header
UNIGRAM_FILE = "unigram.npy"
PAIRS_FILE = "pairs.npz"  # kept so that a later append can merge the pair statistics exactly
SPLITS = ("train", "val")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # the one preparation copied beside the domains


def is_prepared(domain_dir: Path) -> bool:
    """Whether ``domain_dir`` holds a finished domain (its ``meta.json`` is written last)."""
    return (domain_dir / META_FILE).is_file()


def prepared_domains(data_dir: Path) -> list[str]:
    """The finished domains in ``data_dir``, sorted by name."""
    return sorted(p.name for p in data_dir.iterdir() if is_prepared(p))


def read_meta(domain_dir: Path) -> dict[str, Any]:
    path = domain_dir / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SproutError(
            f"{path} is missing: {domain_dir} is not a prepared domain (or its preparation did not finish). Run sprout prepare for it."
        ) from None
    except json.JSONDecodeError as err:
        raise SproutError(
            f"{path} is not valid JSON ({err}); re-run sprout prepare with --overwrite for this domain."
        ) from None


def check_shards(split_dir: Path) -> None:
    """Every chunk listed in the split's litdata index is there with the size the index says.

    Cheap (one stat per chunk) and catches a half-copied or truncated data folder before
    a DataLoader worker would fail reading it.
    """
    fix = f"Copy {split_dir.parent} again, or re-run sprout prepare for this domain with --overwrite."
    index = split_dir / INDEX_FILE
    if not split_dir.is_dir():
        raise SproutError(f"Shard folder {split_dir} is missing, though {split_dir.parent / META_FILE} is there. {fix}")
    try:
        chunks = json.loads(index.read_text())["chunks"]
    except FileNotFoundError:
        raise SproutError(f"{index} is missing, so the shards in {split_dir} cannot be read. {fix}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SproutError(f"{index} is corrupt ({type(err).__name__}: {err}). {fix}") from None
    for chunk in chunks:
        path = split_dir / chunk["filename"]
        size = path.stat().st_size if path.is_file() else None
        if size != chunk["chunk_bytes"]:
            found = "missing" if size is None else f"{size:,} bytes"
            raise SproutError(
                f"Shard {path} is {found}, but {index} says {chunk['chunk_bytes']:,} bytes: it is truncated or corrupt. {fix}"
            )


def shard_vocab_size(split_dir: str | Path) -> int:
    """How many token ids the split's tokenizer has, from its domain's ``meta.json``."""
    meta = Path(split_dir).parent / META_FILE
    try:
        return int(json.loads(meta.read_text())["tokenizer"]["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SproutError(
            f"{meta} cannot be read ({type(err).__name__}: {err}), so the shards in {split_dir} cannot be checked. Re-run sprout prepare for this domain with --overwrite."
        ) from None


def domain_stats(name: str, meta: dict[str, Any]) -> DomainStats:
    """What a mixture policy may know of a domain, from its ``meta.json``."""
    stats = meta.get("stats", {})
    entropy = {k: stats[f"{k}_entropy"] for k in ("unigram", "joint", "conditional") if f"{k}_entropy" in stats}
    if "unigram" in entropy:
        entropy["shannon"] = entropy.pop("unigram")
    train = meta["splits"]["train"]
    return DomainStats(
        name=name,
        tokens=int(train["tokens"]),
        documents=int(train.get("documents", 0)),
        entropy=entropy,
        vocab_size=int(meta.get("tokenizer", {}).get("vocab_size", 0)),
    )
