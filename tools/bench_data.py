"""Data pipeline benchmarks on this machine, printed as tables.

    python -m tools.bench_data                      # ../shared/corpus + stdlib code if present, else the embedded corpus
    python -m tools.bench_data --corpus default --tokenizer data/tokenizer.json

``prepare``: tokens/s of ``sprout.data.prepare.prepare`` (read, tokenize, split, write litdata
shards, count statistics, all cores) against the tokenizer's own ``encode_batch`` on the same
documents, already in memory, in one process that uses all cores through the tokenizer's
own threads. Both count the same tokens (each document's ids plus its EOS). The target is
preparation at >= 80% of the tokenizer's speed (wall clock, all cores). Tokens per CPU-second
are printed too: on a machine shared with other work they show the overhead of preparation
without the noise of how many cores each run happened to get. The two runs alternate.

``stream``: tokens/s delivered by ``SproutDataModule`` (prepared shards, the mixture sampler,
batches of the quick start's shape) with 0 and 2 loader workers, against the training speed
of the quick-start model on the same machine. The target is at least 20x.

``remote``: the same data module with 2 loader workers reading the same shards from a local
folder and streamed from an S3 server on this machine (moto's, see ``tools/local_s3.py``; needs
the ``dev`` extra), with a cold cache (an empty ``data.cache_dir``: every chunk is downloaded on
first use) and a warm one (the same cache again). ``repeats`` rounds, mean and std. Targets:
warm at least 10x and cold at least 2x the quick-start model's training rate.

``chunks``, ``latency`` and ``sampler`` measure the chunk-aware order (``tools/bench_streaming.py``).

Each benchmark is a function ``bench_<name>(setup) -> rows`` listed in ``BENCHMARKS``.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from sprout.commands import run_function
from sprout.data.corpus import build_default_corpus
from sprout.data.datamodule import SproutDataModule
from sprout.data.prepare import Source, prepare
from sprout.data.prepare.sources import resolve
from sprout.data.prepare.worker import BATCH_CHARS
from sprout.data.readers import SLIMPAJAMA_DOMAIN_FIELD, Document, read_documents
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.loss import token_losses
from sprout.model import Llama, LlamaConfig
from tools.bench_streaming import bench_chunks, bench_latency, bench_sampler

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


@dataclass
class Setup:
    """What every benchmark gets: inputs, a tokenizer, a scratch folder, the worker count."""

    sources: list[Source]
    tokenizer: Tokenizer
    workdir: Path
    num_workers: int
    repeats: int


def _documents(sources: list[Source]) -> list[str]:
    """The documents ``prepare`` will see, read the same way."""
    texts = []
    for source in sources:
        for f in resolve(source):
            for item in read_documents(
                f.path,
                f.read_format,
                text_fields=list(f.text_fields) if f.text_fields else None,
                domain_field=SLIMPAJAMA_DOMAIN_FIELD if f.record_domains else None,
                max_doc_chars=f.max_doc_chars,
            ):
                if isinstance(item, Document):
                    texts.append(item.text)
    return texts


def _head(texts: list[str], max_chars: int) -> list[str]:
    out, total = [], 0
    for text in texts:
        if total >= max_chars:
            break
        out.append(text)
        total += len(text)
    return out


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bench_prepare(setup: Setup) -> list[tuple]:
    texts = _documents(setup.sources)
    batches, batch, size = [], [], 0
    for text in texts:  # the batch size preparation uses
        batch.append(text)
        size += len(text)
        if size >= BATCH_CHARS:
            batches.append(batch)
            batch, size = [], 0
    batches.append(batch)

    def encode() -> int:
        return sum(len(ids) + 1 for b in batches for ids in setup.tokenizer.encode_batch(b))

    def prepare_all() -> int:
        out = setup.workdir / "prepared"
        metas = prepare(
            setup.sources,
            setup.tokenizer,
            out,
            num_workers=setup.num_workers,
            overwrite=True,
            progress=False,
            summary=False,
        )
        shutil.rmtree(out)
        return sum(s["tokens"] for m in metas.values() for s in m["splits"].values())

    # Alternate the two so that both meet the same (shared, changing) machine load.
    best = {"encode": [float("inf"), float("inf")], "prepare": [float("inf"), float("inf")]}
    counts = {}
    for _ in range(setup.repeats):
        for name, run in (("encode", encode), ("prepare", prepare_all)):
            wall, cpu = time.perf_counter(), _cpu_seconds()
            counts[name] = run()
            best[name] = [min(best[name][0], time.perf_counter() - wall), min(best[name][1], _cpu_seconds() - cpu)]
    if counts["prepare"] != counts["encode"]:
        raise RuntimeError(
            f"prepare wrote {counts['prepare']} tokens but encode_batch gives {counts['encode']}: the benchmark compares different work"
        )
    tokens = counts["encode"]
    (enc_wall, enc_cpu), (prep_wall, prep_cpu) = best["encode"], best["prepare"]
    return [
        (
            "tokenizer encode_batch (texts in memory)",
            f"{len(texts):,}",
            f"{tokens:,}",
            f"{enc_wall:.2f}",
            f"{tokens / enc_wall:,.0f}",
            "100%",
            f"{tokens / enc_cpu:,.0f}",
            "100%",
        ),
        (
            f"prepare, {setup.num_workers} workers (files to shards)",
            f"{len(texts):,}",
            f"{tokens:,}",
            f"{prep_wall:.2f}",
            f"{tokens / prep_wall:,.0f}",
            f"{100 * enc_wall / prep_wall:.0f}%",
            f"{tokens / prep_cpu:,.0f}",
            f"{100 * enc_cpu / prep_cpu:.0f}%",
        ),
    ]


def _train_tokens_per_s(vocab_size: int, seq_len: int, batch_size: int, steps: int = 8) -> float:
    """Training speed of the quick-start model (``tiny``, AdamW, fp32) on random tokens."""
    model = Llama(LlamaConfig.from_name("tiny", vocab_size=vocab_size, block_size=seq_len))
    model.init_weights()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab_size, (batch_size, seq_len + 1))
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            start = time.perf_counter()
        loss = token_losses(model(x[:, :-1]), x[:, 1:]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * batch_size * seq_len / (time.perf_counter() - start)


def _stream_rate(
    data_dir: str, batches: int, seq_len: int, batch_size: int, workers: int, from_start: bool = False, **options
) -> float:
    """Tokens/s of the data module's training batches; worker start-up and the first batch are
    excluded unless ``from_start`` (which counts the set-up too: fetching the indexes, the first downloads)."""
    start = time.perf_counter()
    dm = SproutDataModule(data_dir, seq_len=seq_len, batch_size=batch_size, num_workers=workers, **options)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    if not from_start:
        next(loader)
        start = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        tokens += next(loader)["input_ids"].numel()
    rate = tokens / (time.perf_counter() - start)
    del loader
    return rate


def bench_stream(setup: Setup, seq_len: int = 256, batch_size: int = 8, batches: int = 400) -> list[tuple]:
    """Tokens/s the data module delivers (shards -> sampler -> batches), against training speed."""
    out = setup.workdir / "stream"
    prepare(setup.sources, setup.tokenizer, out, num_workers=setup.num_workers, progress=False, summary=False)
    train = _train_tokens_per_s(setup.tokenizer.vocab_size, seq_len, batch_size)
    rows = [("quick-start model training (tiny, fp32)", "-", f"{train:,.0f}", "1x")]
    for workers in (0, 2):
        rate = _stream_rate(str(out), batches, seq_len, batch_size, workers)
        rows.append((f"data module, {workers} workers", f"{batches}", f"{rate:,.0f}", f"{rate / train:.0f}x"))
    return rows


def bench_remote(
    setup: Setup, seq_len: int = 256, batch_size: int = 8, batches: int = 1000, workers: int = 2
) -> list[tuple]:
    """Streaming from a local S3 server (cold and warm cache) against reading a local folder,
    each timed from the data module's creation to its last batch."""
    import statistics

    from sprout.data.prepare.publish import publish_domain, publish_tokenizer
    from sprout.data.store.client import ObjectStore
    from tools.local_s3 import local_s3

    out = setup.workdir / "stream"
    metas = prepare(setup.sources, setup.tokenizer, out, num_workers=setup.num_workers, progress=False, summary=False)
    shard_bytes = sum(p.stat().st_size for p in out.rglob("chunk-*.bin"))
    train = _train_tokens_per_s(setup.tokenizer.vocab_size, seq_len, batch_size)
    rates: dict[str, list[float]] = {"local folder": [], "S3, cold cache": [], "S3, warm cache": []}
    saved = dict(os.environ)
    with local_s3() as s3:
        os.environ.update(s3.env())
        try:
            s3.client().create_bucket(Bucket="sprout-bench")
            store = ObjectStore("s3://sprout-bench/data")
            publish_tokenizer(store, out / setup.tokenizer.path.name, overwrite=False)
            for domain in metas:
                publish_domain(store, out, domain)
            for round_ in range(setup.repeats):
                cache = setup.workdir / f"cache{round_}"
                run = functools.partial(
                    _stream_rate,
                    batches=batches,
                    seq_len=seq_len,
                    batch_size=batch_size,
                    workers=workers,
                    from_start=True,
                )
                rates["local folder"].append(run(str(out)))
                rates["S3, cold cache"].append(run(store.url, cache_dir=str(cache)))
                rates["S3, warm cache"].append(run(store.url, cache_dir=str(cache)))
        finally:
            os.environ.clear()
            os.environ.update(saved)
    rows = [("quick-start model training (tiny, fp32)", "-", f"{train:,.0f}", "", "1x")]
    for name, values in rates.items():
        mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(
            (
                f"data module, {workers} workers, {name}",
                f"{batches} x {setup.repeats}",
                f"{mean:,.0f}",
                f"± {std:,.0f}",
                f"{mean / train:.0f}x",
            )
        )
    rows.append(
        (f"(shards: {shard_bytes / 2**20:.1f} MiB in {len(list(out.rglob('chunk-*.bin')))} chunks)", "", "", "", "")
    )
    return rows


