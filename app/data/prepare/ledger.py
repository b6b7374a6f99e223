"""Which input files a finished domain was made from, and what a new run may add to it.

A domain's ``meta.json`` lists every file that fed it (``files``: size, modification time,
BLAKE2b hash of its bytes, documents it gave). A re-run of the preparation compares the files
given now with these records before reading anything:

- a recorded file that is given again, unchanged, is not read again for that domain;
- a new file is prepared and its documents are appended to the domain as new chunks;
- a recorded file that changed (other size, or other bytes after its time changed) or is no
  longer given, while the domain's other files are, is refused: its documents are in the
  shards already, so only ``--overwrite`` (rebuild from the files given now) is honest.

Appending needs what merging needs: the domain's pair counts (``pairs.npz``, for its joint and
conditional entropies) and the same validation split (``val_fraction`` and ``seed``). A domain
prepared without them (by an older Sprout, or with other split options) is refused with the new
files named, and ``--overwrite``. How an append reaches the disk is ``merge.append_domain``'s.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from sprout.data.prepare.sources import SourceFile
from sprout.data.shards import PAIRS_FILE
from sprout.errors import SproutError

_HASH_BLOCK = 1 << 24


def file_record(path: str) -> dict:
    """What identifies an input file's contents: size, modification time (ns) and a BLAKE2b of its bytes."""
    stat = os.stat(path)
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "blake2b": digest.hexdigest()}


def _change(path: str, record: dict | None) -> str | None:
    """Why ``path`` is no longer the file ``record`` describes, or None. A file whose time changed
    but whose bytes did not (copied, touched) is the same file."""
    if record is None:
        return None  # prepared by an older Sprout: only the name is known
    try:
        stat = os.stat(path)
    except OSError as err:
        return f"it cannot be read: {err.strerror}"
    if stat.st_size != record["size"]:
        return f"it is {stat.st_size:,} bytes now, {record['size']:,} then"
    if stat.st_mtime_ns == record["mtime_ns"] or file_record(path)["blake2b"] == record["blake2b"]:
        return None
    return "its bytes differ"


def recorded_files(meta: dict) -> dict[str, dict | None]:
    """The files a finished domain was made from, with their records (None before Sprout kept them)."""
    if isinstance(meta.get("files"), dict):
        return meta["files"]
    return dict.fromkeys(meta.get("sources", []))


def already_prepared(files: list[SourceFile], finished: dict[str, dict], out_root: Path) -> dict[str, frozenset[str]]:
    """For each given file, the finished domains that hold its documents already; refuses a recorded
    file that changed or went missing while its domain is part of this run."""
    given = {f.path for f in files}
    named = {f.domain for f in files if f.domain is not None}
    done: dict[str, set[str]] = {}
    problems = []
    for name, meta in sorted(finished.items()):
        recorded = recorded_files(meta)
        held = [path for path in recorded if path in given]
        if not held and name not in named:
            continue  # a domain this run does not touch
        for path in held:
            change = _change(path, recorded[path])
            if change:
                problems.append(f"{path} changed since domain {name!r} was prepared from it ({change})")
            else:
                done.setdefault(path, set()).add(name)
        gone = sorted(set(recorded) - given)
        if gone:
            problems.append(f"domain {name!r} was prepared from {len(gone)} file(s) not given now: {_some(gone)}")
    if problems:
        raise SproutError(
            f"Cannot add to the prepared data in {out_root}: {'; '.join(problems[:4])}. Their documents are in the shards already and "
            "cannot be taken out or counted again. Give the same files (new ones may be added), or pass --overwrite to rebuild "
            "these domains from the files given now."
        )
    return {path: frozenset(names) for path, names in done.items()}


def append_problem(meta: dict, val_fraction: float, seed: int) -> str | None:
    """Why documents cannot be appended to the finished domain ``meta`` describes, or None."""
    if not isinstance(meta.get("files"), dict) or PAIRS_FILE != meta.get("stats", {}).get("pair_counts_file"):
        return "it was prepared by an earlier Sprout, which kept neither per-file records nor the pair counts its entropies are merged from"
    if meta.get("val_fraction") != val_fraction or meta.get("seed") != seed:
        return (
            f"it was prepared with val_fraction={meta.get('val_fraction')}, seed={meta.get('seed')}, and this run has "
            f"val_fraction={val_fraction}, seed={seed}; give those options to append with the same validation split"
        )
    return None


def cannot_append(name: str, out_root: Path, new_files: Iterable[str], why: str) -> SproutError:
    return SproutError(
        f"New files for domain {name!r} in {out_root} cannot be appended: {why}. New: {_some(sorted(new_files))}. Pass --overwrite "
        "to rebuild the domain from all the files given now, or prepare the new files into another domain or output folder."
    )


def _some(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
