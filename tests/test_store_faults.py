"""Faults of the object store under a run, against a real S3 protocol server (moto): chunks
damaged in the store or in the local cache, and (``app.data.retry``) a store that stops
answering for a while or for good."""

import json
from pathlib import Path

import pytest
import test_remote_data
from test_remote_data import upload

from app.data.checksums import CHECKSUM
from app.data.datamodule import SproutDataModule
from app.data.store.client import ObjectStore
from app.data.verify import verify
from app.errors import SproutError

s3_server, s3 = test_remote_data.s3_server, test_remote_data.s3  # the fixtures of a local S3 server and a fresh bucket


def streamed(url: str, cache: Path) -> SproutDataModule:
    data = SproutDataModule(url, domains=["code"], seq_len=32, batch_size=4, num_workers=0, cache_dir=str(cache))
    data.setup("fit")
    return data


def test_a_chunk_damaged_in_the_store_is_downloaded_again_then_refused_and_verify_names_it(
    tiny_data, s3, tmp_path, capsys
):
    url = upload(tiny_data, f"{s3}/tiny")
    store = ObjectStore(url)
    assert verify(url) == {"code": [], "text": []}
    assert all(line.endswith("match their checksums") for line in capsys.readouterr().out.splitlines())
    first = json.loads((tiny_data / "code" / "train" / "index.json").read_text())["chunks"][0]
    key = f"code/train/{first['filename']}"
    data = bytearray(store.read(key))
    data[-1] ^= 1  # one bit of the last token: same size, a valid token id
    store.write(key, bytes(data))

    with pytest.raises(SproutError) as err:
        next(iter(streamed(url, tmp_path / "cache").train_dataloader()))
    assert str(err.value).startswith(
        f"Shard {store.url_of(key)} of domain 'code' is damaged: it is of the right size, but its {CHECKSUM} checksum is "
    )
    assert (
        f"(downloaded twice). Re-run tools/prepare_data.py --out_dir {url} with --overwrite for domain 'code'"
        in str(err.value)
    )
    with pytest.raises(SproutError, match=r"domain\(s\) 'code' hold damaged or missing chunks"):
        verify(url)
    assert "code: 1 of " in capsys.readouterr().out


def test_a_chunk_damaged_in_the_local_cache_is_downloaded_again(tiny_data, s3, tmp_path):
    url = upload(tiny_data, f"{s3}/tiny")
    cache = tmp_path / "cache"
    want = next(iter(streamed(url, cache).train_dataloader()))
    chunks = list(cache.rglob("code/train/chunk-*.bin"))
    assert chunks
    for chunk in chunks:  # bytes rot on the cache disk, or a copy was cut off
        chunk.write_bytes(chunk.read_bytes()[:-8])
    got = next(iter(streamed(url, cache).train_dataloader()))
    assert all((want[k] == got[k]).all() for k in want)
