"""The parent's side of a preparation: which domains are finished already, and merging the
tasks' chunks and statistics into a finished domain (``meta.json`` written last), or appending
them to one.

An append is committed through ``<domain>/.pending-append``: the new chunk files, the split
indexes (old chunks and new), the statistics and ``meta.json`` are assembled there, the folder is
renamed into the domain, and its files are moved into place one by one, ``meta.json`` last. A
run killed in between leaves the folder behind; the next preparation finishes moving it
(``finish_pending``) before it reads anything, so a killed and restarted append ends with the
shards of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from sprout.compat.litdata import read_chunk_tokens, split_index
from sprout.data.prepare.worker import MAX_EXAMPLES, Part, SplitWriter
from sprout.data.shards import INDEX_FILE, META_FILE, PAIRS_FILE, SHARD_FORMAT, SPLITS, UNIGRAM_FILE
from sprout.data.stats import entropies
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.files import replacing, write_json

_PARENT_PART = "99999"  # staging part written by the parent, after the tasks' 00000, 00001, ...
PENDING = ".pending-append"


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: treated as unfinished and rebuilt


def finished_domains(out_root: Path, tok: Tokenizer) -> dict[str, dict]:
    """Domains in ``out_root`` whose meta.json matches ``tok``; another tokenizer's is an error."""
    finished = {}
    if not out_root.is_dir():
        return finished
    for meta_path in sorted(out_root.glob(f"*/{META_FILE}")):
        meta = _read_meta(meta_path)
        if meta is None or meta.get("format") != SHARD_FORMAT:
            continue
        theirs = meta.get("tokenizer", {})
        if theirs.get("sha256") == tok.sha256:
            finished[meta_path.parent.name] = meta
        else:
            raise SproutError(
                f"{meta_path.parent} was prepared with tokenizer {theirs.get('name')} (sha256 {str(theirs.get('sha256'))[:12]}), "
                f"but this run uses {tok.path} (sha256 {tok.sha256[:12]}). One output folder holds one tokenizer's shards: "
                "choose another output folder, or pass --overwrite to rebuild the domains this run prepares."
            )
    return finished


def place_tokenizer(tok: Tokenizer, out_root: Path, overwrite: bool) -> None:
    """Copy the tokenizer next to the domains, where the data module looks by default."""
    dest = out_root / ("tokenizer.json" if tok.kind == "hf" else "tokenizer.model")
    if dest.exists():
        if dest.resolve() == tok.path.resolve() or hashlib.sha256(dest.read_bytes()).hexdigest() == tok.sha256:
            return
        if not overwrite:
            raise SproutError(
                f"{dest} is another tokenizer than {tok.path}. Choose another output folder, or pass --overwrite to replace it."
            )
    with replacing(dest) as tmp:
        shutil.copyfile(tok.path, tmp)


def merge_split(parts_dir: Path, out_dir: Path, before: dict | None = None) -> None:
    """Move every task's chunks of one split into ``out_dir`` and write one litdata index listing
    the chunks of ``before`` (the index a domain holds already, when appending) and then these."""
    out_dir.mkdir(parents=True)
    chunks, config = list(before["chunks"]) if before else [], before["config"] if before else None
    for task_dir in sorted(parts_dir.iterdir()) if parts_dir.is_dir() else []:
        for index_file in sorted(task_dir.glob("*.index.json")):
            index = json.loads(index_file.read_text())
            config = config or index["config"]
            for chunk in index["chunks"]:
                name = f"chunk-{task_dir.name}-{len(chunks):06d}.bin"  # numbered across the split: never an old name
                os.replace(task_dir / chunk["filename"], out_dir / name)
                chunks.append({**chunk, "filename": name})
    if chunks:
        write_json(out_dir / INDEX_FILE, split_index(chunks, config))


def read_task_chunks(task_dir: Path) -> tuple[list[dict], dict | None]:
    """The chunks one task wrote for one split (in order), and litdata's config for them."""
    chunks, config = [], None
    for index_file in sorted(task_dir.glob("*.index.json")):
        index = json.loads(index_file.read_text())
        config = config or index["config"]
        chunks += index["chunks"]
    return chunks, config


