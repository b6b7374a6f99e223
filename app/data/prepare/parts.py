"""Preparation split across machines: part ``i`` of ``N`` prepares its share of the input files,
and one final merge makes the domains.

Every machine resolves the same sources into the same ordered file list; part ``i`` takes the
``i``-th of ``N`` contiguous runs of about equal bytes, so the parts are disjoint and together
hold every file. A part writes its chunks straight into the output's split folders under names
no other part uses (``chunk-p0003-00001-000000.bin``), its counts to
``.parts/of-NNNN/part-IIII.npz`` and, last, its record ``part-IIII.json``: the chunks in stream
order, document and token counts, sources, skipped records and where its fallback validation
candidates lie. A part whose record is there is finished; running it again does nothing.

The merge checks that all ``N`` records are there and agree (tokenizer, settings, file list),
then writes each domain's split indexes, ``unigram.npy``, ``pairs.npz`` and ``meta.json`` (last) as a
single run would: counts of documents, tokens, unigrams and token pairs are summed, and the
entropies computed from the sums. Until the merge, no domain has a ``meta.json``, so training
sees none of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sprout.compat.litdata import split_index
from sprout.data.prepare.merge import (
    cut_document,
    fallback_validation,
    place_tokenizer,
    read_task_chunks,
    total_of,
    write_statistics_and_meta,
)
from sprout.data.prepare.sources import SourceFile, contiguous_runs
from sprout.data.prepare.staging import staging_folder
from sprout.data.prepare.worker import Part, SplitWriter, plan_tasks, run_tasks
from sprout.data.shards import INDEX_FILE, META_FILE, SPLITS
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.files import replacing, write_json

PART_FORMAT = "sprout-part/2"  # 2: per-file records and document counts, for meta.json's ``files``


def parts_folder(out_root: Path, num_parts: int) -> Path:
    return out_root / ".parts" / f"of-{num_parts:04d}"


def record_path(out_root: Path, num_parts: int, part: int) -> Path:
    return parts_folder(out_root, num_parts) / f"part-{part:04d}.json"


def stats_path(out_root: Path, num_parts: int, part: int) -> Path:
    return parts_folder(out_root, num_parts) / f"part-{part:04d}.npz"


def check_part(part: int, num_parts: int) -> None:
    if num_parts < 1:
        raise SproutError(f"--num_parts must be at least 1, got {num_parts}.")
    if not 0 <= part < num_parts:
        raise SproutError(
            f"--part {part} is outside 0..{num_parts - 1} for --num_parts {num_parts}: number the parts from 0, "
            f"e.g. with a SLURM array --array=0-{num_parts - 1} and --part $SLURM_ARRAY_TASK_ID."
        )


def files_digest(files: list[SourceFile]) -> str:
    """Identity of the whole file list (paths, sizes, domains): every part must have seen the same."""
    lines = "\n".join(f"{f.path}\t{f.size}\t{f.domain}\t{f.read_format}" for f in files)
    return hashlib.sha256(lines.encode("utf-8", "surrogatepass")).hexdigest()


def share(files: list[SourceFile], part: int, num_parts: int) -> list[SourceFile]:
    """Part ``part``'s files: the ``part``-th of ``num_parts`` contiguous runs of about equal bytes."""
    groups = contiguous_runs([f.size for f in files], num_parts)
    return [f for f, g in zip(files, groups) if g == part]


