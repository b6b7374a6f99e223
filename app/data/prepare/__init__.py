"""Raw corpora in, per-domain litdata token shards out, with train/val splits and statistics.

The output is the format ``sprout.data.shards`` describes. Work is spread over files: each task
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

from sprout.data.prepare.ledger import already_prepared, append_problem, cannot_append
from sprout.data.prepare.merge import append_domain, finish_domain, finish_pending, finished_domains, place_tokenizer
from sprout.data.prepare.parts import merge_parts, run_part
from sprout.data.prepare.sources import SOURCE_FORMATS, Source, check_domain_name, resolve
from sprout.data.prepare.staging import staging_folder
from sprout.data.prepare.summary import print_summary
from sprout.data.prepare.worker import Part, TaskResult, plan_tasks, run_tasks
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError

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
    later ``merge_parts`` (``sprout.data.prepare.parts``); it returns ``{}``.

    Domains already prepared with the same tokenizer are reused (and returned) unless
    ``overwrite``; documents of files they were not made from are appended to them, and a file
    they were made from that changed or is missing is refused (``ledger``). Bad records stop the run with an error naming file and line, unless
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
    for domain_dir in out_root.glob("*/") if out_root.is_dir() else []:
        finish_pending(domain_dir)  # an append a killed run left half moved
    finished = {} if overwrite else finished_domains(out_root, tok)
    done = already_prepared(files, finished, out_root)
    for f in files:  # a new file for a named, finished domain: can it be appended? (others are known after reading)
        if (
            f.domain in finished
            and f.path not in done
            and (why := append_problem(finished[f.domain], val_fraction, seed))
        ):
            raise cannot_append(
                f.domain, out_root, [g.path for g in files if g.domain == f.domain and g.path not in done], why
            )
    reused = {name for name in finished if any(name in names for names in done.values())}
    todo = [f for f in files if f.domain is None or f.domain not in done.get(f.path, ())]

    results: list[TaskResult] = []
    finished_now: dict[str, dict] = {}
    out_root.mkdir(parents=True, exist_ok=True)
    place_tokenizer(tok, out_root, overwrite)
    if todo:
        with staging_folder(out_root) as staging:
            tasks = plan_tasks(
                todo, tok, staging, num_workers, chunk_tokens, val_fraction, seed, skip_bad_records, done
            )
            results = run_tasks(tasks, tok, num_workers, progress)
            by_domain: dict[str, list[Part]] = {}
            records: dict[str, dict] = {}
            for r in results:
                records.update(r.records)
                for name, p in r.parts.items():
                    by_domain.setdefault(name, []).append(p)
            for name in sorted(by_domain):  # every check before anything is written
                check_domain_name(name, "from the records")
                if name in finished and (why := append_problem(finished[name], val_fraction, seed)):
                    raise cannot_append(name, out_root, {f for p in by_domain[name] for f in p.files}, why)
            extra = {"val_fraction": val_fraction, "seed": seed}
            for name in sorted(by_domain):
                parts = by_domain[name]
                if name in finished:
                    finished_now[name] = append_domain(
                        name, parts, finished[name], out_root, staging, tok, chunk_tokens, records
                    )
                elif sum(p.docs.total() for p in parts) == 0:
                    finished_now[name] = {"meta": None, "seconds": 0.0, "skipped": sum(p.skipped for p in parts)}
                else:
                    finished_now[name] = finish_domain(
                        name, parts, out_root, staging, tok, chunk_tokens, extra, records
                    )
    for r in results:
        reused |= r.reused
    metas = {name: finished[name] for name in sorted(reused)}
    metas.update({name: d["meta"] for name, d in finished_now.items() if d["meta"] is not None})
    if summary:
        print_summary(metas, finished_now, reused, results, time.perf_counter() - started, num_workers)
    return dict(sorted(metas.items()))
