"""Writing a file so that a reader sees the old file or the complete new one, never half of one.

Runs are killed at random moments and disks fill up, so every file Sprout writes that a later
run reads (checkpoints, ``meta.json`` records, litdata indexes, tokenizers, manifests) is
written to a hidden temporary file beside its target and renamed over it. The temporary name
carries the writer's process id (``.<name>.tmp-<pid>``), so leftovers of a killed process can
be told from a live writer's and no search for ``*.ckpt`` or ``*.json`` ever picks one up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_path(path: str | os.PathLike) -> Path:
    """Where ``replacing`` writes ``path``'s new content before renaming it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def replacing(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; rename it over ``path`` when the
    block ends, or remove it when the block fails. ``durable`` flushes the file and the folder
    to disk too (a checkpoint must survive a power cut, a cache file need not)."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented JSON at ``path``, atomically."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporary files in ``folder`` of processes killed while writing them."""
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and process_gone(int(pid)):
            tmp.unlink(missing_ok=True)


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists any more (one of another user still exists)."""
    if os.name != "posix":
        return False  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