def run_part(
    files: list[SourceFile],
    tok: Tokenizer,
    out_root: Path,
    part: int,
    num_parts: int,
    settings: dict,
    num_workers: int,
    progress: bool,
    overwrite: bool,
    skip_bad_records: bool,
) -> dict:
    """Prepare part ``part`` of ``num_parts`` into ``out_root``; returns its record."""
    check_part(part, num_parts)
    record_file = record_path(out_root, num_parts, part)
    identity = {"format": PART_FORMAT, "part": part, "num_parts": num_parts, "files_sha256": files_digest(files)}
    identity.update(tokenizer=tok.identity["sha256"], **settings)
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if {k: record.get(k) for k in identity} == identity:
            print(f"part {part} of {num_parts} is already prepared ({record_file}); nothing to do.", flush=True)
            return record
    started = time.perf_counter()
    mine = share(files, part, num_parts)
    work = parts_folder(out_root, num_parts) / f"part-{part:04d}"
    work.mkdir(parents=True, exist_ok=True)
    place_tokenizer(tok, out_root, overwrite)
    record = {
        **identity,
        "tokenizer_identity": tok.identity,
        "files": len(mine),
        "domains": {},
        "config": {},
        "unattributed": [],
        "excluded": {},
        "records": {},
    }
    arrays: dict[str, np.ndarray] = {}
    if mine:
        with staging_folder(work) as staging:
            tasks = plan_tasks(mine, tok, staging, num_workers, skip_bad_records=skip_bad_records, **settings)
            results = run_tasks(tasks, tok, num_workers, progress)
            excluded: Counter = Counter()
            for result in results:
                excluded += result.excluded
                record["records"].update(result.records)
                record["unattributed"] += [bad.describe() for bad in result.unattributed]
                for name, p in result.parts.items():
                    entry = record["domains"].setdefault(name, {"tasks": []})
                    chunks = {}
                    for split in SPLITS:
                        task_dir = staging / name / split / f"{p.task:05d}"
                        found, config = read_task_chunks(task_dir) if task_dir.is_dir() else ([], None)
                        if config is not None:
                            record["config"][split] = config
                        chunks[split] = _move_chunks(
                            found, task_dir, out_root / name / split, f"p{part:04d}-{p.task:05d}"
                        )
                    entry["tasks"].append(_task_entry(p, chunks))
                    arrays[f"{name}/{p.task}/unigram"] = p.unigram
                    arrays[f"{name}/{p.task}/codes"], arrays[f"{name}/{p.task}/counts"] = p.pairs.result()
            record["excluded"] = dict(excluded)
    with replacing(stats_path(out_root, num_parts, part)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    record["seconds"] = time.perf_counter() - started
    write_json(record_file, record)  # last: the part is finished
    shutil.rmtree(work, ignore_errors=True)
    tokens = sum(sum(t["tokens"].values()) for d in record["domains"].values() for t in d["tasks"])
    print(
        f"part {part} of {num_parts}: {len(mine)} files, {tokens:,} tokens in {record['seconds']:.1f} s "
        f"({', '.join(sorted(record['domains'])) or 'no domains'}). When all {num_parts} parts are done, "
        f"run the same command with --merge true instead of --part.",
        flush=True,
    )
    if record["excluded"]:
        print(
            "left out by include/exclude: "
            + ", ".join(f"{k} {v:,} docs" for k, v in sorted(record["excluded"].items()))
        )
    for bad in record["unattributed"]:
        print(f"skipped (fed no domain): {bad}", flush=True)
    return record


def _move_chunks(chunks: list[dict], task_dir: Path, split_dir: Path, tag: str) -> list[dict]:
    """Move one task's chunks into the output split folder under names only this task uses."""
    split_dir.mkdir(parents=True, exist_ok=True)
    moved = []
    for k, chunk in enumerate(chunks):
        name = f"chunk-{tag}-{k:06d}.bin"
        shutil.move(task_dir / chunk["filename"], split_dir / name)
        moved.append({**chunk, "filename": name})
    return moved


def _task_entry(p: Part, chunks: dict[str, list[dict]]) -> dict:
    return {
        "task": p.task,
        "chunks": chunks,
        "docs": dict(p.docs),
        "tokens": dict(p.tokens),
        "files": dict(sorted(p.files.items())),
        "skipped": p.skipped,
        "examples": p.examples,
        "seconds": p.seconds,
        "candidate": list(p.candidate) if p.candidate is not None else None,
    }


def _part_of(entry: dict, arrays, name: str, vocab_size: int) -> Part:
    """One task's ``Part`` back from a part record and its counts."""
    p = Part(vocab_size, entry["task"])
    p.docs, p.tokens, p.files = Counter(entry["docs"]), Counter(entry["tokens"]), Counter(entry["files"])
    p.skipped, p.examples, p.seconds = entry["skipped"], entry["examples"], entry["seconds"]
    p.candidate = tuple(entry["candidate"]) if entry["candidate"] is not None else None
    p.unigram = arrays[f"{name}/{p.task}/unigram"].astype(np.int64)
    p.pairs.merge(arrays[f"{name}/{p.task}/codes"], arrays[f"{name}/{p.task}/counts"])
    return p


def read_records(out_root: Path, num_parts: int, where: str) -> list[dict]:
    """Every part's record; all must be there and agree, or the error names the parts at fault."""
    if num_parts < 1:
        raise SproutError(f"--num_parts must be at least 1, got {num_parts}.")
    missing = [i for i in range(num_parts) if not record_path(out_root, num_parts, i).is_file()]
    if missing:
        listed = ", ".join(map(str, missing[:20])) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise SproutError(
            f"Cannot merge {where}: part(s) {listed} of --num_parts {num_parts} are not finished (a part is finished once "
            f"its record .parts/of-{num_parts:04d}/part-NNNN.json is written, last). Run sprout prepare with "
            f"--num_parts {num_parts} --part N for each of them (a failed or killed part is re-run the same way), then --merge again."
        )
    records = [json.loads(record_path(out_root, num_parts, i).read_text()) for i in range(num_parts)]
    for key in ("files_sha256", "tokenizer", "val_fraction", "seed", "chunk_tokens"):
        values = [r.get(key) for r in records]
        if len(set(map(str, values))) > 1:
            odd = [i for i, v in enumerate(values) if v != values[0]]
            raise SproutError(
                f"Cannot merge {where}: part(s) {odd} were prepared with another {key} than part 0 "
                f"({values[odd[0]]!r} vs {values[0]!r}). Every part must run with the same sources, tokenizer and options: "
                f"re-run part(s) {odd} with those of part 0 (or all parts with the new ones)."
            )
    return records


def merge_parts(
    out_root: Path,
    num_parts: int,
    fetch: Callable[[Path], None] | None = None,
    where: str | None = None,
) -> dict[str, dict]:
    """Make every domain from the ``num_parts`` part records in ``out_root``; returns ``{domain: meta}``.

    ``fetch(path)`` brings a chunk file the merge must rewrite into ``out_root`` first (for an
    output in object storage, where the chunks are not local); the files the merge writes are
    the domains' ``index.json`` files, ``unigram.npy``, ``meta.json`` and, when a domain got no
    validation document, the rewritten chunk(s) its fallback document was cut from plus a
    validation chunk ``chunk-merge-*.bin``.
    """
    where = where or str(out_root)
    records = read_records(out_root, num_parts, where)
    tok = Tokenizer.load(out_root)
    if tok.sha256 != records[0]["tokenizer"]:
        raise SproutError(
            f"Cannot merge {where}: its tokenizer file is not the one the parts were prepared with. Re-run the parts."
        )
    arrays = [np.load(stats_path(out_root, num_parts, i)) for i in range(num_parts)]
    settings = {"val_fraction": records[0]["val_fraction"], "seed": records[0]["seed"]}
    chunk_tokens = records[0]["chunk_tokens"]
    file_records = {path: r for record in records for path, r in record["records"].items()}
    metas = {}
    for name in sorted({d for r in records for d in r["domains"]}):
        tasks = [(i, e) for i, r in enumerate(records) for e in r["domains"].get(name, {"tasks": []})["tasks"]]
        parts = [_part_of(e, arrays[i], name, tok.vocab_size) for i, e in tasks]
        total = total_of(parts, tok.vocab_size)
        if sum(total.docs.values()) == 0:
            continue
        domain_dir = out_root / name
        (domain_dir / META_FILE).unlink(missing_ok=True)
        chunks = {split: [list(e["chunks"][split]) for _, e in tasks] for split in SPLITS}
        fallback = fallback_validation(parts)
        if fallback is not None and total.docs["val"] == 0 and total.docs["train"] >= 2:
            k, (_, start, length) = fallback
            part_no, entry = tasks[k]
            moved = _cut(
                chunks["train"],
                k,
                domain_dir / "train",
                start,
                length,
                chunk_tokens,
                f"chunk-p{part_no:04d}-{entry['task']:05d}-cut",
                fetch,
            )
            chunks["val"].append(_write_chunks(moved, domain_dir / "val", chunk_tokens, "chunk-merge"))
            total.move_to_validation(moved)
        for split in SPLITS:
            flat = [c for task_chunks in chunks[split] for c in task_chunks]
            if flat:
                (domain_dir / split).mkdir(parents=True, exist_ok=True)
                write_json(domain_dir / split / INDEX_FILE, split_index(flat, _config(records, split)))
        metas[name] = write_statistics_and_meta(
            domain_dir, name, records[0]["tokenizer_identity"], total, file_records, settings
        )
    return metas


def _cut(
    task_chunks: list[list[dict]],
    k: int,
    split_dir: Path,
    start: int,
    length: int,
    chunk_tokens: int,
    prefix: str,
    fetch,
) -> np.ndarray:
    """Cut the fallback document out of task ``k``'s chunks (their files fetched first if remote)."""
    if fetch is not None:
        for chunk in task_chunks[k]:
            if not (split_dir / chunk["filename"]).is_file():
                fetch(split_dir / chunk["filename"])
    # the replaced chunks stay where they are, unlisted: the parts' records still name them, so a merge can be redone
    task_chunks[k], _, moved = cut_document(task_chunks[k], split_dir, start, length, chunk_tokens, prefix)
    return moved


def _write_chunks(tokens: np.ndarray, split_dir: Path, chunk_tokens: int, prefix: str) -> list[dict]:
    split_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=split_dir) as tmp:
        writer = SplitWriter(Path(tmp), chunk_tokens)
        writer.add(tokens)
        writer.close()
        written = []
        for k, chunk in enumerate(read_task_chunks(Path(tmp))[0]):
            name = f"{prefix}-{k:06d}.bin"
            os.replace(Path(tmp) / chunk["filename"], split_dir / name)
            written.append({**chunk, "filename": name})
    return written


def _config(records: list[dict], split: str) -> dict | None:
    return next((r["config"][split] for r in records if split in r["config"]), None) or next(
        (r["config"][other] for r in records for other in SPLITS if other in r["config"]), None
    )
