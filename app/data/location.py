"""Where prepared data lives: a local folder, or a URL in object storage mirrored into a local one.

The data module asks one interface the same questions either way (which domains, which folder
holds their ``meta.json`` and indexes, how each split is streamed) instead of branching on
whether ``data.data_dir`` is a URL.
"""

from __future__ import annotations

import os
from pathlib import Path

from sprout.data.cache import ChunkCache
from sprout.data.chunks import SplitChunks
from sprout.data.shards import META_FILE, SPLITS, check_shards, prepared_domains
from sprout.data.store.client import is_remote
from sprout.data.store.mirror import cache_bytes, local_cache_root, mirror, mirror_folder
from sprout.data.store.retry import DEFAULT_SECONDS
from sprout.errors import SproutError
from sprout.protocols import Preparation


class LocalData:
    """Prepared domains in a folder on this machine, read in place."""

    def __init__(self, data_dir: str, domains: list[str] | None) -> None:
        self.folder = Path(data_dir).expanduser()
        self.where = str(self.folder)
        self.requested = domains

    def fetch(self, preparation: Preparation | None, tokenizer: Path) -> None:
        """Build a missing folder with ``preparation`` (a prepared one is reused)."""
        if preparation is not None:
            preparation.run(self.folder, tokenizer)

    def found(self, fetched: bool) -> list[str]:
        """The prepared domains."""
        if not self.folder.is_dir():
            raise SproutError(
                f"data.data_dir {self.folder} does not exist. Prepare data with sprout prepare --out_dir {self.folder}, or fix the path in the recipe."
            )
        found = prepared_domains(self.folder)
        if not found and self.requested is None:
            raise SproutError(
                f"No prepared domains (folders with {META_FILE}) in data.data_dir {self.folder}. Run sprout prepare first."
            )
        return found

    def check(self, domain: str) -> None:
        for split in SPLITS:
            check_shards(self.folder / domain / split)

    def split_url(self, domain: str, split: str) -> None:
        """None: the split is read in place."""

    def cache(self, chunks: list[SplitChunks], ranks_here: int, lookahead: int, window: int, prefetch: int) -> None:
        """None: nothing to download."""


class RemoteData:
    """Prepared domains at a URL: their small files mirrored into ``cache_dir``, the chunks streamed."""

    def __init__(
        self,
        url: str,
        domains: list[str] | None,
        cache_dir: str | None,
        cache_size: str | int | None,
        retry_seconds: float = DEFAULT_SECONDS,
    ) -> None:
        self.url = self.where = url.rstrip("/")
        self.retry_seconds = retry_seconds
        self.requested = domains
        self.cache_dir = local_cache_root(cache_dir)
        self.cache_size = cache_size
        self.folder = mirror_folder(self.cache_dir, self.url)
        self._found: list[str] | None = None

    def fetch(self, preparation: Preparation | None, tokenizer: Path) -> None:
        """Fetch the small files (once per node, so the node's ranks never fetch them at the same time)."""
        if preparation is not None:
            raise SproutError(
                f"data.prepare builds a local data_dir, but data.data_dir is {self.url}. "
                f"Prepare it with sprout prepare --out_dir {self.url}, or remove data.prepare."
            )
        _, self._found = mirror(self.url, self.cache_dir, self.requested, self.retry_seconds)

    def found(self, fetched: bool) -> list[str]:
        """Domains at the URL; ``fetched`` when a Trainer already ran ``fetch`` on this node."""
        if self._found is None:
            if fetched:
                self._found = prepared_domains(self.folder)
            else:
                self.fetch(None, self.folder)
        return self._found

    def check(self, domain: str) -> None:
        """Nothing: the chunks were checked against their index when the mirror was fetched."""

    def split_url(self, domain: str, split: str) -> str:
        """Where the split's chunks are downloaded from (into ``folder/domain/split``)."""
        return f"{self.url}/{domain}/{split}"

    def cache(
        self, chunks: list[SplitChunks], ranks_here: int, lookahead: int, window: int, prefetch: int
    ) -> ChunkCache:
        """This rank's cache of the training chunks (``chunks[d]``: domain ``d``'s split), its
        share of ``data.cache_size`` among the ``ranks_here`` ranks of this machine; refused when
        that share cannot hold each domain's window and the chunks fetched ahead of it."""
        budget = cache_bytes(self.cache_size, self.cache_dir) // ranks_here
        needed = sum(sum(sorted(c.bytes)[-(window + prefetch) :]) for c in chunks)  # the largest chunks each
        if budget < needed:
            per_rank = f" for each of the {ranks_here} ranks on this machine" if ranks_here > 1 else ""
            size = self.cache_size if self.cache_size is not None else "null (75% of the disk free now)"
            raise SproutError(
                f"data.cache_size={size} gives {budget:,} bytes{per_rank}, but reading {len(chunks)} domain(s) of {self.url} "
                f"needs {needed:,}: data.window={window} chunks shuffled together plus data.prefetch={prefetch} chunks downloaded ahead, "
                f"per domain (the largest of them: {max(max(c.bytes) for c in chunks):,} bytes). Raise data.cache_size to at least "
                f"{needed * ranks_here:,} bytes, or lower data.window or data.prefetch."
            )
        splits = [(self.split_url(c.split_dir.parent.name, c.split_dir.name), c) for c in chunks]
        return ChunkCache(splits, budget, lookahead, self.retry_seconds)


def open_location(
    data_dir: str | os.PathLike,
    domains: list[str] | None,
    cache_dir: str | None,
    cache_size: str | int | None,
    retry_seconds: float = DEFAULT_SECONDS,
) -> LocalData | RemoteData:
    """``data.data_dir`` as a local folder or a URL; ``domains`` as ``data.domains`` names them."""
    if is_remote(data_dir):
        return RemoteData(str(data_dir), domains, cache_dir, cache_size, retry_seconds)
    return LocalData(str(data_dir), domains)
