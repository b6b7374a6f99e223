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
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.data.prepare.worker import MAX_EXAMPLES, Part, SplitWriter
from app.data.shards import INDEX_FILE, META_FILE, PAIRS_FILE, SHARD_FORMAT, SPLITS, UNIGRAM_FILE
from app.data.stats import PairCounter, count_codes, count_unigrams, entropies, pair_codes
from app.data.tokenizer import Tokenizer
from app.errors import SproutError
from app.files import replacing, write_json

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


def merge_split(parts_dir: Path, out_dir: Path, before: list[dict] | None = None) -> None:
    """Move every task's chunks of one split into ``out_dir`` and write one litdata index listing
    ``before`` (the chunks a domain holds already, when appending) and then these."""
    out_dir.mkdir(parents=True)
    chunks, config = list(before or []), None
    for task_dir in sorted(parts_dir.iterdir()) if parts_dir.is_dir() else []:
        for index_file in sorted(task_dir.glob("*.index.json")):
            index = json.loads(index_file.read_text())
            config = config or index["config"]
            for chunk in index["chunks"]:
                name = f"chunk-{task_dir.name}-{len(chunks):06d}.bin"  # numbered across the split: never an old name
                os.replace(task_dir / chunk["filename"], out_dir / name)
                chunks.append({**chunk, "filename": name})
    if chunks:
        write_json(out_dir / INDEX_FILE, {"chunks": chunks, "config": config, "updated_at": str(time.time())})


@dataclass
class _Totals:
    """One domain's documents, tokens and statistics, summed over tasks (and an earlier preparation)."""

    docs: Counter
    tokens: Counter
    files: Counter  # documents per input file
    unigram: np.ndarray
    pairs: PairCounter
    skipped: int
    examples: list[dict]
    seconds: float


def _combine(name: str, parts: list[Part], staging: Path, tok: Tokenizer, chunk_tokens: int, has_val: bool) -> _Totals:
    """Sum the tasks' parts and write the held-back documents: the smallest-hash one becomes
    validation if the domain has none, so every domain with two or more documents can be validated."""
    t = _Totals(
        Counter(), Counter(), Counter(), np.zeros(tok.vocab_size, np.int64), PairCounter(tok.vocab_size), 0, [], 0.0
    )
    for p in parts:
        t.docs.update(p.docs)
        t.tokens.update(p.tokens)
        t.files.update(p.files)
        t.unigram += p.unigram
        t.pairs.merge(*p.pairs.result())
        t.skipped += p.skipped
        t.examples += p.examples
        t.seconds += p.seconds
    candidates = sorted((p.candidate for p in parts if p.candidate is not None), key=lambda c: c[0])
    extra = Path(staging) / name
    if candidates and not has_val and t.docs["val"] == 0 and t.docs["train"] >= 2:
        _, moved = candidates.pop(0)
        writer = SplitWriter(extra / "val" / _PARENT_PART, chunk_tokens)
        writer.add(moved)
        writer.close()
        t.docs["train"] -= 1
        t.docs["val"] += 1
        t.tokens["train"] -= len(moved)
        t.tokens["val"] += len(moved)
        t.unigram -= count_unigrams(moved, tok.vocab_size)
        codes, counts = count_codes(pair_codes(moved, tok.vocab_size))
        t.pairs.merge(codes, -counts)
    if candidates:
        writer = SplitWriter(extra / "train" / _PARENT_PART, chunk_tokens)
        for _, doc in candidates:
            writer.add(doc)
        writer.close()
    return t


def _write_stats(folder: Path, t: _Totals) -> dict:
    """``unigram.npy`` and ``pairs.npz`` in ``folder``; returns the entropies for ``meta.json``."""
    np.save(folder / UNIGRAM_FILE, t.unigram)
    codes, counts = t.pairs.result()
    with open(folder / PAIRS_FILE, "wb") as f:
        np.savez(f, codes=codes, counts=counts)
    h = entropies(t.unigram, t.pairs.to_sparse())
    return {
        "unigram_entropy": h["shannon"],
        "joint_entropy": h["joint"],
        "conditional_entropy": h["conditional"],
        "unigram_counts_file": UNIGRAM_FILE,
        "pair_counts_file": PAIRS_FILE,
    }


def _meta(name: str, tok: Tokenizer, t: _Totals, files: dict[str, dict], stats: dict, extra: dict) -> dict:
    return {
        "format": SHARD_FORMAT,
        "domain": name,
        "tokenizer": tok.identity,
        "splits": {s: {"tokens": int(t.tokens[s]), "documents": int(t.docs[s])} for s in SPLITS},
        "sources": sorted(files),
        "files": dict(sorted(files.items())),
        "stats": stats,
        "skipped": {"count": t.skipped, "examples": t.examples[:MAX_EXAMPLES]},
        **extra,
    }


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
    t = _combine(name, parts, staging, tok, chunk_tokens, has_val=False)
    domain_dir = out_root / name
    (domain_dir / META_FILE).unlink(missing_ok=True)  # first: an interrupted rebuild must not look complete
    shutil.rmtree(domain_dir / PENDING, ignore_errors=True)
    for split in SPLITS:
        shutil.rmtree(domain_dir / split, ignore_errors=True)
        merge_split(Path(staging) / name / split, domain_dir / split)
    stats = _write_stats(domain_dir, t)
    files = {path: {**records[path], "documents": int(n)} for path, n in t.files.items()}
    meta = _meta(name, tok, t, files, stats, meta_extra)
    write_json(domain_dir / META_FILE, meta)
    return {"meta": meta, "seconds": t.seconds, "new_tokens": sum(t.tokens.values()), "status": "prepared"}


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
    t = _combine(name, parts, staging, tok, chunk_tokens, has_val=old["splits"]["val"]["documents"] > 0)
    new_tokens = sum(t.tokens.values())
    pending = Path(staging) / name / PENDING
    for split in SPLITS:
        index = domain_dir / split / INDEX_FILE
        before = json.loads(index.read_text())["chunks"] if index.is_file() else []
        merge_split(Path(staging) / name / split, pending / split, before)
    for split in SPLITS:
        t.docs[split] += old["splits"][split]["documents"]
        t.tokens[split] += old["splits"][split]["tokens"]
    t.unigram += np.load(domain_dir / UNIGRAM_FILE)
    with np.load(domain_dir / PAIRS_FILE) as stored:
        t.pairs.merge(stored["codes"], stored["counts"])
    t.skipped += old["skipped"]["count"]
    t.examples = old["skipped"]["examples"] + t.examples
    stats = _write_stats(pending, t)
    files = {**old["files"], **{path: {**records[path], "documents": int(n)} for path, n in t.files.items()}}
    meta = _meta(name, tok, t, files, stats, {k: v for k, v in old.items() if k in ("val_fraction", "seed")})
    write_json(pending / META_FILE, meta)
    os.replace(pending, domain_dir / PENDING)
    finish_pending(domain_dir)
    return {"meta": meta, "seconds": t.seconds, "new_tokens": new_tokens, "status": "appended"}


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
