"""Preparation into object storage (``--out_dir s3://bucket/prefix``): prepare into a local
staging folder as usual, then upload, so that training never reads anything half-written.

- A whole run uploads the tokenizer, then each finished domain with its ``meta.json`` last.
- A part (``--num_parts N --part i``) uploads its chunks and counts, its record last.
- The merge fetches the parts' records and counts, writes the domains' indexes, statistics and
  ``meta.json`` locally, checks that every chunk an index lists is in the store with its size,
  and uploads them, each ``meta.json`` last.

An interrupted upload is resumed by running the same command again (``upload_complete``). The
staging folder (``--stage_dir``, default ``~/.cache/sprout/stage/<bucket-prefix-hash>``) keeps
the prepared shards, so a re-run uploads without tokenizing again; it needs the disk for what
this machine prepares (split the work with ``--num_parts`` to spread it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from sprout.data.prepare.parts import merge_parts, record_path, stats_path
from sprout.data.shards import INDEX_FILE, META_FILE, SPLITS, TOKENIZER_FILES
from sprout.data.store.client import ObjectStore
from sprout.data.store.mirror import check_chunks, mirror_folder
from sprout.errors import SproutError


def staging_root(url: str, stage_dir: str | os.PathLike | None) -> Path:
    """The local folder a preparation into ``url`` is staged in."""
    return Path(stage_dir).expanduser() if stage_dir else mirror_folder(Path("~/.cache/sprout/stage").expanduser(), url)


def open_store(url: str) -> ObjectStore:
    store = ObjectStore(url)
    if not store.writable:
        raise SproutError(f"--out_dir {url}: preparation uploads to s3:// URLs (and S3-compatible stores) only.")
    store.check()
    return store


def upload_complete(
    store: ObjectStore,
    local_root: Path,
    keys: list[str],
    marker: str,
    owned: list[str],
    verify: Callable[[], None] | None = None,
) -> bool:
    """Upload the files ``keys`` (paths relative to ``local_root`` and to the store), then
    ``marker`` last: readers take what a marker covers as complete only once the marker is
    there. Returns False when the store already holds this very marker (nothing to do).

    An interrupted upload is resumed: ``<marker>.uploading`` names the build being uploaded (the
    sha256 of its marker), and a re-run of the same build skips the objects already there with
    their size (an object is stored whole or not at all). For another build, the objects of the
    earlier one under the ``owned`` key prefixes are deleted first, and everything is uploaded.
    ``verify`` runs before the marker is written (and may refuse to write it by raising).
    """
    content = (local_root / marker).read_bytes()
    if store.read(marker) == content:
        return False
    build, pending = hashlib.sha256(content).hexdigest().encode(), f"{marker}.uploading"
    store.delete([marker])  # from here on readers see the folder as incomplete
    present = {o.key: o.size for prefix in owned for o in store.list(prefix) if o.key != pending}
    if store.read(pending) != build:
        wanted = set(keys)
        store.delete([k for k in present if k not in wanted])
        present = {}
        store.write(pending, build)
    for key in keys:
        local = local_root / key
        if present.get(key) != local.stat().st_size:
            store.upload(local, key)
    if verify is not None:
        verify()
    store.upload(local_root / marker, marker)
    store.delete([pending])
    return True


def publish_tokenizer(store: ObjectStore, local: Path, overwrite: bool) -> None:
    """Put the data's tokenizer file at the top of the prefix, where training looks for it."""
    theirs = store.read(local.name)
    if theirs == local.read_bytes():
        return
    if theirs is not None and not overwrite:
        raise SproutError(
            f"{store.url_of(local.name)} is another tokenizer than {local}. Choose another --out_dir, or pass --overwrite to replace it (and rebuild the domains)."
        )
    store.upload(local, local.name)