def cut_document(
    chunks: list[dict], folder: Path, start: int, length: int, chunk_tokens: int, prefix: str
) -> tuple[list[dict], list[str], np.ndarray]:
    """Take tokens ``[start, start + length)`` out of the token stream of ``chunks`` (files in
    ``folder``). The chunks holding them are rewritten as new files ``<prefix>-*.bin``.
    Returns the new chunk list, the names of the replaced files, and the tokens taken out."""
    dims = np.array([c["dim"] for c in chunks])
    ends = np.cumsum(dims)
    first = int(np.searchsorted(ends, start, side="right"))
    last = int(np.searchsorted(ends, start + length - 1, side="right"))
    tokens = np.concatenate([read_chunk_tokens(folder / c["filename"], c) for c in chunks[first : last + 1]])
    offset = start - int(ends[first] - dims[first])
    taken = tokens[offset : offset + length].copy()
    rest = np.concatenate([tokens[:offset], tokens[offset + length :]])
    new: list[dict] = []
    if len(rest):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            writer = SplitWriter(Path(tmp), chunk_tokens)
            writer.add(rest)
            writer.close()
            for chunk in read_task_chunks(Path(tmp))[0]:
                name = f"{prefix}-{len(new):06d}.bin"
                os.replace(Path(tmp) / chunk["filename"], folder / name)
                new.append({**chunk, "filename": name})
    replaced = [c["filename"] for c in chunks[first : last + 1]]
    return chunks[:first] + new + chunks[last + 1 :], replaced, taken


def fallback_validation(parts: list[Part]) -> tuple[int, tuple[int, int, int]] | None:
    """The training document to move to ``val`` when a domain got none, as (index of its part in
    ``parts``, candidate): the smallest hash, the earliest in the stream among equal ones."""
    found = [(p.candidate[0], i) for i, p in enumerate(parts) if p.candidate is not None]
    if not found:
        return None
    _, i = min(found)
    return i, parts[i].candidate


def total_of(parts: list[Part], vocab_size: int) -> Part:
    """One domain's counts summed over tasks, parts or an earlier preparation: exact, since the
    entropies are computed from the summed counts (``write_statistics_and_meta``), never averaged."""
    total = Part(vocab_size, -1)
    for p in parts:
        total.absorb(p)
    return total


def stored_part(domain_dir: Path, meta: dict, vocab_size: int) -> Part:
    """A finished domain's counts back from its ``meta.json``, ``unigram.npy`` and ``pairs.npz``."""
    p = Part(vocab_size, -1)
    p.docs = Counter({s: meta["splits"][s]["documents"] for s in SPLITS})
    p.tokens = Counter({s: meta["splits"][s]["tokens"] for s in SPLITS})
    p.files = Counter({path: record["documents"] for path, record in meta["files"].items()})
    p.unigram = np.load(domain_dir / UNIGRAM_FILE).astype(np.int64)
    with np.load(domain_dir / PAIRS_FILE) as stored:
        p.pairs.merge(stored["codes"], stored["counts"])
    p.skipped, p.examples = meta["skipped"]["count"], list(meta["skipped"]["examples"])
    return p


def _validation_fallback(name: str, parts: list[Part], total: Part, staging: Path, chunk_tokens: int) -> None:
    """Cut the smallest-hash training document out of its task's staged chunks and stage it as
    ``val`` (counted so in ``total``), so that every domain with two or more documents can be validated."""
    fallback = fallback_validation(parts)
    if fallback is None:
        return
    extra = Path(staging) / name
    i, (_, start, length) = fallback
    task_dir = extra / "train" / f"{parts[i].task:05d}"
    chunks, config = read_task_chunks(task_dir)
    chunks, replaced, moved = cut_document(chunks, task_dir, start, length, chunk_tokens, "cut")
    for old in [*replaced, *(p.name for p in task_dir.glob("*.index.json"))]:
        (task_dir / old).unlink()
    write_json(task_dir / "0.index.json", {"chunks": chunks, "config": config})
    writer = SplitWriter(extra / "val" / _PARENT_PART, chunk_tokens)
    writer.add(moved)
    writer.close()
    total.move_to_validation(moved)


def file_entries(files: Counter, records: dict[str, dict]) -> dict[str, dict]:
    """``meta.json``'s ``files``: each input file's record (``ledger.file_record``) and the documents it gave."""
    return {path: {**records[path], "documents": int(n)} for path, n in sorted(files.items())}


