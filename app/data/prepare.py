"""Raw corpora in, per-domain litdata token shards out, with train/val splits and statistics.

The layout is the contract the data module reads::

    <out_root>/<domain>/train/      litdata chunks + index.json (TokensLoader, int32)
    <out_root>/<domain>/val/        the same for held-out documents
    <out_root>/<domain>/unigram.npy train unigram counts
    <out_root>/<domain>/meta.json   written last: its presence means the domain is complete

Every document becomes ``tokenizer.encode(text) + [eos_id]``. A document goes to ``val``
when a keyed hash of its text falls below ``val_fraction``, so the split does not depend on
file order or worker count, and exact duplicates always land on the same side. If that
leaves a domain with no validation document, the training document with the smallest hash
is moved there, so every domain with two or more documents can be validated.

Work is spread over files: each task (a run of files) streams its documents, tokenizes
them in batches and writes its own chunk files with litdata's ``BinaryWriter`` into a
staging folder; the parent then moves the chunks into place, merges the indexes and the
statistics, and writes ``meta.json``. Chunks hold exactly ``chunk_tokens`` tokens except
each task's last one.

The staging folder ``<out_root>/.staging-XXXXXXXX`` is removed at the end, also on errors
and Ctrl-C. A run killed outright (SIGKILL, SIGTERM, a crash of the machine) leaves it
behind; the next preparation into the same ``out_root`` removes it. To tell such a folder
from one of a preparation still running there, each run holds an exclusive ``flock`` on
``.staging-XXXXXXXX.lock`` from before the folder exists until after it is gone (its pool
workers drop their inherited copy), so the lock is free only once the run's main process
has ended. Only entries of exactly that name form are ever removed, and a staging folder
only by whoever holds its lock. ``flock`` may not reach other machines on a network file
system: prepare into one output folder from one machine at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import multiprocessing as mp
import os
import queue
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from litdata.streaming.item_loader import TokensLoader
from litdata.streaming.writer import BinaryWriter

from app.data.readers import SLIMPAJAMA_DOMAIN_FIELD, BadRecord, detect_format, read_documents, slimpajama_domain
from app.data.stats import PairCounter, count_codes, count_unigrams, entropies, pair_codes
from app.data.tokenizer import Tokenizer
from app.errors import SproutError
from app.files import process_gone, replacing, write_json

SHARD_FORMAT = "sprout-shards/1"
META = "meta.json"
UNIGRAM_FILE = "unigram.npy"
SPLITS = ("train", "val")
SOURCE_FORMATS = ("auto", "slimpajama", "starcoder", "jsonl", "parquet", "text")
DEFAULT_CHUNK_TOKENS = 1 << 22  # 16 MiB of int32 per chunk
MAX_EXAMPLES = 20  # bad records listed per domain in meta.json
_BATCH_CHARS = 1 << 20  # text per encode_batch call
_PARENT_PART = "99999"  # staging part written by the parent, after the tasks' 00000, 00001, ...
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STAGING_NAME = re.compile(r"^(\.staging-[a-z0-9_]{8})(\.lock)?$")  # what tempfile makes from prefix ".staging-"
_AUTO_DIR_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.zstd", ".parquet", ".txt")
_DIR_SUFFIXES = {"slimpajama": (".jsonl", ".jsonl.zst", ".jsonl.zstd"), "jsonl": (".jsonl", ".jsonl.zst", ".jsonl.zstd"), "starcoder": (".parquet",), "parquet": (".parquet",)}


@dataclass
class Source:
    """One input of ``prepare``: which files, how to read them, which domain they feed.

    Args:
        paths: files, folders (searched recursively) or glob patterns.
        format: ``auto`` decides per file name: ``.jsonl[.zst]`` is ``slimpajama`` when no
            ``domain`` is given, else ``jsonl``; ``.parquet`` is ``starcoder`` when no
            ``domain`` is given, else ``parquet``; anything else is ``text``.
            ``slimpajama``: JSON lines with ``text``, domain from ``meta.redpajama_set_name``
            (``RedPajamaC4`` -> ``c4`` ...). ``starcoder``: parquet ``content`` column, domain =
            the file's folder (the language). ``jsonl``, ``parquet`` and ``text`` need ``domain``.
            In a folder, ``auto`` picks up .jsonl, .jsonl.zst, .parquet and .txt files and
            ``text`` every file that is not hidden.
        domain: output domain name; for slimpajama/starcoder it merges every natural domain
            (set name / language) into this one.
        text_fields: record fields or columns joined with a newline into one document
            (default ``text`` for JSON lines, ``content`` for parquet), e.g. GSM8K's
            ``[question, answer]``.
        max_doc_chars: text files longer than this are cut at paragraph breaks into several
            documents (default: one document per file).
        include: keep only these natural domains (SlimPajama short names, Starcoderdata
            language folders).
        exclude: drop these natural domains (TinyLlama dropped SlimPajama's ``github``).
    """

    paths: list[str] | str
    format: Literal["auto", "slimpajama", "starcoder", "jsonl", "parquet", "text"] = "auto"
    domain: str | None = None
    text_fields: list[str] | None = None
    max_doc_chars: int | None = None
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.paths, (str, os.PathLike)):
            self.paths = [self.paths]
        self.paths = [str(p) for p in self.paths]


@dataclass(frozen=True)
class _File:
    """One input file, resolved: how to read it and where its documents go."""

    path: str
    read_format: str  # jsonl | parquet | text
    domain: str | None  # output domain; None: from each record's natural domain
    text_fields: tuple[str, ...] | None
    record_domains: bool  # read SlimPajama's set name from every record
    max_doc_chars: int | None
    include: frozenset[str] | None
    exclude: frozenset[str]
    size: int


@dataclass(frozen=True)
class _Task:
    task_id: int
    files: tuple[_File, ...]
    tokenizer_path: str
    staging: str
    chunk_tokens: int
    val_threshold: int  # hash values below this go to val
    key: bytes  # hash key from the seed
    skip_bad_records: bool
    done_domains: frozenset[str]  # finished in an earlier run: read past, do not tokenize


@dataclass
class _Part:
    """What one task produced for one domain."""

    vocab_size: int
    docs: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    files: set[str] = field(default_factory=set)
    unigram: np.ndarray | None = None
    pairs: PairCounter | None = None
    skipped: int = 0
    examples: list[dict] = field(default_factory=list)
    candidate: tuple[int, np.ndarray] | None = None  # smallest-hash train document, held back
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.unigram = np.zeros(self.vocab_size, np.int64)
        self.pairs = PairCounter(self.vocab_size)

    def add_bad(self, bad: BadRecord) -> None:
        self.skipped += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"file": bad.file, "line": bad.line, "reason": bad.reason})


@dataclass
class _TaskResult:
    task_id: int
    parts: dict[str, _Part]
    unattributed: list[BadRecord]  # bad records of files that fed no domain
    reused: set[str]  # finished domains met in the records
    excluded: Counter  # natural domain -> documents dropped by include/exclude


class _SplitWriter:
    """Packs one task's token stream for one (domain, split) into chunks of ``chunk_tokens``."""

    def __init__(self, directory: Path, chunk_tokens: int) -> None:
        self.writer = BinaryWriter(str(directory), chunk_size=chunk_tokens, item_loader=TokensLoader())
        self.chunk_tokens = chunk_tokens
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.items = 0

    def add(self, tokens: np.ndarray) -> None:
        self.pending.append(tokens)
        self.n_pending += len(tokens)
        if self.n_pending >= self.chunk_tokens:
            flat = np.concatenate(self.pending)
            cut = len(flat) - len(flat) % self.chunk_tokens
            for start in range(0, cut, self.chunk_tokens):
                self._emit(flat[start : start + self.chunk_tokens])
            self.pending = [flat[cut:]] if cut < len(flat) else []
            self.n_pending = len(flat) - cut

    def _emit(self, tokens: np.ndarray) -> None:
        self.writer.add_item(self.items, tokens)
        self.items += 1

    def close(self) -> None:
        if self.n_pending:
            self._emit(np.concatenate(self.pending))
        self.writer.done()


# -- the per-task work (runs in worker processes) ------------------------------------------

_progress_queue = None  # set in pool workers
_tokenizers: dict[str, Tokenizer] = {}
_staging_locks: set[int] = set()  # descriptors of the staging locks this process holds


def _worker_init(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    for fd in _staging_locks:  # a forked worker shares the parent's lock: drop it, so only the parent's life holds it
        os.close(fd)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism


def _worker_tokenizer(path: str) -> Tokenizer:
    if path not in _tokenizers:
        tok = Tokenizer.load(path)
        tok.num_threads = 1
        _tokenizers[path] = tok
    return _tokenizers[path]


def _pool_task(task: _Task) -> _TaskResult:
    report = lambda docs, tokens: _progress_queue.put((docs, tokens))  # noqa: E731
    return _run_task(task, _worker_tokenizer(task.tokenizer_path), report)


def _doc_hash(text: str, key: bytes) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little")


def _bad_record_error(bad: BadRecord) -> SproutError:
    return SproutError(
        f"Bad input record at {bad.describe()}. Fix or remove it, or re-run with --skip_bad_records true "
        "(skip_bad_records=True in Python) to skip such records; they are then counted and listed in the summary and meta.json."
    )


def _run_task(task: _Task, tok: Tokenizer, report: Callable[[int, int], None]) -> _TaskResult:
    vocab, eos = tok.vocab_size, tok.eos_id
    result = _TaskResult(task.task_id, {}, [], set(), Counter())
    writers: dict[tuple[str, str], _SplitWriter] = {}
    pending: dict[str, list[tuple[str, str, int]]] = {}  # domain -> [(text, file, line)]
    pending_chars: Counter = Counter()

    def part(domain: str) -> _Part:
        if domain not in result.parts:
            result.parts[domain] = _Part(vocab)
        return result.parts[domain]

    def write(domain: str, split: str, tokens: np.ndarray) -> None:
        if (domain, split) not in writers:
            writers[domain, split] = _SplitWriter(Path(task.staging) / domain / split / f"{task.task_id:05d}", task.chunk_tokens)
        writers[domain, split].add(tokens)

    def bad_record(bad: BadRecord, domain: str | None, file_domains: set[str], unknown: list[BadRecord]) -> None:
        if not task.skip_bad_records:
            raise _bad_record_error(bad)
        if domain is None:
            unknown.append(bad)  # attributed once we know which domains the file fed
        else:
            part(domain).add_bad(bad)
            file_domains.add(domain)

    def encode(domain: str, batch: list[tuple[str, str, int]]) -> list[tuple[str, list[int]]]:
        texts = [text for text, _, _ in batch]
        try:
            return list(zip(texts, tok.encode_batch(texts)))
        except Exception:  # one bad text fails the batch: find it document by document
            encoded = []
            for text, file, line in batch:
                try:
                    encoded.append((text, tok.encode(text)))
                except Exception as err:
                    bad = BadRecord(file, line, f"cannot be tokenized ({type(err).__name__}: {err}); the text holds characters the tokenizer rejects, e.g. lone surrogates", domain)
                    if not task.skip_bad_records:
                        raise _bad_record_error(bad) from None
                    part(domain).add_bad(bad)
            return encoded

    def flush(domain: str) -> None:
        batch = pending.pop(domain, [])
        pending_chars.pop(domain, None)
        if not batch:
            return
        start = time.perf_counter()
        p = part(domain)
        train: list[np.ndarray] = []
        batch_tokens = 0
        for text, ids in encode(domain, batch):
            tokens = np.array(ids + [eos], dtype=np.int32)
            batch_tokens += len(tokens)
            h = _doc_hash(text, task.key)
            split = "val" if h < task.val_threshold else "train"
            p.docs[split] += 1
            p.tokens[split] += len(tokens)
            if split == "val":
                write(domain, "val", tokens)
                continue
            train.append(tokens)
            if task.val_threshold and (p.candidate is None or h < p.candidate[0]):
                previous, p.candidate = p.candidate, (h, tokens)
                if previous is None:
                    continue
                tokens = previous[1]
            write(domain, "train", tokens)
        if train:
            flat = np.concatenate(train)
            p.unigram += count_unigrams(flat, vocab)
            codes = pair_codes(flat, vocab)
            keep = np.ones(len(codes), bool)
            keep[np.cumsum([len(t) for t in train])[:-1] - 1] = False  # pairs that cross documents
            p.pairs.add(codes[keep])
        p.seconds += time.perf_counter() - start
        report(len(batch), batch_tokens)

    for spec in task.files:
        file_domains: set[str] = set()
        unknown: list[BadRecord] = []
        for item in read_documents(spec.path, spec.read_format, text_fields=list(spec.text_fields) if spec.text_fields else None,
                                   domain_field=SLIMPAJAMA_DOMAIN_FIELD if spec.record_domains else None, max_doc_chars=spec.max_doc_chars):
            natural = slimpajama_domain(item.domain) if item.domain is not None else None
            if natural is not None and ((spec.include is not None and natural not in spec.include) or natural in spec.exclude):
                result.excluded[natural] += 1
                continue
            domain = spec.domain or natural
            if domain in task.done_domains:
                result.reused.add(domain)
                continue
            if isinstance(item, BadRecord):
                bad_record(item, domain, file_domains, unknown)
                continue
            file_domains.add(domain)
            pending.setdefault(domain, []).append((item.text, spec.path, item.line))
            pending_chars[domain] += len(item.text)
            if pending_chars[domain] >= _BATCH_CHARS:
                flush(domain)
        if spec.domain is not None:
            file_domains.add(spec.domain)  # a fixed-domain file is a source even if all of it was bad
        for domain in file_domains:
            part(domain).files.add(spec.path)
        for bad in unknown:
            if not file_domains:
                result.unattributed.append(bad)
            for domain in sorted(file_domains):
                part(domain).add_bad(bad)
    for domain in list(pending):
        flush(domain)
    for w in writers.values():
        w.close()
    return result


# -- planning (parent process) ------------------------------------------------------------


def _check_domain_name(name: str, what: str) -> str:
    if not _DOMAIN_NAME.match(name):
        raise SproutError(f"Domain name {name!r} ({what}) is not usable as a folder name: use letters, digits, '_', '.' or '-', starting with a letter or digit.")
    return name


def _list_files(pattern: str, fmt: str) -> list[Path]:
    path = Path(pattern).expanduser()
    if glob.has_magic(str(path)):
        found = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
    elif path.exists():
        found = [path]
    else:
        raise SproutError(f"Source path {path} does not exist. Fix the path (files, folders and glob patterns are accepted).")
    files: list[Path] = []
    for p in found:
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            suffixes = _DIR_SUFFIXES.get(fmt, _AUTO_DIR_SUFFIXES if fmt == "auto" else None)
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [Path(root) / n for n in sorted(names) if not n.startswith(".") and (suffixes is None or n.lower().endswith(suffixes))]
    if not files:
        raise SproutError(f"Source path {pattern!r} matched no {'' if fmt in ('auto', 'text') else fmt + ' '}input files. Fix the path or the source format.")
    return files


def _resolve(source: Source) -> list[_File]:
    if source.format not in SOURCE_FORMATS:
        raise SproutError(f"Unknown source format {source.format!r} for {source.paths}; choose one of {', '.join(SOURCE_FORMATS)}.")
    if source.domain is not None:
        _check_domain_name(source.domain, f"source {source.paths}")
    if source.max_doc_chars is not None and source.max_doc_chars < 1:
        raise SproutError(f"max_doc_chars must be a positive number of characters (got {source.max_doc_chars}) for source {source.paths}.")
    files = []
    for pattern in source.paths:
        for path in _list_files(pattern, source.format):
            read_format = {"slimpajama": "jsonl", "starcoder": "parquet", "auto": detect_format(path)}.get(source.format, source.format)
            kind = source.format
            if kind == "auto":
                kind = {"jsonl": "slimpajama", "parquet": "starcoder"}.get(read_format, "text") if source.domain is None else read_format
            if kind in ("jsonl", "parquet", "text") and source.domain is None:
                raise SproutError(f"{path} is read as {kind} and needs a domain name: set the source's domain (--domain NAME).")
            if kind not in ("slimpajama", "starcoder") and (source.include is not None or source.exclude):
                raise SproutError(f"include/exclude select SlimPajama sets or Starcoderdata languages, but {path} is read as {kind}. Remove them from this source.")
            include = frozenset(source.include) if source.include is not None else None
            exclude = frozenset(source.exclude)
            domain = source.domain
            if kind == "starcoder":  # the language folder is the natural domain: filter whole files
                language = path.resolve().parent.name
                if (include is not None and language not in include) or language in exclude:
                    continue
                domain = domain or _check_domain_name(language, f"folder of {path}")
            files.append(_File(
                path=str(path.resolve()), read_format=read_format, domain=domain,
                text_fields=tuple(source.text_fields) if source.text_fields else None,
                record_domains=kind == "slimpajama", max_doc_chars=source.max_doc_chars,
                include=include, exclude=exclude, size=path.stat().st_size,
            ))
    if not files:
        raise SproutError(f"Source {source.paths} has no files left after include={source.include} / exclude={source.exclude}. Check the language or set names.")
    return files


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: treated as unfinished and rebuilt


def _finished_domains(out_root: Path, tok: Tokenizer) -> dict[str, dict]:
    """Domains in ``out_root`` whose meta.json matches ``tok``; another tokenizer's is an error."""
    finished = {}
    if not out_root.is_dir():
        return finished
    for meta_path in sorted(out_root.glob(f"*/{META}")):
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


def _place_tokenizer(tok: Tokenizer, out_root: Path, overwrite: bool) -> None:
    """Copy the tokenizer next to the domains, where the data module looks by default."""
    dest = out_root / ("tokenizer.json" if tok.kind == "hf" else "tokenizer.model")
    if dest.exists():
        if dest.resolve() == tok.path.resolve() or hashlib.sha256(dest.read_bytes()).hexdigest() == tok.sha256:
            return
        if not overwrite:
            raise SproutError(f"{dest} is another tokenizer than {tok.path}. Choose another output folder, or pass --overwrite to replace it.")
    with replacing(dest) as tmp:
        shutil.copyfile(tok.path, tmp)


def contiguous_runs(sizes: list[int], n: int) -> list[int]:
    """Group index of each item: n contiguous runs of about equal total size, in order.

    A group index never skips one (a large item cannot leave a group empty) and the last
    items are spread so that every group gets at least one item when there are enough.
    """
    n = max(1, min(n, len(sizes)))
    total, done, group, groups = sum(sizes) or 1, 0, 0, []
    for i, size in enumerate(sizes):
        target = min(n - 1, done * n // total)
        group = max(group, min(target, group + 1), n - (len(sizes) - i))
        groups.append(group)
        done += size
    return groups


def _split_tasks(files: list[_File], n_tasks: int) -> list[list[_File]]:
    """Contiguous runs of files with about equal bytes each (order kept, so output is stable)."""
    groups: dict[int, list[_File]] = {}
    for f, g in zip(files, contiguous_runs([f.size for f in files], n_tasks)):
        groups.setdefault(g, []).append(f)
    return list(groups.values())


# -- running ------------------------------------------------------------------------------


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
def _staging_folder(out_root: Path) -> Iterator[Path]:
    """A fresh ``<out_root>/.staging-*`` folder for this run's chunks, removed when the run ends.

    Stale folders of killed runs are removed first. The lock is taken before the folder is
    made and released after it is removed, so a folder never exists unlocked while its run lives.
    """
    _remove_stale_staging(out_root)
    fd, lock = tempfile.mkstemp(prefix=".staging-", suffix=".lock", dir=out_root)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _staging_locks.add(fd)
    staging = Path(lock).with_suffix("")
    try:
        staging.mkdir()
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        Path(lock).unlink(missing_ok=True)
        _staging_locks.discard(fd)
        os.close(fd)


def _run_tasks(tasks: list[_Task], tok: Tokenizer, num_workers: int, progress: bool) -> list[_TaskResult]:
    from tqdm.auto import tqdm

    bar = tqdm(unit="doc", desc="tokenizing", disable=not progress, dynamic_ncols=True)
    start, tokens = time.perf_counter(), 0

    def report(docs: int, new_tokens: int) -> None:
        nonlocal tokens
        tokens += new_tokens
        bar.update(docs)
        bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f} tok/s, {tokens:,} tokens", refresh=False)

    try:
        if num_workers <= 1 or len(tasks) == 1:
            return [_run_task(task, tok, report) for task in tasks]
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        progress_queue = ctx.Queue()
        # Set before forking: HF tokenizers then neither warns in the children nor fights the pool for cores.
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        before = {p.pid for p in mp.active_children()}
        try:
            pool = ctx.Pool(min(num_workers, len(tasks)), initializer=_worker_init, initargs=(progress_queue,))
            workers = {p.pid for p in mp.active_children()} - before
        finally:
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM")
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved
        with pool:
            # largest first, so that no big task starts last and leaves the other workers idle
            by_size = sorted(tasks, key=lambda t: -sum(f.size for f in t.files))
            running = [pool.apply_async(_pool_task, (task,)) for task in by_size]
            results = []
            while running:
                try:
                    report(*progress_queue.get(timeout=0.2))
                except queue.Empty:
                    pass
                for r in [r for r in running if r.ready()]:
                    results.append(r.get())  # re-raises a worker's error here
                    running.remove(r)
                # multiprocessing.Pool silently replaces a killed worker, and its task never ends
                dead = [pid for pid in workers if process_gone(pid)]
                if dead and running:
                    raise SproutError(f"A preparation worker process (pid {dead[0]}) died, most likely killed by the system for lack of memory. Re-run with fewer --num_workers.")
            while not progress_queue.empty():
                report(*progress_queue.get())
            return sorted(results, key=lambda r: r.task_id)
    finally:
        bar.close()


# -- merging (parent process) -----------------------------------------------------------


def _merge_split(parts_dir: Path, out_dir: Path) -> None:
    """Move every task's chunks of one split into ``out_dir`` and write one litdata index."""
    out_dir.mkdir(parents=True)
    chunks, config = [], None
    for task_dir in sorted(parts_dir.iterdir()) if parts_dir.is_dir() else []:
        for index_file in sorted(task_dir.glob("*.index.json")):
            index = json.loads(index_file.read_text())
            config = config or index["config"]
            for chunk in index["chunks"]:
                name = f"chunk-{task_dir.name}-{len(chunks):06d}.bin"
                os.replace(task_dir / chunk["filename"], out_dir / name)
                chunks.append({**chunk, "filename": name})
    if chunks:
        write_json(out_dir / "index.json", {"chunks": chunks, "config": config, "updated_at": str(time.time())})


def _finish_domain(name: str, parts: list[_Part], out_root: Path, staging: Path, tok: Tokenizer, chunk_tokens: int, meta_extra: dict) -> dict:
    docs, tokens, files, unigram = Counter(), Counter(), set(), np.zeros(tok.vocab_size, np.int64)
    pairs = PairCounter(tok.vocab_size)
    skipped, examples, seconds = 0, [], 0.0
    for p in parts:
        docs.update(p.docs)
        tokens.update(p.tokens)
        files |= p.files
        unigram += p.unigram
        pairs.merge(*p.pairs.result())
        skipped += p.skipped
        examples += p.examples
        seconds += p.seconds
    # Held-back documents: the smallest-hash one becomes validation if nothing else did.
    candidates = sorted((p.candidate for p in parts if p.candidate is not None), key=lambda c: c[0])
    extra = Path(staging) / name
    if candidates and docs["val"] == 0 and docs["train"] >= 2:
        _, moved = candidates.pop(0)
        writer = _SplitWriter(extra / "val" / _PARENT_PART, chunk_tokens)
        writer.add(moved)
        writer.close()
        docs["train"] -= 1
        docs["val"] += 1
        tokens["train"] -= len(moved)
        tokens["val"] += len(moved)
        unigram -= count_unigrams(moved, tok.vocab_size)
        codes, counts = count_codes(pair_codes(moved, tok.vocab_size))
        pairs.merge(codes, -counts)
    if candidates:
        writer = _SplitWriter(extra / "train" / _PARENT_PART, chunk_tokens)
        for _, doc in candidates:
            writer.add(doc)
        writer.close()

    domain_dir = out_root / name
    (domain_dir / META).unlink(missing_ok=True)  # first: an interrupted rebuild must not look complete
    for split in SPLITS:
        shutil.rmtree(domain_dir / split, ignore_errors=True)
        _merge_split(extra / split, domain_dir / split)
    np.save(domain_dir / UNIGRAM_FILE, unigram)
    h = entropies(unigram, pairs.to_sparse())
    meta = {
        "format": SHARD_FORMAT,
        "domain": name,
        "tokenizer": tok.identity,
        "splits": {s: {"tokens": int(tokens[s]), "documents": int(docs[s])} for s in SPLITS},
        "sources": sorted(files),
        "stats": {"unigram_entropy": h["shannon"], "joint_entropy": h["joint"], "conditional_entropy": h["conditional"], "unigram_counts_file": UNIGRAM_FILE},
        "skipped": {"count": skipped, "examples": examples[:MAX_EXAMPLES]},
        **meta_extra,
    }
    write_json(domain_dir / META, meta)
    return {"meta": meta, "seconds": seconds}


# -- the entry point ----------------------------------------------------------------------


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
) -> dict[str, dict]:
    """Tokenize ``sources`` into ``<out_root>/<domain>/{train,val,meta.json}``; returns ``{domain: meta}``.

    Domains already prepared with the same tokenizer are reused (and returned) unless
    ``overwrite``. Bad records stop the run with an error naming file and line, unless
    ``skip_bad_records``: then they are skipped, counted and listed in the summary and in
    each domain's ``meta.json``. ``num_workers`` defaults to every usable core.
    """
    started = time.perf_counter()
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    if not 0 <= val_fraction < 1:
        raise SproutError(f"val_fraction must be in [0, 1), got {val_fraction}. Use e.g. 0.01 to hold out 1% of documents.")
    if chunk_tokens < 1:
        raise SproutError(f"chunk_tokens must be positive, got {chunk_tokens}.")
    if not sources:
        raise SproutError("No sources to prepare: give at least one input (e.g. --text PATH --domain NAME).")
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out_root = Path(out_root).expanduser().resolve()

    files = [f for s in sources for f in _resolve(s)]
    seen: dict[str, str] = {}
    for f in files:
        if f.path in seen:
            raise SproutError(f"{f.path} is listed by two sources; each file may feed the data only once. Remove it from one of them.")
        seen[f.path] = f.domain
    finished = {} if overwrite else _finished_domains(out_root, tok)
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

    results: list[_TaskResult] = []
    finished_now: dict[str, dict] = {}
    out_root.mkdir(parents=True, exist_ok=True)
    _place_tokenizer(tok, out_root, overwrite)
    if todo:
        with _staging_folder(out_root) as staging:
            tasks = [
                _Task(i, tuple(group), str(tok.path), str(staging), chunk_tokens, int(val_fraction * 2**64), seed.to_bytes(8, "little", signed=True),
                      skip_bad_records, frozenset(finished))
                for i, group in enumerate(_split_tasks(todo, 4 * num_workers if num_workers > 1 else 1))
            ]
            results = _run_tasks(tasks, tok, num_workers, progress)
            by_domain: dict[str, list[_Part]] = {}
            for r in results:
                for name, p in r.parts.items():
                    by_domain.setdefault(name, []).append(p)
            extra = {"val_fraction": val_fraction, "seed": seed}
            for name in sorted(by_domain):
                _check_domain_name(name, "from the records")
                if sum(p.docs.total() for p in by_domain[name]) == 0:
                    finished_now[name] = {"meta": None, "seconds": 0.0, "skipped": sum(p.skipped for p in by_domain[name])}
                    continue
                finished_now[name] = _finish_domain(name, by_domain[name], out_root, staging, tok, chunk_tokens, extra)
    for r in results:
        reused |= r.reused
    metas = {name: finished[name] for name in sorted(reused)}
    metas.update({name: d["meta"] for name, d in finished_now.items() if d["meta"] is not None})
    if summary:
        _print_summary(metas, finished_now, reused, results, time.perf_counter() - started, num_workers)
    return dict(sorted(metas.items()))


def _print_summary(metas: dict, prepared: dict, reused: set[str], results: list[_TaskResult], wall: float, num_workers: int) -> None:
    rows = [("domain", "status", "train docs", "val docs", "tokens", "skipped", "worker-s", "tok/s/worker")]
    total_tokens = 0
    for name in sorted(set(metas) | set(prepared)):
        meta = metas.get(name)
        if meta is None:
            rows.append((name, "EMPTY", "0", "0", "0", str(prepared[name]["skipped"]), "", ""))
            continue
        tokens = sum(meta["splits"][s]["tokens"] for s in SPLITS)
        status = "reused" if name in reused and name not in prepared else "prepared"
        seconds = prepared[name]["seconds"] if status == "prepared" else None
        if status == "prepared":
            total_tokens += tokens
        rows.append((
            name, status, f"{meta['splits']['train']['documents']:,}", f"{meta['splits']['val']['documents']:,}", f"{tokens:,}",
            f"{meta['skipped']['count']:,}", f"{seconds:.1f}" if seconds is not None else "", f"{tokens / seconds:,.0f}" if seconds else "",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    if prepared:
        lines.append(f"prepared {total_tokens:,} tokens in {wall:.1f} s wall with {num_workers} worker(s): {total_tokens / max(wall, 1e-9):,.0f} tokens/s")
    else:
        lines.append("nothing new to prepare: every domain was already prepared with this tokenizer (--overwrite rebuilds)")
    excluded = sum((r.excluded for r in results), Counter())
    if excluded:
        lines.append("left out by include/exclude: " + ", ".join(f"{k} {v:,} docs" for k, v in sorted(excluded.items())))
    for name, meta in metas.items():
        if meta["splits"]["val"]["documents"] == 0 and name in prepared:
            lines.append(f"warning: domain {name!r} has no validation documents (only {meta['splits']['train']['documents']} document(s) in all); raise val_fraction or split its files with max_doc_chars.")
        for ex in meta["skipped"]["examples"][:3] if name in prepared else []:
            lines.append(f"skipped in {name}: {ex['file']}" + (f", line {ex['line']}" if ex["line"] is not None else "") + f": {ex['reason']}")
    for r in results:
        for bad in r.unattributed:
            lines.append(f"skipped (fed no domain): {bad.describe()}")
    print("\n".join(lines), file=sys.stdout, flush=True)
