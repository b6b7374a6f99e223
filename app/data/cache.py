"""Training chunks of a split in object storage on this machine's disk: fetched ahead, evicted once read.

The sampler knows which chunks each domain reads next (``MixtureBatchSampler.chunks_ahead``: the
current window's, then ``data.prefetch`` more), so the main process downloads them in background
threads before a loader worker asks for a block of them, and deletes a chunk once no batch that
is still queued in the DataLoader reads it. Each chunk is then downloaded once per epoch of its
domain, whatever the size of the corpus against the cache, and the cache holds at most
``data.cache_size`` bytes plus what is in use: the windows being read, the chunks fetched ahead
and those of batches still queued. The workers read the files this process downloaded; they
download a chunk themselves only if it is not there (validation reads, which are few). Each
download is checked against its index and rides out the store's passing faults
(``sprout.data.chunks.download_chunk``), so the time training waits for the store is spent, and
logged, in this process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from sprout.data.chunks import SplitChunks, download_chunk
from sprout.data.sampler import MixtureBatchSampler
from sprout.data.store.retry import DEFAULT_SECONDS

Key = tuple[int, int]  # (domain, chunk)


class ChunkCache:
    """The training chunks of the remote domains (``splits[d]``: URL and chunks of domain ``d``).

    ``budget`` bytes are kept at most beyond the chunks in use; a chunk last read by batch ``b``
    is in use until batch ``b + lookahead`` is drawn (the DataLoader draws that far ahead).
    """

    def __init__(
        self,
        splits: Sequence[tuple[str, SplitChunks]],
        budget: int,
        lookahead: int,
        retry_seconds: float = DEFAULT_SECONDS,
        threads: int = 4,
    ) -> None:
        self.splits = list(splits)
        self.retry_seconds = retry_seconds
        self.budget = budget
        self.lookahead = lookahead
        self.downloads = 0
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sprout-chunks")
        self._pending: dict[Key, Future] = {}
        self._last_use: dict[Key, int] = {}  # chunks on disk: the last batch that reads them (-1: none yet)
        for d, (_, chunks) in enumerate(self.splits):  # chunks left by an earlier run count, and go first
            for c in range(len(chunks.names)):
                if chunks.path(c).is_file():
                    self._last_use[d, c] = -1
        self.size = sum(self.splits[d][1].bytes[c] for d, c in self._last_use)
        self.peak = self.size

    def step(self, batch_no: int, needed: set[Key], ahead: list[Key]) -> None:
        """Batch ``batch_no`` reads ``needed``; ``ahead`` will be read next. Start downloading
        ``ahead``, wait for ``needed``, and evict what no queued batch reads."""
        try:
            for key in ahead:
                if key not in self._pending and key not in self._last_use:
                    url, chunks = self.splits[key[0]]
                    self._pending[key] = self._pool.submit(download_chunk, url, chunks, key[1], self.retry_seconds)
            for key in needed:
                if key in self._pending:
                    self._arrived(key, self._pending.pop(key).result())
                elif key not in self._last_use or not self.splits[key[0]][1].path(key[1]).is_file():
                    self._last_use.pop(key, None)
                    url, chunks = self.splits[key[0]]
                    self._arrived(key, download_chunk(url, chunks, key[1], self.retry_seconds))
                self._last_use[key] = batch_no
            for key in [k for k, f in self._pending.items() if f.done()]:
                self._arrived(key, self._pending.pop(key).result())
            self._evict(batch_no, needed | set(ahead))
        except BaseException:  # the queued downloads would each wait out the store before this process could end
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise

    def _arrived(self, key: Key, size: int) -> None:
        self.downloads += 1
        self._last_use[key] = self._last_use.get(key, -1)
        self.size += size
        self.peak = max(self.peak, self.size)

    def _evict(self, batch_no: int, keep: set[Key]) -> None:
        if self.size <= self.budget:
            return
        done = sorted(
            (use, key) for key, use in self._last_use.items() if key not in keep and use < batch_no - self.lookahead
        )
        for _, (d, c) in done:
            if self.size <= self.budget:
                break
            self.splits[d][1].path(c).unlink(missing_ok=True)
            del self._last_use[d, c]
            self.size -= self.splits[d][1].bytes[c]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ReadAhead:
    """The sampler's batches, each yielded once the chunks it reads are on disk, with the chunks
    that come next downloading behind it. Without a cache (local data) the batches as they are."""

    def __init__(self, sampler: MixtureBatchSampler, cache: ChunkCache | None, prefetch: int) -> None:
        self.sampler = sampler
        self.cache = cache
        self.prefetch = prefetch

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in self.sampler:
            if self.cache is not None:
                orders = self.sampler.orders
                needed = {(d, orders[d].chunk_of(block)) for _, d, block in batch}
                live = [d for d, w in enumerate(self.sampler.weights) if w > 0]
                ahead = [(d, c) for d in live for c in self.sampler.chunks_ahead(d, self.prefetch)]
                self.cache.step(batch[0][0], needed, ahead)
            yield batch
