"""The staging folder a preparation writes its chunks into, and its lock.

The staging folder ``<out_root>/.staging-XXXXXXXX`` is removed at the end, also on errors
and Ctrl-C. A run killed outright (SIGKILL, SIGTERM, a crash of the machine) leaves it
behind; the next preparation into the same ``out_root`` removes it. To tell such a folder
from one of a preparation still running there, each run holds an exclusive ``flock`` on
``.staging-XXXXXXXX.lock`` from before the folder exists until after it is gone (its pool
workers drop their inherited copy, ``held_locks``), so the lock is free only once the run's
main process has ended. Only entries of exactly that name form are ever removed, and a
staging folder only by whoever holds its lock. ``flock`` may not reach other machines on a
network file system: prepare into one output folder from one machine at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_STAGING_NAME = re.compile(r"^(\.staging-[a-z0-9_]{8})(\.lock)?$")  # what tempfile makes from prefix ".staging-"
held_locks: set[int] = set()  # descriptors of the staging locks this process holds


def _lock_if_free(lock: Path) -> int | None:
    """A descriptor holding ``lock`` (created if missing), or None when a live run holds it."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # e.g. another user's lock: not ours to judge
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(lock).st_ino:  # not unlinked by another cleaner meanwhile
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


def _remove_stale_staging(out_root: Path) -> None:
    """Remove the staging folders (and lock files) that killed preparations left in ``out_root``.

    A folder whose lock is held belongs to a preparation still running and is left alone; a
    folder without a lock file (a run of an older Sprout) is claimed by creating its lock.
    """
    names = {m[1] for m in map(_STAGING_NAME.match, os.listdir(out_root)) if m}
    for name in sorted(names):
        folder, lock = out_root / name, out_root / f"{name}.lock"
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            continue  # not something preparation made
        fd = _lock_if_free(lock)
        if fd is None:
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staging_folder(out_root: Path) -> Iterator[Path]:
    """A fresh ``<out_root>/.staging-*`` folder for this run's chunks, removed when the run ends.

    Stale folders of killed runs are removed first. The lock is taken before the folder is
    made and released after it is removed, so a folder never exists unlocked while its run lives.
    """
    _remove_stale_staging(out_root)
    fd, lock = tempfile.mkstemp(prefix=".staging-", suffix=".lock", dir=out_root)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held_locks.add(fd)
    staging = Path(lock).with_suffix("")
    try:
        staging.mkdir()
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        Path(lock).unlink(missing_ok=True)
        held_locks.discard(fd)
        os.close(fd)
