"""Faults of the object store under a run, against a real S3 protocol server (moto): chunks
damaged in the store or in the local cache, and (``sprout.data.store.retry``) a store that stops
answering for a while or for good."""

import builtins
import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
import test_remote_data
from test_bad_input import fails
from test_remote_data import upload
from tiny_run import recipe, scalars, sprout

from sprout.data import cache
from sprout.data.checksums import CHECKSUM
from sprout.data.datamodule import SproutDataModule
from sprout.data.store import client, retry
from sprout.data.store.client import ObjectStore
from sprout.data.verify import verify
from sprout.errors import SproutError
from tools.local_s3 import local_s3

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
    assert f"(downloaded twice). Re-run sprout prepare --out_dir {url} with --overwrite for domain 'code'" in str(
        err.value
    )
    with pytest.raises(SproutError, match=r"domain\(s\) 'code' hold damaged or missing chunks"):
        verify(url)
    assert "code: 1 of " in capsys.readouterr().out


def test_a_chunk_cut_off_in_the_store_is_named_before_training_and_by_verify(tiny_data, s3, tmp_path, capsys):
    url = upload(tiny_data, f"{s3}/tiny")
    store = ObjectStore(url)
    first = json.loads((tiny_data / "code" / "val" / "index.json").read_text())["chunks"][0]
    key = f"code/val/{first['filename']}"
    store.write(key, store.read(key)[:100])
    with pytest.raises(SproutError, match=f"Shard {store.url_of(key)} is 100 bytes, but its index.json says"):
        streamed(url, tmp_path / "cache")
    with pytest.raises(SproutError, match=r"domain\(s\) 'code' hold damaged or missing chunks"):
        verify(url)
    assert (
        f"{store.url_of(key)} is 100 bytes, but its index.json says {first['chunk_bytes']:,}" in capsys.readouterr().out
    )


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


# -- a store that stops answering ----------------------------------------------------------


@pytest.fixture
def own_s3(monkeypatch):
    """A store of this test's own, to stop or kill, with the environment pointing at it and a bucket."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "MAX_CACHE_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with local_s3() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        server.client().create_bucket(Bucket="faults")
        yield server


def run_with_fault(tiny_data, tmp_path, monkeypatch, server, fault: signal.Signals, limit: float) -> Path:
    """A recipe streaming from ``server``, whose first run sends ``fault`` to the server once the
    data are set up (before any chunk is read), as ``sprout fit --config <recipe>`` would be run."""
    url = upload(tiny_data, "s3://faults/tiny")
    data = {"data_dir": url, "cache_dir": str(tmp_path / "cache"), "store_retry_seconds": limit}
    config = recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", 8, data=data)
    real_setup = SproutDataModule.setup

    def setup_then_fault(self, stage):
        real_setup(self, stage)
        monkeypatch.setattr(SproutDataModule, "setup", real_setup)
        os.kill(server.pid, fault)

    monkeypatch.setattr(SproutDataModule, "setup", setup_then_fault)
    monkeypatch.setattr(client, "READ_TIMEOUT_SECONDS", 1)  # a stopped store fails a read after 1 s, not 60
    monkeypatch.setattr(sys, "argv", ["sprout", "fit", "--config", str(config)])
    return config


@pytest.mark.parametrize("fault", [signal.SIGSTOP, signal.SIGKILL])
def test_a_store_gone_past_the_limit_ends_the_run_in_one_paragraph_with_the_resume_command(
    tiny_data, tmp_path, monkeypatch, own_s3, fault
):
    config = run_with_fault(tiny_data, tmp_path, monkeypatch, own_s3, fault, limit=2)
    message = fails(config)  # one paragraph, no traceback, exit status 2
    assert message.startswith("The object store at s3://faults/tiny/") and " did not answer for " in message
    assert "data.store_retry_seconds=2). What was written so far is intact." in message
    assert message.endswith(f"resume from the last checkpoint with: sprout fit --config {config} --ckpt_path last.")
    assert "(reading: " in message  # and the failure: a read timed out, or a refused connection


def test_a_store_stopped_shorter_than_the_limit_loses_nothing(tiny_data, tmp_path, monkeypatch, own_s3):
    config = run_with_fault(tiny_data, tmp_path, monkeypatch, own_s3, signal.SIGSTOP, limit=600)
    waits = []

    def print_then_continue(*args, **kwargs):  # the store comes back once the run says it waits
        builtins.print(*args, **kwargs)
        if str(args[0]).startswith("sprout: waiting for the object store at s3://faults/tiny/"):
            waits.append(args[0])
            os.kill(own_s3.pid, signal.SIGCONT)

    monkeypatch.setattr(retry, "print", print_then_continue, raising=False)
    code, err = sprout("fit", "--config", str(config))
    assert code == 0 and waits, err[-3000:]
    assert "sprout: the object store answers again: s3://faults/tiny/" in err and "Traceback" not in err
    whole = recipe(tmp_path / "whole.yaml", tiny_data, tmp_path / "whole", 8)  # the same data, read from disk
    assert sprout("fit", "--config", str(whole))[0] == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    assert scalars(run) == scalars(tmp_path / "whole" / "tiny" / "version_0") and sorted(scalars(run)) == list(range(8))
    assert sum(scalars(run, "data/store_wait_seconds").values()) > 0


def test_throttling_and_5xx_are_waited_for_but_a_missing_bucket_or_refused_key_fails_at_once(monkeypatch):
    from botocore.exceptions import ClientError

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert all(retry.transient(client_error(c, s)) for c, s in [("SlowDown", 503), ("InternalError", 500), ("", 502)])
    assert not any(retry.transient(client_error(c, s)) for c, s in [("NoSuchBucket", 404), ("AccessDenied", 403)])
    monkeypatch.setattr(retry.time, "sleep", lambda seconds: None)

    def store(*answers):
        """A call that gives these answers in turn, raising the errors among them."""
        answers = iter(answers)

        def call():
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call

    throttled = store(client_error("SlowDown", 503), client_error("SlowDown", 503), b"data")
    assert retry.patiently("s3://b/k", "reading", 60, throttled) == b"data"
    with pytest.raises(ClientError, match="AccessDenied"):  # not retried: the next answer would succeed
        retry.patiently("s3://b/k", "reading", 60, store(client_error("AccessDenied", 403), b"data"))


def test_a_download_that_ends_the_run_cancels_the_queued_ones(monkeypatch, tmp_path):
    """Else each download queued ahead would wait out the store (data.store_retry_seconds) in turn
    before the process could end."""
    started, release = [], threading.Event()

    def download(url, chunks, chunk, retry_seconds):
        started.append(chunk)
        if chunk == 0:
            raise SproutError("The object store at s3://b/p did not answer for 2 s")
        release.wait()
        return 1

    class Split:  # ten chunks, none on disk yet
        names, bytes = [f"c{i}" for i in range(10)], [1] * 10

        def path(self, chunk):
            return tmp_path / self.names[chunk]

    monkeypatch.setattr(cache, "download_chunk", download)
    chunks = cache.ChunkCache([("s3://b/p", Split())], budget=100, lookahead=1, retry_seconds=2, threads=1)
    with pytest.raises(SproutError, match="did not answer"):
        chunks.step(0, {(0, 0)}, [(0, c) for c in range(10)])
    release.set()
    chunks._pool.shutdown(wait=True)  # what the process waits for at its end (no cancelling here)
    assert started[0] == 0 and len(started) <= 2  # at most the one the thread took before the others were cancelled
