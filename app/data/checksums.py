"""A checksum per chunk, recorded at preparation and checked when a chunk is first read.

Bytes rot on disks, copies get cut off, and an object in a store can be overwritten: a chunk
with the right size but other bytes would otherwise train silently on garbage. Preparation
records each chunk's xxh3-64 digest in the split's ``index.json``, beside the size litdata
records there (the index already travels with its chunks through merges, appends, parts and
uploads, and the mirror of a remote split fetches it anyway; litdata ignores the extra key).
``ChunkChecks`` checks a chunk's size and digest the first time a process reads it; a bad one
is read (or, from a store, downloaded) again once, then refused in one paragraph. Shards
prepared before digests were recorded are checked by size only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import xxhash

from app.data.shards import INDEX_FILE
from app.errors import SproutError

CHECKSUM = "xxh3_64"  # the key of a chunk's digest in index.json
_READ = 8 << 20
T = TypeVar("T")


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


class ChunkChecks:
    """Each chunk of one split checked when this process first uses it, and again whenever its
    file was replaced (a store's chunk evicted from the cache and downloaded again).

    A local chunk is checked before it is read; one found bad is read a second time (a failing
    disk or network file system may return other bytes). A streamed chunk is checked in the cache
    before litdata reads it, or right after litdata downloaded it; one found bad is removed,
    downloaded again and the block read again. Bad twice, it is refused.
    """

    def __init__(self, split_dir: str | Path, block_size: int, url: str | None = None) -> None:
        self.split_dir, self.url = Path(split_dir), url
        self.chunks = json.loads((self.split_dir / INDEX_FILE).read_text())["chunks"]
        self.ends = np.cumsum([c["dim"] // block_size for c in self.chunks])
        self.checked: set[tuple] = set()  # (file, inode, mtime, size) of chunk files found good

    def read(self, block: int, read: Callable[[], T], reopen: Callable[[], None]) -> T:
        """``read()`` block ``block`` once its chunk is known good; ``reopen`` drops the reader's
        mapped copy of a chunk that was downloaded again."""
        chunk = self.chunks[int(np.searchsorted(self.ends, block, side="right"))]
        path = self.split_dir / chunk["filename"]
        if self.url is None:  # the file is there (the data module checked every size at setup)
            if not self._good(path, chunk) and not self._good(path, chunk):
                self._refuse(path, chunk)
            return read()
        if path.is_file() and not self._good(path, chunk):
            path.unlink(missing_ok=True)  # litdata downloads a missing chunk again when it is read
        item = read()
        if path.is_file() and not self._good(path, chunk):
            path.unlink(missing_ok=True)
            reopen()
            item = read()
            if path.is_file() and not self._good(path, chunk):
                self._refuse(path, chunk)
        return item

    def _good(self, path: Path, chunk: dict) -> bool:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        key = (path.name, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if key in self.checked:
            return True
        if file_problem(path, chunk) is not None:
            return False
        self.checked.add(key)
        return True

    def _refuse(self, path: Path, chunk: dict) -> None:
        domain = self.split_dir.parent.name
        if self.url:
            where, root, how = f"{self.url}/{chunk['filename']}", self.url.rsplit("/", 2)[0], "downloaded"
            fix = f"Re-run tools/prepare_data.py --out_dir {root} with --overwrite for domain {domain!r}"
        else:
            where, root, how = str(path), str(self.split_dir.parent.parent), "read"
            fix = f"Re-run tools/prepare_data.py for domain {domain!r} with --overwrite, or copy {self.split_dir.parent} again from an intact copy"
        raise SproutError(
            f"Shard {where} of domain {domain!r} is damaged: it is {file_problem(path, chunk) or 'missing'} ({how} twice). "
            f"{fix}; python tools/verify_data.py {root} checks every shard."
        )
