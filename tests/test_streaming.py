"""Streaming a corpus several times larger than the cache, in many chunks, from a real S3 server.

Every request goes through ``tools/s3_proxy.py``, which counts the GETs and bytes the store
sends per object, loader workers' included: each chunk read in an epoch is downloaded once, and
the cache never holds more than ``data.cache_size`` plus the windows and the chunks fetched ahead.
"""

import json
import os
import uuid
from collections import Counter
from pathlib import Path

import pytest
from test_remote_data import upload

from sprout.data.datamodule import SproutDataModule
from sprout.data.prepare import Source, prepare
from sprout.errors import SproutError
from tools.local_s3 import local_s3
from tools.s3_proxy import S3Proxy

SEQ_LEN, BATCH = 32, 8
WINDOW, PREFETCH = 2, 2


@pytest.fixture(scope="module")
def many_chunks(tiny_data, tmp_path_factory) -> Path:
    """The tiny corpus in chunks of 2,000 tokens (8 KB): a few dozen per domain."""
    raw = tiny_data.parent / "raw"
    out = tmp_path_factory.mktemp("many_chunks") / "data"
    sources = [
        Source([str(p) for p in sorted((raw / d).glob("*.jsonl"))], format="jsonl", domain=d) for d in ("code", "text")
    ]
    prepare(
        sources,
        tiny_data / "tokenizer.json",
        out,
        val_fraction=0.05,
        num_workers=1,
        chunk_tokens=2000,
        progress=False,
        summary=False,
    )
    return out


@pytest.fixture
def store(many_chunks, monkeypatch):
    """The data uploaded to a fresh bucket; the environment points every client at the counting proxy."""
    with local_s3() as server, S3Proxy(server.endpoint) as proxy:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        bucket = f"sprout-{uuid.uuid4().hex[:12]}"
        server.client().create_bucket(Bucket=bucket)
        url = upload(many_chunks, f"s3://{bucket}/data")
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        yield url, proxy


def chunk_bytes(data_dir: Path, split: str = "train") -> dict[str, list[int]]:
    return {
        d: [c["chunk_bytes"] for c in json.loads((data_dir / d / split / "index.json").read_text())["chunks"]]
        for d in ("code", "text")
    }


def test_each_chunk_is_downloaded_once_per_epoch_with_data_many_times_the_cache(many_chunks, store, tmp_path):
    url, proxy = store
    sizes = chunk_bytes(many_chunks)
    largest = max(max(s) for s in sizes.values())
    cache_size = 2 * (WINDOW + PREFETCH) * largest  # two domains' windows and prefetch, nothing more
    assert sum(map(sum, sizes.values())) >= 5 * cache_size and min(map(len, sizes.values())) >= 20
    dm = SproutDataModule(
        url,
        seq_len=SEQ_LEN,
        batch_size=BATCH,
        num_workers=2,
        cache_dir=str(tmp_path / "cache"),
        cache_size=cache_size,
        window=WINDOW,
        prefetch=PREFETCH,
    )
    dm.setup("fit")
    read, peak = Counter(), 0
    loader = iter(dm.train_dataloader())
    cache = dm._cache
    for _ in range(min(dm.sizes) // BATCH):  # less than one epoch of the smaller domain
        batch = next(loader)
        for d, b in zip(batch["domain"].tolist(), batch["block"].tolist()):
            read[d, dm.sampler.orders[d].chunk_of(b)] += 1
        on_disk = sum(p.stat().st_size for p in dm.data_dir.rglob("chunk-*.bin") if p.is_file())
        peak = max(peak, on_disk)
    del loader
    downloads = {k: n for k, n in proxy.gets.items() if k.endswith(".bin") and "/train/" in k}
    assert len(downloads) >= len(read) > 20
    assert max(downloads.values()) == 1  # every chunk downloaded at most once in the epoch
    in_flight = 2 * (WINDOW + PREFETCH) * largest  # the windows being read and the chunks fetched ahead
    sent = sum(proxy.sent[k] for k in downloads)
    assert sent <= sum(sizes[dm.domains[d]][c] for d, c in read) + in_flight
    bound = cache_size + in_flight + 2 * WINDOW * largest  # + the windows that queued batches still read
    print(
        "STATS",
        len(read),
        len(downloads),
        sum(downloads.values()),
        peak,
        cache.peak,
        bound,
        cache_size,
        sum(map(sum, sizes.values())),
    )
    assert peak <= bound and cache.peak <= bound, (peak, cache.peak, bound)


def test_a_cache_too_small_for_the_window_is_refused(many_chunks, store, tmp_path):
    url, _ = store
    sizes = chunk_bytes(many_chunks).values()
    dm = SproutDataModule(
        url, seq_len=SEQ_LEN, batch_size=BATCH, cache_dir=str(tmp_path / "c"), cache_size="10KB", window=4, prefetch=2
    )
    dm.setup("fit")
    with pytest.raises(SproutError) as err:
        dm.train_dataloader()
    needed = sum(sum(sorted(s)[-6:]) for s in sizes)  # the 4 + 2 largest chunks of each domain
    assert str(err.value).startswith(
        f"data.cache_size=10KB gives 10,240 bytes, but reading 2 domain(s) of {url} needs {needed:,}"
    )
    assert f"Raise data.cache_size to at least {needed:,} bytes, or lower data.window or data.prefetch." in str(
        err.value
    )


def test_remote_and_local_read_the_same_blocks_in_the_same_order(many_chunks, store, tmp_path):
    url, _ = store
    batches = []
    for data_dir, workers in ((str(many_chunks), 0), (url, 2)):
        dm = SproutDataModule(
            data_dir,
            seq_len=SEQ_LEN,
            batch_size=BATCH,
            num_workers=workers,
            cache_dir=str(tmp_path / "c"),
            cache_size="1MB",
            window=WINDOW,
            prefetch=PREFETCH,
        )
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        batches.append([next(loader) for _ in range(30)])
        batches.append([b["input_ids"] for loader in dm.val_dataloader() for b in loader])
    (local, local_val), (remote, remote_val) = batches[:2], batches[2:]
    assert all((a[k] == b[k]).all() for a, b in zip(local, remote) for k in a)
    assert all((a == b).all() for a, b in zip(local_val, remote_val))
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1")