def publish_domain(store: ObjectStore, local_root: Path, domain: str) -> bool:
    """Upload one prepared domain (``local_root/<domain>``), its ``meta.json`` last, so training
    sees it only once it is complete. False when the store already had it as it is."""
    folder = local_root / domain
    keys = sorted(
        str(p.relative_to(local_root))
        for p in folder.rglob("*")
        if p.is_file() and p.name != META_FILE and not p.name.startswith(".")
    )
    return upload_complete(store, local_root, keys, f"{domain}/{META_FILE}", owned=[f"{domain}/"])


def publish(store: ObjectStore, stage: Path, metas: dict[str, dict], overwrite: bool) -> None:
    """Upload what a whole run staged: the tokenizer, then each domain (``meta.json`` last)."""
    publish_tokenizer(store, _tokenizer_file(stage), overwrite)
    for domain in metas:
        uploaded = publish_domain(store, stage, domain)
        print(f"{store.url_of(domain)}: {'uploaded' if uploaded else 'already complete there'}", flush=True)


def publish_part(store: ObjectStore, stage: Path, num_parts: int, part: int, overwrite: bool) -> None:
    """Upload one part: its chunks and counts, then its record (the part is then finished)."""
    publish_tokenizer(store, _tokenizer_file(stage), overwrite)
    record_file = record_path(stage, num_parts, part)
    record = json.loads(record_file.read_text())
    keys = [
        f"{domain}/{split}/{chunk['filename']}"
        for domain, entry in record["domains"].items()
        for task in entry["tasks"]
        for split in SPLITS
        for chunk in task["chunks"][split]
    ]
    counts = str(stats_path(stage, num_parts, part).relative_to(stage))
    owned = [f"{domain}/{split}/chunk-p{part:04d}-" for domain in record["domains"] for split in SPLITS] + [counts]
    uploaded = upload_complete(store, stage, [*keys, counts], str(record_file.relative_to(stage)), owned)
    print(f"part {part} of {num_parts} {'uploaded to' if uploaded else 'already complete in'} {store.url}", flush=True)


def merge_in_store(store: ObjectStore, stage: Path, num_parts: int) -> dict[str, dict]:
    """The merge for parts uploaded to ``store``; returns ``{domain: meta}``."""
    for part in range(num_parts):
        for path in (record_path(stage, num_parts, part), stats_path(stage, num_parts, part)):
            path.unlink(missing_ok=True)
            store.download(str(path.relative_to(stage)), path)  # a missing record is named by the merge
    for name in TOKENIZER_FILES:
        store.download(name, stage / name)

    def fetch(path: Path) -> None:
        if not store.download(str(path.relative_to(stage)), path):
            raise SproutError(
                f"{store.url_of(str(path.relative_to(stage)))} is missing, though a part's record lists it. Re-run that part."
            )

    metas = merge_parts(stage, num_parts, fetch=fetch, where=store.url)
    for domain in metas:
        folder = stage / domain
        keys = [str(p.relative_to(stage)) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != META_FILE]
        written = {
            f"{domain}/{s}/{c['filename']}" for s in SPLITS for c in _chunks(folder / s) if _by_merge(c["filename"])
        }
        keys = [k for k in keys if not k.endswith(".bin") or k in written]

        def verify(domain: str = domain) -> None:
            for split in SPLITS:
                if (stage / domain / split / INDEX_FILE).is_file():
                    check_chunks(store, f"{domain}/{split}", stage / domain / split / INDEX_FILE, store.url)

        uploaded = upload_complete(store, stage, keys, f"{domain}/{META_FILE}", owned=[], verify=verify)
        print(f"{store.url_of(domain)}: {'merged' if uploaded else 'already complete there'}", flush=True)
    return metas


def _by_merge(chunk_name: str) -> bool:
    """Whether the merge wrote this chunk (the fallback validation document's), not a part."""
    return chunk_name.startswith("chunk-merge-") or "-cut-" in chunk_name


def _chunks(split_dir: Path) -> list[dict]:
    index = split_dir / INDEX_FILE
    return json.loads(index.read_text())["chunks"] if index.is_file() else []


def _tokenizer_file(stage: Path) -> Path:
    return next(stage / name for name in TOKENIZER_FILES if (stage / name).is_file())