BENCHMARKS = {
    "prepare": bench_prepare,
    "stream": bench_stream,
    "remote": bench_remote,
    "chunks": bench_chunks,
    "latency": lambda setup: bench_latency(setup, _train_tokens_per_s(setup.tokenizer.vocab_size, 256, 8)),
    "sampler": bench_sampler,
}
HEADERS = {
    "chunks": ("measurement", "chunks read", "downloads per chunk", "bytes sent per byte read"),
    "latency": ("measurement", "tokens/s", "of training"),
    "sampler": ("measurement", "first batch s", "peak MiB"),
    "prepare": ("measurement", "documents", "tokens", "wall s", "tokens/s", "of encode", "tokens/cpu-s", "of encode"),
    "stream": ("measurement", "batches", "tokens/s", "of training"),
    "remote": ("measurement", "batches", "tokens/s", "std", "of training"),
}


def print_table(title: str, headers: tuple, rows: list[tuple]) -> None:
    table = [headers, *rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(headers))]
    lines = [
        "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in table
    ]
    print(f"\n{title}\n" + lines[0] + "\n" + "-" * len(lines[0]) + "\n" + "\n".join(lines[1:]), flush=True)


def _default_sources(corpus: str, workdir: Path) -> list[Source]:
    stdlib = build_default_corpus(workdir / "stdlib_corpus")
    if corpus == "default" or (corpus == "auto" and not SHARED.is_dir()):
        return [Source(paths, format="jsonl", domain=name) for name, paths in stdlib.items()]
    if not SHARED.is_dir():
        raise SproutError(
            f"--corpus shared needs the sample corpus at {SHARED}; use --corpus default for the embedded one."
        )
    return [
        Source([str(SHARED / "books")], domain="books", max_doc_chars=50_000),
        Source([str(SHARED / "shakespeare")], format="text", domain="shakespeare", max_doc_chars=20_000),
        Source([str(SHARED / "math" / "gsm8k_train.jsonl")], domain="math", text_fields=["question", "answer"]),
        Source(stdlib["code"], format="jsonl", domain="code"),
    ]


