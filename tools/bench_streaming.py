"""Benchmarks of the chunk-aware order, run from ``tools/bench_data.py`` (``--benchmarks '[chunks, latency, sampler]'``).

``chunks``: the corpus prepared in small chunks (``CHUNK_TOKENS``), uploaded to an S3 server on
this machine, and read for 90% of an epoch (no domain starts its second) by the data module
(2 loader workers) with a cache a tenth of the data, through ``tools/s3_proxy.py``, which counts
what the store sends: GETs per chunk read, and bytes of every chunk GET (those fetched ahead
and not yet read included) per byte of the chunks read. Targets: at most 1.05 and 1.1.

``latency``: the same, with 50 ms added to every request by the proxy; the data module's tokens/s
against the quick-start model's training rate. Target: at least 10x.

``sampler``: ``MixtureBatchSampler`` sized for SlimPajama without GitHub plus Starcoderdata at
sequence length 2048 (419M blocks in 16 MiB chunks, 7 domains, rank 0 of 64; a synthetic index):
time and memory (``tracemalloc`` peak) to its first batch. Targets: under 1 s and 100 MB.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

CHUNK_TOKENS = 4096  # 16 KiB chunks: hundreds in a small corpus
WINDOW, PREFETCH = 4, 4
SEQ_LEN, BATCH = 256, 8


def _upload(setup, out: Path, server) -> str:
    from sprout.data.prepare import prepare
    from sprout.data.prepare.publish import publish_domain, publish_tokenizer
    from sprout.data.store.client import ObjectStore

    metas = prepare(
        setup.sources,
        setup.tokenizer,
        out,
        num_workers=setup.num_workers,
        chunk_tokens=CHUNK_TOKENS,
        progress=False,
        summary=False,
    )
    server.client().create_bucket(Bucket="sprout-bench")
    store = ObjectStore("s3://sprout-bench/data")
    publish_tokenizer(store, out / setup.tokenizer.path.name, overwrite=False)
    for domain in metas:
        publish_domain(store, out, domain)
    return store.url


def _read(url: str, out: Path, cache: Path, batches: int | None, latency: float, proxy_of) -> dict:
    """Read ``batches`` (default: one epoch's worth of blocks) through a proxy; what it cost."""
    from sprout.data.chunks import SplitChunks
    from sprout.data.datamodule import SproutDataModule

    splits = [SplitChunks(p.parent, SEQ_LEN + 1) for p in sorted(out.glob("*/train/index.json"))]
    data_bytes = sum(sum(s.bytes) for s in splits)
    with proxy_of(latency) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        dm = SproutDataModule(
            url,
            seq_len=SEQ_LEN,
            batch_size=BATCH,
            num_workers=2,
            cache_dir=str(cache),
            cache_size=data_bytes // 10,
            window=WINDOW,
            prefetch=PREFETCH,
        )
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        next(loader)
        n = batches or int(0.9 * sum(dm.sizes)) // BATCH
        read: set[tuple[int, int]] = set()
        start = time.perf_counter()
        for _ in range(n):
            batch = next(loader)
            read |= {
                (d, dm.sampler.orders[d].chunk_of(b)) for d, b in zip(batch["domain"].tolist(), batch["block"].tolist())
            }
        seconds = time.perf_counter() - start
        del loader
        gets = {k: v for k, v in proxy.gets.items() if k.endswith(".bin") and "/train/" in k}
        sent = sum(proxy.sent[k] for k in gets)
    chunk_bytes = sum(dm.chunks[d].bytes[c] for d, c in read)
    prefix = url.removeprefix("s3:/")  # the proxy sees path-style requests: /bucket/prefix/key
    read_keys = {f"{prefix}/{dm.domains[d]}/train/{dm.chunks[d].names[c]}" for d, c in read}
    return {
        "read_gets": sum(gets.get(k, 0) for k in read_keys),
        "data": data_bytes,
        "cache": data_bytes // 10,
        "chunks": len(read),
        "downloads": sum(gets.values()),
        "sent": sent,
        "read_bytes": chunk_bytes,
        "tokens_per_s": n * BATCH * SEQ_LEN / seconds,
        "batches": n,
    }


def _with_store(setup, run) -> list[tuple]:
    """``run(url, prepared folder, proxy_of)`` with the corpus in a local S3 server; ``proxy_of(latency)``
    is a counting proxy in front of it."""
    from tools.local_s3 import local_s3
    from tools.s3_proxy import S3Proxy

    saved = dict(os.environ)
    try:
        with local_s3() as server:
            os.environ.update(server.env())
            url = _upload(setup, setup.workdir / "chunked", server)
            return run(url, setup.workdir / "chunked", lambda latency: S3Proxy(server.endpoint, latency))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def bench_chunks(setup) -> list[tuple]:
    def run(url, out, proxy_of):
        r = _read(url, out, setup.workdir / "cache-chunks", None, 0.0, proxy_of)
        return [
            (
                f"{r['data'] / 2**20:.1f} MiB of data, cache {r['cache'] / 2**20:.2f} MiB, {r['batches']} batches",
                f"{r['chunks']}",
                f"{r['read_gets'] / r['chunks']:.3f}",
                f"{r['sent'] / r['read_bytes']:.3f}",
            )
        ]

    return _with_store(setup, run)


def bench_latency(setup, train_rate) -> list[tuple]:
    def run(url, out, proxy_of):
        r = _read(url, out, setup.workdir / "cache-latency", 1500, 0.05, proxy_of)
        return [
            ("quick-start model training (tiny, fp32)", f"{train_rate:,.0f}", "1x"),
            (
                f"data module, 2 workers, S3 + 50 ms per request ({r['batches']} batches)",
                f"{r['tokens_per_s']:,.0f}",
                f"{r['tokens_per_s'] / train_rate:.0f}x",
            ),
        ]

    return _with_store(setup, run)


def bench_sampler(setup=None, blocks: int = 419_000_000, world: int = 64) -> list[tuple]:
    from sprout.data.sampler import MixtureBatchSampler

    per_chunk = (1 << 22) // 2049  # blocks of 2,049 tokens in a 16 MiB chunk
    shares = [0.3819, 0.1953, 0.0307, 0.0337, 0.0278, 0.0241, 0.3064]
    chunks = [[per_chunk] * max(1, int(blocks * s) // per_chunk) for s in shares]
    tracemalloc.start()
    start = time.perf_counter()
    sampler = MixtureBatchSampler(chunks, shares, batch_size=8, seed=0, rank=0, world_size=world)
    next(iter(sampler))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    total = sum(map(sum, chunks))
    return [
        (
            f"{total:,} blocks in {sum(map(len, chunks)):,} chunks, rank 0 of {world}",
            f"{seconds:.3f}",
            f"{peak / 2**20:.1f}",
        )
    ]
