"""Raw corpora in, per-domain litdata token shards out, with train/val splits and statistics.

The output is the format ``app.data.shards`` describes. Work is spread over files: each task
(a run of files, ``sources``) streams its documents, tokenizes them in batches and writes its
own chunk files with litdata's ``BinaryWriter`` into a staging folder (``worker``,
``staging``); the parent then moves the chunks into place, merges the indexes and the
statistics, and writes ``meta.json`` (``merge``), then prints a summary (``summary``).
Chunks hold exactly ``chunk_tokens`` tokens except each task's last one. If a domain gets no
validation document, the training document with the smallest hash is moved there, so every
domain with two or more documents can be validated.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.data.prepare.merge import finish_domain, finished_domains, place_tokenizer
from app.data.prepare.parts import merge_parts, run_part
from app.data.prepare.sources import SOURCE_FORMATS, Source, check_domain_name, resolve
from app.data.prepare.staging import staging_folder
from app.data.prepare.summary import print_summary
from app.data.prepare.worker import Part, TaskResult, plan_tasks, run_tasks
from app.data.tokenizer import Tokenizer
from app.errors import SproutError

__all__ = ["DEFAULT_CHUNK_TOKENS", "SOURCE_FORMATS", "Source", "merge_parts", "prepare"]

DEFAULT_CHUNK_TOKENS = 1 << 22  # 16 MiB of int32 per chunk


def prepare(
    sources: list[Source],
    tokenizer: Tokenizer | str | os.PathLike,
    out_root: str | os.PathLike,
    *,
    val_fraction: float = 0.01,
    num_workers: int | None = None,
    overwrite: bool = False,
    skip_bad_records: bool = False,
    seed: int = 0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    progress: bool = True,
    summary: bool = True,
    num_parts: int = 1,
    part: int | None = None,
) -> dict[str, dict]:
    """Tokenize ``sources`` into ``<out_root>/<domain>/{train,val,meta.json}``; returns ``{domain: meta}``.

    With ``part`` (0 .. ``num_parts`` - 1) only that share of the input files is prepared, for a
    later ``merge_parts`` (``app.data.prepare.parts``); it returns ``{}``.

    Domains already prepared with the same tokenizer are reused (and returned) unless
    ``overwrite``. Bad records stop the run with an error naming file and line, unless
    ``skip_bad_records``: then they are skipped, counted and listed in the summary and in
    each domain's ``meta.json``. ``num_workers`` defaults to every usable core.
    """
    started = time.perf_counter()
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    if not 0 <= val_fraction < 1:
        raise SproutError(
            f"val_fraction must be in [0, 1), got {val_fraction}. Use e.g. 0.01 to hold out 1% of documents."
        )
    if chunk_tokens < 1:
        raise SproutError(f"chunk_tokens must be positive, got {chunk_tokens}.")
    if not sources:
        raise SproutError("No sources to prepare: give at least one input (e.g. --text PATH --domain NAME).")
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out_root = Path(out_root).expanduser().resolve()

    files = [f for s in sources for f in resolve(s)]
    seen: dict[str, str] = {}
    for f in files:
        if f.path in seen:
            raise SproutError(
                f"{f.path} is listed by two sources; each file may feed the data only once. Remove it from one of them."
            )
        seen[f.path] = f.domain
    if part is not None:
        settings = {"val_fraction": val_fraction, "seed": seed, "chunk_tokens": chunk_tokens}
        run_part(files, tok, out_root, part, num_parts, settings, num_workers, progress, overwrite, skip_bad_records)
        return {}
    finished = {} if overwrite else finished_domains(out_root, tok)
    fixed: dict[str, list[str]] = {}
    for f in files:
        if f.domain is not None:
            fixed.setdefault(f.domain, []).append(f.path)
    for name, paths in fixed.items():
        if name in finished and set(finished[name]["sources"]) != set(paths):
            new = sorted(set(paths) - set(finished[name]["sources"]))
            gone = sorted(set(finished[name]["sources"]) - set(paths))
            raise SproutError(
                f"Domain {name!r} in {out_root} was prepared from other files (new now: {new[:3]}, missing now: {gone[:3]}). "
                "Pass --overwrite to rebuild it from the files given now, or prepare the new files as another domain."
            )
    reused = {name for name in fixed if name in finished}
    todo = [f for f in files if f.domain is None or f.domain not in finished]

    results: list[TaskResult] = []
    finished_now: dict[str, dict] = {}
    out_root.mkdir(parents=True, exist_ok=True)
    place_tokenizer(tok, out_root, overwrite)
    if todo:
        with staging_folder(out_root) as staging:
            tasks = plan_tasks(
                todo, tok, staging, num_workers, chunk_tokens, val_fraction, seed, skip_bad_records, frozenset(finished)
            )
            results = run_tasks(tasks, tok, num_workers, progress)
            by_domain: dict[str, list[Part]] = {}
            for r in results:
                for name, p in r.parts.items():
                    by_domain.setdefault(name, []).append(p)
            extra = {"val_fraction": val_fraction, "seed": seed}
            for name in sorted(by_domain):
                check_domain_name(name, "from the records")
                if sum(p.docs.total() for p in by_domain[name]) == 0:
                    finished_now[name] = {
                        "meta": None,
                        "seconds": 0.0,
                        "skipped": sum(p.skipped for p in by_domain[name]),
                    }
                    continue
                finished_now[name] = finish_domain(name, by_domain[name], out_root, staging, tok, chunk_tokens, extra)
    for r in results:
        reused |= r.reused
    metas = {name: finished[name] for name in sorted(reused)}
    metas.update({name: d["meta"] for name, d in finished_now.items() if d["meta"] is not None})
    if summary:
        print_summary(metas, finished_now, reused, results, time.perf_counter() - started, num_workers)
    return dict(sorted(metas.items()))
