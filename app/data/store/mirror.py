"""The training mirror: the small files of prepared data in object storage, in a local folder.

Training fetches the tokenizer, every ``meta.json`` and split index into ``data.cache_dir``, laid
out like a prepared ``data_dir``, and checks that every chunk an index lists is in the store with
its size; the chunks themselves are streamed into the same folder as they are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from sprout.data.shards import INDEX_FILE, META_FILE, SPLITS, TOKENIZER_FILES
from sprout.data.store.client import ObjectStore, configured_endpoint
from sprout.data.store.retry import DEFAULT_SECONDS
from sprout.errors import SproutError


def local_cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """Where streamed data is cached on this machine (``data.cache_dir``, default ``~/.cache/sprout/streams``)."""
    return Path(cache_dir or Path("~/.cache/sprout/streams")).expanduser()


def mirror_folder(cache_root: Path, url: str) -> Path:
    """This URL's folder under the cache: readable, and distinct per bucket, prefix and endpoint."""
    store = ObjectStore(url)
    endpoint = (configured_endpoint() or "") if store.scheme == "s3" else ""
    tag = hashlib.sha256(f"{store.url}|{endpoint}".encode()).hexdigest()[:10]
    readable = "-".join(p for p in (store.scheme, store.bucket, *store.prefix.split("/")) if p)
    return cache_root / f"{readable[:80]}-{tag}"


def _refresh(store: ObjectStore, key: str, local: Path) -> bool:
    """Fetch ``key`` to ``local``; when a split's index changed, the chunks cached beside it are
    stale (the data was re-prepared) and are removed. False when the object does not exist."""
    data = store.read(key)
    if data is None:
        return False
    if local.is_file() and local.read_bytes() == data:
        return True
    if local.name == INDEX_FILE and local.parent.is_dir():
        shutil.rmtree(local.parent)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, local)
    return True


def remote_domains(store: ObjectStore) -> list[str]:
    """Domains whose upload finished (their ``meta.json``, written last, is there)."""
    return sorted(
        d for d in store.list(delimiter=True) if not d.startswith(".") and store.read(f"{d}/{META_FILE}") is not None
    )


def mirror(
    url: str, cache_root: Path, domains: list[str] | None, retry_seconds: float = DEFAULT_SECONDS
) -> tuple[Path, list[str]]:
    """Bring the small files of the prepared data at ``url`` into a local folder laid out like a
    prepared ``data_dir`` (tokenizer, ``<domain>/meta.json``, ``<domain>/<split>/index.json``),
    where the chunks are then downloaded as training reads them. Returns the folder and the domains found
    (all prepared ones, or those of ``domains`` that are).

    Also checks that every chunk an index lists is in the store with the size the index says,
    so a half-uploaded or damaged copy fails here instead of in a DataLoader worker.
    """
    store = ObjectStore(url, retry_seconds)
    store.check()
    folder = mirror_folder(cache_root, url)
    if domains is None:
        if not store.writable:
            raise SproutError(
                f"data.data_dir {url}: the domains under a {store.scheme}:// URL cannot be listed. Name them in data.domains."
            )
        found = remote_domains(store)
        if not found:
            raise SproutError(
                f"No prepared domains at data.data_dir {url} (no <domain>/{META_FILE} under it; a domain gets its {META_FILE} only once its upload has finished). "
                f"Prepare data with sprout prepare --out_dir {url}, wait for a running preparation to finish, or fix the URL."
            )
        for stale in folder.glob(f"*/{META_FILE}"):  # domains removed from the store since the last fetch
            if stale.parent.name not in found:
                stale.unlink()
    else:
        found = [d for d in domains if _refresh(store, f"{d}/{META_FILE}", folder / d / META_FILE)]
    for name in TOKENIZER_FILES:
        _refresh(store, name, folder / name)
    for domain in found:
        _refresh(store, f"{domain}/{META_FILE}", folder / domain / META_FILE)
        for split in SPLITS:
            if not _refresh(store, f"{domain}/{split}/{INDEX_FILE}", folder / domain / split / INDEX_FILE):
                raise SproutError(
                    f"{store.url_of(f'{domain}/{split}/{INDEX_FILE}')} is missing, though {store.url_of(f'{domain}/{META_FILE}')} is there. Re-run sprout prepare --out_dir {url} with --overwrite for domain {domain!r}."
                )
            if store.writable:
                check_chunks(store, f"{domain}/{split}", folder / domain / split / INDEX_FILE, url)
    return folder, found


def check_chunks(store: ObjectStore, split: str, index: Path, url: str) -> None:
    """Every chunk the split's index lists is in the store with the size the index says."""
    sizes = {o.key.rsplit("/", 1)[-1]: o.size for o in store.list(f"{split}/")}
    for chunk in json.loads(index.read_text())["chunks"]:
        size = sizes.get(chunk["filename"])
        if size != chunk["chunk_bytes"]:
            found = "missing" if size is None else f"{size:,} bytes"
            where = store.url_of(f"{split}/{chunk['filename']}")
            raise SproutError(
                f"Shard {where} is {found}, but its index.json says {chunk['chunk_bytes']:,} bytes: the upload is "
                f"incomplete or the object was changed. Re-run sprout prepare --out_dir {url} with --overwrite for this domain."
            )


def cache_bytes(cache_size: str | int | None, cache_dir: Path) -> int:
    """``data.cache_size`` in bytes; by default 75% of the disk free under ``cache_dir`` now."""
    if cache_size is not None:
        return parse_size(cache_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(cache_dir).free * 3 // 4


def parse_size(size: str | int) -> int:
    """Bytes in ``size``: an int, or a string like ``200GB``, ``1.5T``, ``500MiB``."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGTP]?)(i?B?)\s*", str(size), re.IGNORECASE)
    if not match or size in ("", "."):
        raise SproutError(
            f"data.cache_size={size!r} is not a size: write bytes as a number, or e.g. 500MB, 200GB, 2TB."
        )
    value, unit = float(match[1]), match[2].upper()
    return int(value * 1024 ** "KMGTP".find(unit) * 1024) if unit else int(value)
