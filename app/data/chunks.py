"""A split's chunk files and the blocks in them, read the same way from a local folder or a cache.

litdata's ``TokensLoader`` lays a chunk out as a header (``chunk_size + 2`` uint32: the item
count, then the item offsets) followed by int32 tokens; a block of ``block_size`` tokens never
straddles two chunks, so chunk ``c`` holds ``dim // block_size`` blocks and a chunk's tail is
never read. Blocks are numbered through the split, as offline scores number them.

Reading a block is one ``pread`` of ``block_size`` tokens from its chunk's file: no reader state
to share between processes or threads. For a split in object storage the file is in the local
cache (``sprout.data.cache`` downloads training chunks ahead of use); a chunk that is not
there is downloaded by the reader itself (validation, which reads few chunks in order).
Downloads ride out a store's passing faults for up to ``data.store_retry_seconds``
(``sprout.data.store.retry``).

A reader checks each chunk file against its size and checksum (``sprout.data.checksums``) the
first time it reads it, and again whenever the file was replaced: a local chunk found bad is
read a second time (a failing disk or network file system may return other bytes), a cached
one is downloaded again; bad twice, it is refused in one paragraph.
"""

from __future__ import annotations

import functools
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from sprout.data.checksums import damaged, file_problem
from sprout.data.shards import INDEX_FILE, TOKEN_DTYPE
from sprout.data.store.client import ObjectStore, configured_endpoint, join
from sprout.data.store.retry import DEFAULT_SECONDS
from sprout.errors import SproutError

_ITEM = np.dtype(TOKEN_DTYPE).itemsize


class SplitChunks:
    """The chunks a split's ``index.json`` lists: file names, bytes, and the blocks each holds."""

    def __init__(self, split_dir: str | Path, block_size: int) -> None:
        self.split_dir = Path(split_dir)
        self.block_size = block_size
        chunks = json.loads((self.split_dir / INDEX_FILE).read_text())["chunks"]
        self.entries = chunks  # as index.json lists them: what a chunk file is checked against
        self.names = [c["filename"] for c in chunks]
        self.bytes = [int(c["chunk_bytes"]) for c in chunks]
        self.headers = [(int(c["chunk_size"]) + 2) * 4 for c in chunks]
        self.blocks = [int(c["dim"]) // block_size for c in chunks]
        self.starts = np.concatenate([[0], np.cumsum(self.blocks, dtype=np.int64)])

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    def chunk_of(self, block: int) -> int:
        return int(np.searchsorted(self.starts, block, side="right")) - 1

    def path(self, chunk: int) -> Path:
        return self.split_dir / self.names[chunk]


class BlockReader:
    """Blocks of one split by number, each chunk checked when first read; with ``url`` a missing
    chunk is downloaded into the split's folder first, and at most ``keep`` chunks this reader
    downloaded stay there."""

    def __init__(
        self,
        split_dir: str | Path,
        block_size: int,
        url: str | None = None,
        keep: int | None = None,
        retry_seconds: float = DEFAULT_SECONDS,
    ):
        self.chunks = SplitChunks(split_dir, block_size)
        self.url = url
        self.keep = keep
        self.retry_seconds = retry_seconds
        self._fetched: OrderedDict[int, None] = OrderedDict()
        self._good: set[tuple] = set()  # (chunk, inode, mtime, size) of chunk files found good

    def __len__(self) -> int:
        return self.chunks.total

    def __getitem__(self, block: int) -> np.ndarray:
        c = self.chunks.chunk_of(block)
        self._check(c)
        offset = self.chunks.headers[c] + (block - int(self.chunks.starts[c])) * self.chunks.block_size * _ITEM
        return np.fromfile(self.chunks.path(c), dtype=TOKEN_DTYPE, count=self.chunks.block_size, offset=offset)

    def _check(self, chunk: int) -> None:
        """Make sure the chunk's file is there and good: checked once per file this process sees."""
        path, entry = self.chunks.path(chunk), self.chunks.entries[chunk]
        if self._known_good(chunk):
            return
        if not path.is_file():
            if self.url is None:
                raise FileNotFoundError(path)  # the data module checked every local file at setup
            self._fetch(chunk)
        elif file_problem(path, entry) is not None:
            if self.url is not None:
                self._fetch(chunk, tries=1)  # downloaded again, once
            elif (what := file_problem(path, entry)) is not None:  # read again: the second answer decides
                raise damaged(path, what, None, "read twice")
        self._known_good(chunk, add=True)

    def _known_good(self, chunk: int, add: bool = False) -> bool:
        try:
            stat = self.chunks.path(chunk).stat()
        except FileNotFoundError:
            return False
        key = (chunk, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if add:
            self._good.add(key)
        return key in self._good

    def _fetch(self, chunk: int, tries: int = 2) -> None:
        download_chunk(self.url, self.chunks, chunk, self.retry_seconds, tries)
        self._fetched[chunk] = None
        while self.keep is not None and len(self._fetched) > self.keep:
            old, _ = self._fetched.popitem(last=False)
            self.chunks.path(old).unlink(missing_ok=True)


@functools.cache
def _store(url: str, retry_seconds: float, pid: int, endpoint: str | None) -> ObjectStore:
    """One client per split, process (a client's connections must not cross a fork) and endpoint."""
    return ObjectStore(url, retry_seconds)


def download_chunk(
    url: str, chunks: SplitChunks, chunk: int, retry_seconds: float = DEFAULT_SECONDS, tries: int = 2
) -> int:
    """Download one chunk of the split at ``url`` into its folder (whole or not at all) and check
    it; one of the wrong size or checksum is downloaded again, ``tries`` times in all, then refused.
    Returns its bytes."""
    store = _store(url, retry_seconds, os.getpid(), configured_endpoint())
    path, entry = chunks.path(chunk), chunks.entries[chunk]
    for _ in range(tries):
        if not store.download(chunks.names[chunk], path):
            raise SproutError(
                f"Shard {join(url, chunks.names[chunk])} is missing, though its split's index.json lists it: the data "
                "was changed in the store during the run. Re-run sprout prepare with --overwrite for this domain."
            )
        if (what := file_problem(path, entry)) is None:
            return chunks.bytes[chunk]
    path.unlink(missing_ok=True)
    raise damaged(path, what, join(url, chunks.names[chunk]), "downloaded twice")
