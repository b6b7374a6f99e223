"""Training and validation samples from the blocks of prepared token shards.

Blocks are ``seq_len + 1`` tokens so that inputs and shifted targets come from one read, read
by ``sprout.data.chunks.BlockReader`` from a local folder or the cache of a split in object storage
alike, which checks each chunk's size and checksum the first time it reads it. Readers are
opened lazily, inside whichever process reads, and hold no open file, so DataLoader workers
start from nothing of their parent's.

Every block read is also checked against the vocabulary its domain's ``meta.json`` records
(one min/max over the block in memory): a shard overwritten after preparation, which the
size check of the data module cannot see, then fails with the file to fix instead of an
index error deep inside the embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sprout.data.chunks import BlockReader, SplitChunks
from sprout.data.scores import open_scores
from sprout.data.shards import shard_vocab_size
from sprout.data.store.retry import DEFAULT_SECONDS
from sprout.errors import SproutError


def open_blocks(
    split_dir: str | Path,
    block_size: int,
    url: str | None = None,
    keep: int | None = None,
    retry_seconds: float = DEFAULT_SECONDS,
) -> BlockReader:
    """The split's blocks; with ``url`` a chunk not in ``split_dir`` is downloaded there first,
    through the store's passing faults for up to ``retry_seconds``."""
    return BlockReader(split_dir, block_size, url, keep, retry_seconds)


def checked_tokens(tokens, split_dir: str | Path, block_size: int, block: int, vocab_size: int) -> torch.Tensor:
    """``tokens`` (block ``block`` of ``split_dir``) as int64, after checking every id is below ``vocab_size``."""
    tokens = torch.as_tensor(tokens).long()
    low, high = (int(v) for v in torch.aminmax(tokens))
    if low < 0 or high >= vocab_size:
        chunks = SplitChunks(split_dir, block_size)
        domain_dir = Path(split_dir).parent
        raise SproutError(
            f"Shard {chunks.path(chunks.chunk_of(block))} of domain {domain_dir.name!r} holds token id {low if low < 0 else high} "
            f"(in sequence {block} of {split_dir}), but the domain's tokenizer has {vocab_size} ids (0..{vocab_size - 1}): the file was "
            f"overwritten or damaged after preparation. Re-run sprout prepare for domain {domain_dir.name!r} with --overwrite, "
            f"or copy {domain_dir} again from an intact copy."
        )
    return tokens


class DomainBlocks(Dataset):
    """Reads key ``(batch_no, domain, block)`` into one training sample.

    With ``score_dirs`` (offline reference scores, one folder per domain, see
    ``sprout.reference``) a sample also carries ``ref_loss``, the reference's loss on its targets.
    """

    def __init__(
        self,
        split_dirs: Sequence[str | Path],
        block_size: int,
        score_dirs: Sequence[str | Path] | None = None,
        urls: Sequence[str | None] | None = None,
        retry_seconds: float = DEFAULT_SECONDS,
    ) -> None:
        self.split_dirs = [str(d) for d in split_dirs]
        self.block_size = block_size
        self.score_dirs = [str(d) for d in score_dirs] if score_dirs is not None else None
        self.urls = list(urls) if urls is not None else [None] * len(self.split_dirs)
        self.retry_seconds = retry_seconds
        self.vocab_sizes = [shard_vocab_size(d) for d in self.split_dirs]
        self._readers: list[BlockReader] | None = None
        self._scores: list[np.ndarray] | None = None

    def chunks(self) -> list[SplitChunks]:
        return [SplitChunks(d, self.block_size) for d in self.split_dirs]

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        if self._readers is None:
            self._readers = [
                open_blocks(d, self.block_size, url, retry_seconds=self.retry_seconds)
                for d, url in zip(self.split_dirs, self.urls)
            ]
        batch_no, domain, block = key
        tokens = checked_tokens(
            self._readers[domain][block], self.split_dirs[domain], self.block_size, block, self.vocab_sizes[domain]
        )
        sample = {
            "input_ids": tokens[:-1],
            "targets": tokens[1:],
            "domain": torch.tensor(domain),
            "block": torch.tensor(block),
            "batch_no": torch.tensor(batch_no),
        }
        if self.score_dirs is not None:
            if self._scores is None:
                self._scores = [open_scores(Path(d)) for d in self.score_dirs]
            sample["ref_loss"] = torch.from_numpy(self._scores[domain][block].astype(np.float32))
        return sample

    def __len__(self) -> int:  # keys come from the sampler; this only satisfies the Dataset API
        return sum(c.total for c in self.chunks())


class SequentialBlocks(Dataset):
    """One domain's validation blocks in order, strided by rank so ranks share the work; from
    object storage each reading process keeps only the chunk it is reading."""

    def __init__(
        self,
        split_dir: str | Path,
        block_size: int,
        domain: int,
        limit: int | None,
        rank: int = 0,
        world_size: int = 1,
        url: str | None = None,
        retry_seconds: float = DEFAULT_SECONDS,
    ) -> None:
        self.split_dir = str(split_dir)
        self.url = url
        self.retry_seconds = retry_seconds
        self.block_size = block_size
        self.domain = domain
        self.vocab_size = shard_vocab_size(split_dir)
        total = SplitChunks(split_dir, block_size).total
        self.indices = list(range(total))[: limit if limit else total][rank::world_size]
        self._reader: BlockReader | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._reader is None:
            self._reader = open_blocks(self.split_dir, self.block_size, self.url, 1, self.retry_seconds)
        block = self.indices[i]
        tokens = checked_tokens(self._reader[block], self.split_dir, self.block_size, block, self.vocab_size)
        return {
            "input_ids": tokens[:-1],
            "targets": tokens[1:],
            "domain": torch.tensor(self.domain),
            "block": torch.tensor(block),
        }