def write_statistics_and_meta(
    folder: Path, name: str, tokenizer: dict, total: Part, records: dict[str, dict], meta_extra: dict
) -> dict:
    """Domain ``name``'s ``unigram.npy`` and ``pairs.npz`` (its counts, so that later appends and
    merges stay exact), then its ``meta.json`` (last: the domain is then complete), in ``folder``."""
    np.save(folder / UNIGRAM_FILE, total.unigram)
    codes, counts = total.pairs.result()
    with open(folder / PAIRS_FILE, "wb") as f:
        np.savez(f, codes=codes, counts=counts)
    h = entropies(total.unigram, total.pairs.to_sparse())
    meta = {
        "format": SHARD_FORMAT,
        "domain": name,
        "tokenizer": tokenizer,
        "splits": {s: {"tokens": int(total.tokens[s]), "documents": int(total.docs[s])} for s in SPLITS},
        "sources": sorted(total.files),
        "files": file_entries(total.files, records),
        "stats": {
            "unigram_entropy": h["shannon"],
            "joint_entropy": h["joint"],
            "conditional_entropy": h["conditional"],
            "unigram_counts_file": UNIGRAM_FILE,
            "pair_counts_file": PAIRS_FILE,
        },
        "skipped": {"count": total.skipped, "examples": total.examples[:MAX_EXAMPLES]},
        **meta_extra,
    }
    write_json(folder / META_FILE, meta)
    return meta


def finish_domain(
    name: str,
    parts: list[Part],
    out_root: Path,
    staging: Path,
    tok: Tokenizer,
    chunk_tokens: int,
    meta_extra: dict,
    records: dict[str, dict],
) -> dict:
    """Build the domain ``name`` from the tasks' ``parts`` (any earlier one of that name is replaced)."""
    total = total_of(parts, tok.vocab_size)
    if total.docs["val"] == 0 and total.docs["train"] >= 2:
        _validation_fallback(name, parts, total, staging, chunk_tokens)
    domain_dir = out_root / name
    (domain_dir / META_FILE).unlink(missing_ok=True)  # first: an interrupted rebuild must not look complete
    shutil.rmtree(domain_dir / PENDING, ignore_errors=True)
    for split in SPLITS:
        shutil.rmtree(domain_dir / split, ignore_errors=True)
        merge_split(Path(staging) / name / split, domain_dir / split)
    meta = write_statistics_and_meta(domain_dir, name, tok.identity, total, records, meta_extra)
    return {"meta": meta, "seconds": total.seconds, "new_tokens": sum(total.tokens.values()), "status": "prepared"}


def append_domain(
    name: str,
    parts: list[Part],
    old: dict,
    out_root: Path,
    staging: Path,
    tok: Tokenizer,
    chunk_tokens: int,
    records: dict[str, dict],
) -> dict:
    """Append the tasks' ``parts`` (documents of new files) to the finished domain whose meta is ``old``."""
    domain_dir = out_root / name
    new = total_of(parts, tok.vocab_size)
    if old["splits"]["val"]["documents"] == 0 and new.docs["val"] == 0 and new.docs["train"] >= 2:
        _validation_fallback(name, parts, new, staging, chunk_tokens)
    pending = Path(staging) / name / PENDING
    for split in SPLITS:
        index = domain_dir / split / INDEX_FILE
        before = json.loads(index.read_text()) if index.is_file() else None
        merge_split(Path(staging) / name / split, pending / split, before)
    total = stored_part(domain_dir, old, tok.vocab_size)
    total.absorb(new)
    settings = {k: v for k, v in old.items() if k in ("val_fraction", "seed")}
    meta = write_statistics_and_meta(pending, name, tok.identity, total, {**old["files"], **records}, settings)
    os.replace(pending, domain_dir / PENDING)
    finish_pending(domain_dir)
    return {"meta": meta, "seconds": new.seconds, "new_tokens": sum(new.tokens.values()), "status": "appended"}


def finish_pending(domain_dir: Path) -> None:
    """Move an assembled append (``<domain>/.pending-append``) into place, ``meta.json`` last;
    a move already done by a killed run is skipped, so this may run any number of times."""
    pending = domain_dir / PENDING
    if not pending.is_dir():
        return
    if (pending / META_FILE).is_file():
        (domain_dir / META_FILE).unlink(missing_ok=True)  # the domain is incomplete until the end
    for split in SPLITS:
        source = pending / split
        if not source.is_dir():
            continue
        (domain_dir / split).mkdir(exist_ok=True)
        for chunk in sorted(source.glob("*.bin")):
            _move_if_there(chunk, domain_dir / split / chunk.name)
        _move_if_there(source / INDEX_FILE, domain_dir / split / INDEX_FILE)
    for name in (UNIGRAM_FILE, PAIRS_FILE, META_FILE):
        _move_if_there(pending / name, domain_dir / name)
    shutil.rmtree(pending)


def _move_if_there(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target``, unless an earlier, killed run of ``finish_pending`` moved it already."""
    if source.is_file():
        os.replace(source, target)
