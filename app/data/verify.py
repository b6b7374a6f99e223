"""Check prepared data, a local folder or a store's URL, against the checksums its indexes record.

Training checks a chunk when it first reads it; this reads every chunk of every domain now,
e.g. after copying a data folder or before a long run, and says per domain in one line
whether all is well. Shards prepared before checksums were recorded are checked by size
only, and the line says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import xxhash

from sprout.data.checksums import CHECKSUM, file_problem, problem
from sprout.data.shards import INDEX_FILE, META_FILE, SPLITS, prepared_domains
from sprout.data.store.client import ObjectStore, is_remote
from sprout.data.store.mirror import remote_domains
from sprout.errors import SproutError

_LISTED = 3  # damaged chunks named per domain


def verify(data: str, domains: list[str] | None = None) -> dict[str, list[str]]:
    """Read every chunk of the prepared data DATA and check its size and checksum.

    Prints one line per domain, and fails (exit status 2) when a chunk is missing or damaged.

    Args:
        data: a prepared data folder, or its URL (s3://BUCKET/PREFIX) in object storage.
        domains: the domains to check (default: every prepared one).

    Returns:
        The damaged chunks per domain (where, and what is wrong), empty lists when all are well.
    """
    checked = _remote(data, domains) if is_remote(data) else _local(Path(data).expanduser(), domains)
    damaged = {}
    for domain, chunks in checked:
        found, count, total, unchecked = [], 0, 0, 0
        for where, chunk, what in chunks:
            count, total, unchecked = count + 1, total + chunk["chunk_bytes"], unchecked + (CHECKSUM not in chunk)
            if what is not None:
                found.append(f"{where} is {what}")
        damaged[domain] = found
        print(f"{domain}: {_summary(count, total, unchecked, found)}", flush=True)
    if not damaged:
        raise SproutError(f"No prepared domains in {data}: prepare data there with sprout prepare --out_dir {data}.")
    bad = [d for d, found in damaged.items() if found]
    if bad:
        raise SproutError(
            f"{data}: domain(s) {', '.join(map(repr, bad))} hold damaged or missing chunks (listed above). "
            f"Re-run sprout prepare --out_dir {data} with --overwrite for them, or copy them again from an intact copy."
        )
    return damaged


def _summary(count: int, total: int, unchecked: int, found: list[str]) -> str:
    chunks = f"{count} chunks ({total / 2**20:,.1f} MiB)"
    if found:
        return (
            f"{len(found)} of {chunks} damaged: "
            + "; ".join(found[:_LISTED])
            + ("; ..." if len(found) > _LISTED else "")
        )
    if unchecked == count:
        return f"{chunks} of the sizes their index says, but no checksums (prepared before Sprout recorded them; re-prepare with --overwrite to add them)"
    if unchecked:
        return f"{chunks} fine; {unchecked} of them have no checksum (appended to a domain prepared before Sprout recorded them), and have the right size"
    return f"{chunks} match their checksums"


Checked = Iterator[tuple[str, dict, str | None]]  # per chunk: where, its index entry, what is wrong (None: nothing)


def _local(root: Path, domains: list[str] | None) -> Iterator[tuple[str, Checked]]:
    if not root.is_dir():
        raise SproutError(
            f"{root} does not exist. Give a prepared data folder (sprout prepare --out_dir) or its s3:// URL."
        )

    def chunks(domain: str) -> Checked:
        for split in SPLITS:
            folder = root / domain / split
            index = folder / INDEX_FILE
            for chunk in json.loads(index.read_text())["chunks"] if index.is_file() else []:
                yield str(folder / chunk["filename"]), chunk, file_problem(folder / chunk["filename"], chunk)

    for domain in domains or prepared_domains(root):
        if not (root / domain / META_FILE).is_file():
            raise SproutError(_not_prepared(domain, str(root)))
        yield domain, chunks(domain)


def _remote(url: str, domains: list[str] | None) -> Iterator[tuple[str, Checked]]:
    store = ObjectStore(url)
    store.check()

    def chunks(domain: str) -> Checked:
        for split in SPLITS:
            index = store.read(f"{domain}/{split}/{INDEX_FILE}")
            for chunk in json.loads(index)["chunks"] if index is not None else []:
                key = f"{domain}/{split}/{chunk['filename']}"
                data = store.read(key)
                size = None if data is None else len(data)
                yield store.url_of(key), chunk, problem(size, chunk, lambda data=data: xxhash.xxh3_64_hexdigest(data))

    for domain in domains or remote_domains(store):
        if store.read(f"{domain}/{META_FILE}") is None:
            raise SproutError(_not_prepared(domain, url))
        yield domain, chunks(domain)


def _not_prepared(domain: str, data: str) -> str:
    return f"Domain {domain!r} is not prepared in {data} (no {domain}/{META_FILE} there). Check --domains, or prepare it with sprout prepare --out_dir {data}."
