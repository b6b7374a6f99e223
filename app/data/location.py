"""Where prepared data lives: a local folder, or a URL in object storage mirrored into a local one.

The data module asks one interface the same questions either way (which domains, which folder
holds their ``meta.json`` and indexes, how each split is streamed) instead of branching on
whether ``data.data_dir`` is a URL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from app.data.shards import INDEX_FILE, META_FILE, SPLITS, check_shards, prepared_domains
from app.data.store.client import is_remote
from app.data.store.mirror import cache_budgets, local_cache_root, mirror, mirror_folder
from app.data.store.retry import DEFAULT_SECONDS
from app.errors import SproutError
from app.protocols import Preparation

Stream = tuple[str | None, int | None]  # a split's URL (None: read in place) and its share of data.cache_size


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
                f"data.data_dir {self.folder} does not exist. Prepare data with tools/prepare_data.py --out_dir {self.folder}, or fix the path in the recipe."
            )
        found = prepared_domains(self.folder)
        if not found and self.requested is None:
            raise SproutError(
                f"No prepared domains (folders with {META_FILE}) in data.data_dir {self.folder}. Run tools/prepare_data.py first."
            )
        return found

    def check(self, domain: str) -> None:
        for split in SPLITS:
            check_shards(self.folder / domain / split)

    def streams(self, domains: list[str]) -> dict[tuple[str, str], Stream]:
        return {(d, s): (None, None) for s in SPLITS for d in domains}


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
                f"Prepare it with tools/prepare_data.py --out_dir {self.url}, or remove data.prepare."
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

    def streams(self, domains: list[str]) -> dict[tuple[str, str], Stream]:
        splits = [(d, s) for s in SPLITS for d in domains]
        indexes = [json.loads((self.folder / d / s / INDEX_FILE).read_text()) for d, s in splits]
        sizes = [sum(c["chunk_bytes"] for c in index["chunks"]) for index in indexes]
        budgets = cache_budgets(self.cache_size, sizes)
        return {(d, s): (f"{self.url}/{d}/{s}", b) for (d, s), b in zip(splits, budgets)}


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
