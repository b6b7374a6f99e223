"""Map-style access to prepared token shards, one ``StreamingDataset`` per domain.

Blocks are ``seq_len + 1`` tokens so that inputs and shifted targets come from one read.
The streaming datasets are opened lazily, inside whichever process reads, because a
DataLoader worker must not inherit an open reader from its parent. A split in object storage
(``url``) is read through litdata's cache: its local folder holds the split's ``index.json``
(see ``app.data.store.mirror``) and the chunks litdata downloads, at most ``cache_size`` bytes.

Every chunk is checked against its size and checksum before its first block is read
(``app.data.checksums``), and every block read is checked against the vocabulary its domain's ``meta.json`` records
(one min/max over the block in memory): a shard overwritten after preparation, which the
size check of the data module cannot see, then fails with the file to fix instead of an
index error deep inside the embedding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataset, TokensLoader
from litdata.streaming.resolver import Dir
from torch.utils.data import Dataset

from app.data.checksums import ChunkChecks
from app.data.scores import open_scores
from app.data.shards import INDEX_FILE, shard_vocab_size
from app.data.store.retry import DEFAULT_SECONDS, patiently, take_waited
from app.errors import SproutError


def open_blocks(
    split_dir: str | Path, block_size: int, url: str | None = None, cache_size: int | None = None
) -> StreamingDataset:
    """The split's blocks; with ``url`` streamed from there and cached in ``split_dir``."""
    if url is None:
        return StreamingDataset(str(split_dir), item_loader=TokensLoader(block_size=block_size), shuffle=False)
    from app.data.store.litdata_patch import LockedTokensLoader, allow_plain_http_endpoints, quiet_passing_faults

    allow_plain_http_endpoints()
    quiet_passing_faults()
    loader = LockedTokensLoader(block_size=block_size)
    return StreamingDataset(
        Dir(path=str(split_dir), url=url), item_loader=loader, shuffle=False, max_cache_size=cache_size
    )


def _read(url: str | None, retry_seconds: float, read: Callable[[], Any], reopen: Callable[[], None]) -> Any:
    """``read()`` a block; from a store, through its passing faults (``app.data.store.retry``),
    with the reader reopened before each retry (its download thread ends at a failure)."""
    if url is None:
        return read()
    return patiently(url, "reading", retry_seconds, read, reopen)


