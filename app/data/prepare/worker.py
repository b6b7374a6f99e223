"""One task of a preparation: read a run of files, tokenize, split, count, write chunks.

Tasks run in pool workers (or in the parent with one worker). Every document becomes
``tokenizer.encode(text) + [eos_id]``. A document goes to ``val`` when a keyed hash of its
text falls below ``val_fraction``, so the split does not depend on file order or worker
count, and exact duplicates always land on the same side. Each task notes where its
smallest-hash training document lies in its stream, so that the parent can cut one out and
move it to ``val`` when nothing else went there (``sprout.data.prepare.merge``): the training
stream is then the documents in file order, however the files were split into tasks or parts.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from litdata.streaming.item_loader import TokensLoader
from litdata.streaming.writer import BinaryWriter

from sprout.data.checksums import add_checksums
from sprout.data.prepare.ledger import file_record
from sprout.data.prepare.sources import SourceFile, split_tasks
from sprout.data.prepare.staging import held_locks
from sprout.data.readers import SLIMPAJAMA_DOMAIN_FIELD, BadRecord, read_documents, slimpajama_domain
from sprout.data.stats import PairCounter, count_codes, count_unigrams, pair_codes
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.files import process_gone

MAX_EXAMPLES = 20  # bad records listed per domain in meta.json
BATCH_CHARS = 1 << 20  # text per encode_batch call


@dataclass(frozen=True)
class Task:
    task_id: int
    files: tuple[SourceFile, ...]
    tokenizer_path: str
    staging: str
    chunk_tokens: int
    val_threshold: int  # hash values below this go to val
    key: bytes  # hash key from the seed
    skip_bad_records: bool
    done: dict[str, frozenset[str]]  # file -> finished domains that hold its documents already: read past them


@dataclass
class Part:
    """What one task produced for one domain."""

    vocab_size: int
    task: int
    docs: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    files: Counter = field(default_factory=Counter)  # documents per input file
    unigram: np.ndarray | None = None
    pairs: PairCounter | None = None
    skipped: int = 0
    examples: list[dict] = field(default_factory=list)
    candidate: tuple[int, int, int] | None = (
        None  # smallest-hash train document: (hash, start, length) in the task's train stream
    )
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.unigram = np.zeros(self.vocab_size, np.int64)
        self.pairs = PairCounter(self.vocab_size)

    def add_bad(self, bad: BadRecord) -> None:
        self.skipped += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"file": bad.file, "line": bad.line, "reason": bad.reason})

    def absorb(self, other: Part) -> None:
        """Add ``other``'s counts to this one's (a domain's total over tasks or parts): exact,
        since entropies are computed from the summed counts, never averaged."""
        self.docs.update(other.docs)
        self.tokens.update(other.tokens)
        self.files.update(other.files)
        self.unigram += other.unigram
        self.pairs.merge(*other.pairs.result())
        self.skipped += other.skipped
        self.examples += other.examples
        self.seconds += other.seconds

    def move_to_validation(self, doc: np.ndarray) -> None:
        """Count training document ``doc`` as validation instead (its statistics leave the train counts)."""
        self.docs["train"] -= 1
        self.docs["val"] += 1
        self.tokens["train"] -= len(doc)
        self.tokens["val"] += len(doc)
        self.unigram -= count_unigrams(doc, self.vocab_size)
        codes, counts = count_codes(pair_codes(doc, self.vocab_size))
        self.pairs.merge(codes, -counts)


@dataclass
class TaskResult:
    task_id: int
    parts: dict[str, Part]
    unattributed: list[BadRecord]  # bad records of files that fed no domain
    reused: set[str]  # finished domains met in the records
    excluded: Counter  # natural domain -> documents dropped by include/exclude
    records: dict[str, dict] = field(default_factory=dict)  # file -> its size, time and hash (ledger.file_record)


def plan_tasks(
    files: list[SourceFile],
    tok: Tokenizer,
    staging: Path,
    num_workers: int,
    chunk_tokens: int,
    val_fraction: float,
    seed: int,
    skip_bad_records: bool,
    done: dict[str, frozenset[str]] | None = None,
) -> list[Task]:
    """The tasks for ``files``: contiguous runs of about equal bytes, four per worker (one alone).
    ``done`` maps a file to the finished domains that hold its documents already (``ledger``)."""
    done = done or {}
    groups = split_tasks(files, 4 * num_workers if num_workers > 1 else 1)
    val_threshold, key = int(val_fraction * 2**64), seed.to_bytes(8, "little", signed=True)
    return [
        Task(
            i,
            tuple(g),
            str(tok.path),
            str(staging),
            chunk_tokens,
            val_threshold,
            key,
            skip_bad_records,
            {f.path: done[f.path] for f in g if f.path in done},
        )
        for i, g in enumerate(groups)
    ]


class SplitWriter:
    """Packs one task's token stream for one (domain, split) into checksummed chunks of ``chunk_tokens``."""

    def __init__(self, directory: Path, chunk_tokens: int) -> None:
        self.directory = directory
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
                self.write_chunk(flat[start : start + self.chunk_tokens])
            self.pending = [flat[cut:]] if cut < len(flat) else []
            self.n_pending = len(flat) - cut

    def write_chunk(self, tokens: np.ndarray) -> None:
        self.writer.add_item(self.items, tokens)
        self.items += 1

    def close(self) -> None:
        if self.n_pending:
            self.write_chunk(np.concatenate(self.pending))
        self.writer.done()
        add_checksums(self.directory)


# -- the per-task work (runs in worker processes) ------------------------------------------

_progress_queue = None  # set in pool workers
_tokenizers: dict[str, Tokenizer] = {}


def _worker_init(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    for fd in held_locks:  # a forked worker shares the parent's lock: drop it, so only the parent's life holds it
        os.close(fd)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism


def _worker_tokenizer(path: str) -> Tokenizer:
    if path not in _tokenizers:
        tok = Tokenizer.load(path)
        tok.num_threads = 1
        _tokenizers[path] = tok
    return _tokenizers[path]


def _pool_task(task: Task) -> TaskResult:
    report = lambda docs, tokens: _progress_queue.put((docs, tokens))  # noqa: E731
    return run_task(task, _worker_tokenizer(task.tokenizer_path), report)


def _doc_hash(text: str, key: bytes) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little")


def _bad_record_error(bad: BadRecord) -> SproutError:
    return SproutError(
        f"Bad input record at {bad.describe()}. Fix or remove it, or re-run with --skip_bad_records true "
        "(skip_bad_records=True in Python) to skip such records; they are then counted and listed in the summary and meta.json."
    )


def run_task(task: Task, tok: Tokenizer, report: Callable[[int, int], None]) -> TaskResult:
    vocab, eos = tok.vocab_size, tok.eos_id
    result = TaskResult(task.task_id, {}, [], set(), Counter())
    writers: dict[tuple[str, str], SplitWriter] = {}
    pending: dict[str, list[tuple[str, str, int]]] = {}  # domain -> [(text, file, line)]
    pending_chars: Counter = Counter()

    def part(domain: str) -> Part:
        if domain not in result.parts:
            result.parts[domain] = Part(vocab, task.task_id)
        return result.parts[domain]

    def write(domain: str, split: str, tokens: np.ndarray) -> None:
        if (domain, split) not in writers:
            writers[domain, split] = SplitWriter(
                Path(task.staging) / domain / split / f"{task.task_id:05d}", task.chunk_tokens
            )
        writers[domain, split].add(tokens)

    def bad_record(bad: BadRecord, domain: str | None, file_domains: set[str], unknown: list[BadRecord]) -> None:
        if not task.skip_bad_records:
            raise _bad_record_error(bad)
        if domain is None:
            unknown.append(bad)  # attributed once we know which domains the file fed
        else:
            part(domain).add_bad(bad)
            file_domains.add(domain)

    def encode(domain: str, batch: list[tuple[str, str, int]]) -> list[tuple[str, str, list[int]]]:
        texts = [text for text, _, _ in batch]
        try:
            return [(text, file, ids) for (text, file, _), ids in zip(batch, tok.encode_batch(texts))]
        except Exception:  # one bad text fails the batch: find it document by document
            encoded = []
            for text, file, line in batch:
                try:
                    encoded.append((text, file, tok.encode(text)))
                except Exception as err:
                    bad = BadRecord(
                        file,
                        line,
                        f"cannot be tokenized ({type(err).__name__}: {err}); the text holds characters the tokenizer rejects, e.g. lone surrogates",
                        domain,
                    )
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
        for text, file, ids in encode(domain, batch):
            p.files[file] += 1
            tokens = np.array(ids + [eos], dtype=np.int32)
            batch_tokens += len(tokens)
            h = _doc_hash(text, task.key)
            split = "val" if h < task.val_threshold else "train"
            p.docs[split] += 1
            p.tokens[split] += len(tokens)
            if split == "train":
                if task.val_threshold and (p.candidate is None or h < p.candidate[0]):
                    p.candidate = (h, p.tokens["train"] - len(tokens), len(tokens))
                train.append(tokens)
            write(domain, split, tokens)
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
        result.records[spec.path] = file_record(spec.path)
        done = task.done.get(spec.path, frozenset())
        file_domains: set[str] = set()
        unknown: list[BadRecord] = []
        for item in read_documents(
            spec.path,
            spec.read_format,
            text_fields=list(spec.text_fields) if spec.text_fields else None,
            domain_field=SLIMPAJAMA_DOMAIN_FIELD if spec.record_domains else None,
            max_doc_chars=spec.max_doc_chars,
        ):
            natural = slimpajama_domain(item.domain) if item.domain is not None else None
            if natural is not None and (
                (spec.include is not None and natural not in spec.include) or natural in spec.exclude
            ):
                result.excluded[natural] += 1
                continue
            domain = spec.domain or natural
            if domain in done:
                result.reused.add(domain)
                continue
            if isinstance(item, BadRecord):
                bad_record(item, domain, file_domains, unknown)
                continue
            file_domains.add(domain)
            pending.setdefault(domain, []).append((item.text, spec.path, item.line))
            pending_chars[domain] += len(item.text)
            if pending_chars[domain] >= BATCH_CHARS:
                flush(domain)
        if spec.domain is not None:
            file_domains.add(spec.domain)  # a fixed-domain file is a source even if all of it was bad
        for domain in file_domains:
            part(domain).files[spec.path] += 0  # a source of the domain, even with no document kept
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


def run_tasks(tasks: list[Task], tok: Tokenizer, num_workers: int, progress: bool) -> list[TaskResult]:
    from tqdm.auto import tqdm

    bar = tqdm(unit="doc", desc="tokenizing", disable=not progress, dynamic_ncols=True)
    start, tokens = time.perf_counter(), 0

    def report(docs: int, new_tokens: int) -> None:
        nonlocal tokens
        tokens += new_tokens
        bar.update(docs)
        bar.set_postfix_str(
            f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f} tok/s, {tokens:,} tokens", refresh=False
        )

    try:
        if num_workers <= 1 or len(tasks) == 1:
            return [run_task(task, tok, report) for task in tasks]
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
                    raise SproutError(
                        f"A preparation worker process (pid {dead[0]}) died, most likely killed by the system for lack of memory. Re-run with fewer --num_workers."
                    )
            while not progress_queue.empty():
                report(*progress_queue.get())
            return sorted(results, key=lambda r: r.task_id)
    finally:
        bar.close()