def bench_data(
    benchmarks: list[str] | None = None,
    corpus: Literal["auto", "shared", "default"] = "auto",
    tokenizer: str | None = None,
    vocab_size: int = 4096,
    num_workers: int | None = None,
    repeats: int = 2,
    workdir: str | None = None,
) -> dict[str, list[tuple]]:
    """Run data benchmarks and print one table each.

    Args:
        benchmarks: which to run (default: all of ``BENCHMARKS``).
        corpus: ``shared`` (../shared/corpus books, Shakespeare, GSM8K + stdlib code),
            ``default`` (the embedded stdlib corpus) or ``auto`` (shared when present).
        tokenizer: tokenizer file to use (default: train a byte-level BPE on the corpus).
        vocab_size: vocabulary of the trained BPE when no tokenizer is given.
        num_workers: worker processes for preparation (default: every usable core).
        repeats: runs per measurement; the fastest counts (``remote``: mean and std over them).
        workdir: scratch folder (default: a temporary one, removed afterwards).
    """
    names = benchmarks or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SproutError(f"Unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}.")
    scratch = Path(workdir or tempfile.mkdtemp(prefix="sprout-bench-"))
    try:
        sources = _default_sources(corpus, scratch)
        if tokenizer:
            tok = Tokenizer.load(tokenizer)
        else:  # a BPE trained on an equal share of every source's documents
            sample = [text for source in sources for text in _head(_documents([source]), 1_000_000)]
            tok = Tokenizer.train_bpe(sample, vocab_size, scratch / "tokenizer.json")
        workers = num_workers or (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
        setup = Setup(sources, tok, scratch, workers, repeats)
        print(
            f"{os.cpu_count()} cores, tokenizer {tok.path.name} ({tok.kind}, vocab {tok.vocab_size}), {workers} preparation workers, best of {repeats}"
        )
        results = {}
        for name in names:
            results[name] = BENCHMARKS[name](setup)
            print_table(name, HEADERS[name], results[name])
        return results
    finally:
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)


def main(args: list[str] | None = None) -> None:
    run_function(bench_data, args, as_positional=False)


if __name__ == "__main__":
    main()
