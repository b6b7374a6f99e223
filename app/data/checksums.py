"""A checksum per chunk, recorded at preparation and checked when a chunk is first read.

Bytes rot on disks, copies get cut off, and an object in a store can be overwritten: a chunk
with the right size but other bytes would otherwise train silently on garbage. Preparation
records each chunk's xxh3-64 digest in the split's ``index.json``, beside the size litdata's
writer records there (the index already travels with its chunks through merges, appends, parts and
uploads, and the mirror of a remote split fetches it anyway; readers ignore the extra key).
``sprout.data.chunks`` checks a chunk's size and digest the first time a process reads it (and a
download as it arrives); a bad one is read (or, from a store, downloaded) again once, then
refused in one paragraph (``damaged``). Shards prepared before digests were recorded are
checked by size only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import xxhash

from sprout.errors import SproutError

CHECKSUM = "xxh3_64"  # the key of a chunk's digest in index.json
_READ = 8 << 20


def digest(path: str | os.PathLike) -> str:
    """The xxh3-64 hex digest of a file (read in 8 MiB pieces)."""
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while piece := f.read(_READ):
            h.update(piece)
    return h.hexdigest()


def add_checksums(folder: Path) -> None:
    """Record every chunk's digest in the litdata index files (``*.index.json``) of ``folder``."""
    for index_file in folder.glob("*.index.json"):
        index = json.loads(index_file.read_text())
        for chunk in index["chunks"]:
            chunk[CHECKSUM] = digest(folder / chunk["filename"])
        index_file.write_text(json.dumps(index))


def problem(size: int | None, chunk: dict, checksum: Callable[[], str]) -> str | None:
    """What is wrong with a chunk of ``size`` bytes (None: missing) against its index entry;
    ``checksum`` gives its digest, asked for only when the size is right. None when it is fine,
    or as far as an entry without a digest can tell."""
    if size is None:
        return "missing"
    if size != chunk["chunk_bytes"]:
        return f"{size:,} bytes, but its index.json says {chunk['chunk_bytes']:,}"
    if CHECKSUM in chunk and (found := checksum()) != chunk[CHECKSUM]:
        return (
            f"of the right size, but its {CHECKSUM} checksum is {found}, not {chunk[CHECKSUM]} as its index.json says"
        )
    return None


def file_problem(path: Path, chunk: dict) -> str | None:
    """``problem`` of a chunk file."""
    return problem(path.stat().st_size if path.is_file() else None, chunk, lambda: digest(path))


def damaged(path: Path, what: str, url: str | None, how: str) -> SproutError:
    """The refusal of the chunk file ``path`` (downloaded from ``url``, or local when None), found
    ``what`` (a ``problem``) after it was ``how`` ("read twice"), naming its domain and the fix."""
    split_dir = path.parent
    domain = split_dir.parent.name
    if url:
        where, root = url, url.rsplit("/", 3)[0]
        fix = f"Re-run sprout prepare --out_dir {root} with --overwrite for domain {domain!r}"
    else:
        where, root = str(path), str(split_dir.parent.parent)
        fix = f"Re-run sprout prepare for domain {domain!r} with --overwrite, or copy {split_dir.parent} again from an intact copy"
    return SproutError(
        f"Shard {where} of domain {domain!r} is damaged: it is {what} ({how}). "
        f"{fix}; sprout verify {root} checks every shard."
    )