def _chunk_blocks(split_dir: str | Path, block_size: int) -> list[tuple[str, int]]:
    """(file name, blocks) per chunk as ``TokensLoader`` lays them out: each chunk holds
    ``dim // block_size`` blocks (a block never straddles two chunks)."""
    chunks = json.loads((Path(split_dir) / INDEX_FILE).read_text())["chunks"]
    return [(chunk["filename"], chunk["dim"] // block_size) for chunk in chunks]


def count_blocks(split_dir: str | Path, block_size: int) -> int:
    """Blocks in a split. Not ``len(StreamingDataset)``: under DDP that is one rank's share,
    while indexing stays global, so it would hide the other ranks' blocks."""
    return sum(n for _, n in _chunk_blocks(split_dir, block_size))


def chunk_file(split_dir: str | Path, block_size: int, block: int) -> Path:
    """The chunk file that holds ``block``."""
    chunks = _chunk_blocks(split_dir, block_size)
    ends = np.cumsum([n for _, n in chunks])
    return Path(split_dir) / chunks[int(np.searchsorted(ends, block, side="right"))][0]


def checked_tokens(tokens, split_dir: str | Path, block_size: int, block: int, vocab_size: int) -> torch.Tensor:
    """``tokens`` (block ``block`` of ``split_dir``) as int64, after checking every id is below ``vocab_size``."""
    tokens = torch.as_tensor(tokens).long()
    low, high = (int(v) for v in torch.aminmax(tokens))
    if low < 0 or high >= vocab_size:
        domain_dir = Path(split_dir).parent
        raise SproutError(
            f"Shard {chunk_file(split_dir, block_size, block)} of domain {domain_dir.name!r} holds token id {low if low < 0 else high} "
            f"(in sequence {block} of {split_dir}), but the domain's tokenizer has {vocab_size} ids (0..{vocab_size - 1}): the file was "
            f"overwritten or damaged after preparation. Re-run tools/prepare_data.py for domain {domain_dir.name!r} with --overwrite, "
            f"or copy {domain_dir} again from an intact copy."
        )
    return tokens


class DomainBlocks(Dataset):
    """Reads key ``(batch_no, domain, block)`` into one training sample.

    With ``score_dirs`` (offline reference scores, one folder per domain, see
    ``app.reference``) a sample also carries ``ref_loss``, the reference's loss on its targets.
    """

    def __init__(
        self,
        split_dirs: Sequence[str | Path],
        block_size: int,
        score_dirs: Sequence[str | Path] | None = None,
        urls: Sequence[str | None] | None = None,
        cache_sizes: Sequence[int | None] | None = None,
        retry_seconds: float = DEFAULT_SECONDS,
    ) -> None:
        self.split_dirs = [str(d) for d in split_dirs]
        self.block_size = block_size
        self.score_dirs = [str(d) for d in score_dirs] if score_dirs is not None else None
        self.urls = list(urls) if urls is not None else [None] * len(self.split_dirs)
        self.cache_sizes = list(cache_sizes) if cache_sizes is not None else [None] * len(self.split_dirs)
        self.retry_seconds = retry_seconds
        self.vocab_sizes = [shard_vocab_size(d) for d in self.split_dirs]
        self._datasets: list[StreamingDataset] | None = None
        self._checks: list[ChunkChecks] | None = None
        self._scores: list[np.ndarray] | None = None

    def sizes(self) -> list[int]:
        return [count_blocks(d, self.block_size) for d in self.split_dirs]

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        if self._datasets is None:
            self._datasets = [self._open(i) for i in range(len(self.split_dirs))]
            self._checks = [ChunkChecks(d, self.block_size, url) for d, url in zip(self.split_dirs, self.urls)]
        batch_no, domain, block = key

        def reopen() -> None:
            self._datasets[domain] = self._open(domain)

        item = _read(
            self.urls[domain],
            self.retry_seconds,
            lambda: self._checks[domain].read(block, lambda: self._datasets[domain][block], reopen),
            reopen,
        )
        tokens = checked_tokens(item, self.split_dirs[domain], self.block_size, block, self.vocab_sizes[domain])
        sample = {
            "input_ids": tokens[:-1],
            "targets": tokens[1:],
            "domain": torch.tensor(domain),
            "block": torch.tensor(block),
            "batch_no": torch.tensor(batch_no),
            "store_wait": torch.tensor(
                take_waited()
            ),  # seconds this read waited for the store: logged by the data module
        }
        if self.score_dirs is not None:
            if self._scores is None:
                self._scores = [open_scores(Path(d)) for d in self.score_dirs]
            sample["ref_loss"] = torch.from_numpy(self._scores[domain][block].astype(np.float32))
        return sample

    def _open(self, domain: int) -> StreamingDataset:
        return open_blocks(self.split_dirs[domain], self.block_size, self.urls[domain], self.cache_sizes[domain])

    def __len__(self) -> int:  # keys come from the sampler; this only satisfies the Dataset API
        return sum(self.sizes())


class SequentialBlocks(Dataset):
    """One domain's validation blocks in order, strided by rank so ranks share the work."""

    def __init__(
        self,
        split_dir: str | Path,
        block_size: int,
        domain: int,
        limit: int | None,
        rank: int = 0,
        world_size: int = 1,
        url: str | None = None,
        cache_size: int | None = None,
        retry_seconds: float = DEFAULT_SECONDS,
    ) -> None:
        self.split_dir = str(split_dir)
        self.retry_seconds = retry_seconds
        self.url = url
        self.cache_size = cache_size
        self.block_size = block_size
        self.domain = domain
        self.vocab_size = shard_vocab_size(split_dir)
        total = count_blocks(split_dir, block_size)
        self.indices = list(range(total))[: limit if limit else total][rank::world_size]
        self._dataset: StreamingDataset | None = None
        self._checks: ChunkChecks | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _reopen(self) -> None:
        self._dataset = open_blocks(self.split_dir, self.block_size, self.url, self.cache_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._dataset is None:
            self._reopen()
            self._checks = ChunkChecks(self.split_dir, self.block_size, self.url)
        block = self.indices[i]
        item = _read(
            self.url,
            self.retry_seconds,
            lambda: self._checks.read(block, lambda: self._dataset[block], self._reopen),
            self._reopen,
        )
        tokens = checked_tokens(item, self.split_dir, self.block_size, block, self.vocab_size)
        return {
            "input_ids": tokens[:-1],
            "targets": tokens[1:],
            "domain": torch.tensor(self.domain),
            "block": torch.tensor(block),
        }
