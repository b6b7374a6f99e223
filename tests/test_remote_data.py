"""Prepared data in object storage, against a real S3 protocol server on this machine (moto).

Training streams the shards from ``s3://`` with two loader workers; a run killed outright and
resumed from its checkpoint logs the very losses of an uninterrupted one; the mistakes a user
makes with buckets, endpoints and credentials end in one paragraph naming the URL.
"""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tiny_run import logged_steps, recipe, scalars, sprout

from sprout.data.datamodule import SproutDataModule
from sprout.data.prepare.publish import publish_domain, publish_tokenizer
from sprout.data.store.client import ObjectStore
from tools.local_s3 import local_s3

TESTS = Path(__file__).parent
STEPS = 10


@pytest.fixture(scope="session")
def s3_server():
    with local_s3() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """This test's environment points every AWS client at the local server, and a fresh bucket."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "MAX_CACHE_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"sprout-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


def upload(data_dir: Path, url: str) -> str:
    store = ObjectStore(url)
    publish_tokenizer(store, data_dir / "tokenizer.json", overwrite=False)
    for domain in sorted(p.parent.name for p in data_dir.glob("*/meta.json")):
        assert publish_domain(store, data_dir, domain)
    return url


def test_streams_the_same_batches_as_the_local_folder(tiny_data, s3, tmp_path):
    url = upload(tiny_data, f"{s3}/tiny")
    local = SproutDataModule(str(tiny_data), seq_len=32, batch_size=4, num_workers=0)
    remote = SproutDataModule(
        url, seq_len=32, batch_size=4, num_workers=2, cache_dir=str(tmp_path / "cache"), cache_size="1MB"
    )
    for dm in (local, remote):
        dm.setup("fit")
    assert remote.domains == local.domains and remote.sizes == local.sizes and remote.stats == local.stats
    a, b = iter(local.train_dataloader()), iter(remote.train_dataloader())
    for _ in range(20):
        x, y = next(a), next(b)
        assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)
    for va, vb in zip(local.val_dataloader(), remote.val_dataloader()):
        assert all((x["input_ids"] == y["input_ids"]).all() for x, y in zip(va, vb))


def test_offline_reference_scores_serve_remote_data(tiny_data, s3, tmp_path):
    """Scores made on the local folder fit the same shards in S3 (their index is the same file)."""
    from tiny_run import save_reference

    from sprout.commands.score import score_reference

    url = upload(tiny_data, f"{s3}/tiny")
    ref = save_reference(tiny_data, tmp_path / "ref.ckpt")
    scores = str(tmp_path / "scores")
    score_reference(
        str(ref), str(tiny_data), scores, 32, domains=["text"], splits=["train"], batch_size=256, progress=False
    )
    batches = []
    for data_dir in (str(tiny_data), url):
        dm = SproutDataModule(
            data_dir,
            domains=["text"],
            seq_len=32,
            batch_size=4,
            reference_scores=scores,
            cache_dir=str(tmp_path / "cache"),
        )
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        batches.append([next(loader) for _ in range(5)])
    for a, b in zip(*batches):
        assert (a["ref_loss"] == b["ref_loss"]).all() and (a["input_ids"] == b["input_ids"]).all()


def test_killed_training_resumes_bit_identical_from_s3(tiny_data, s3, tmp_path):
    url = upload(tiny_data, f"{s3}/tiny")
    sections = {
        "data": {
            "data_dir": url,
            "num_workers": 2,
            "cache_dir": str(tmp_path / "cache"),
            "mixture": {"class_path": "doremi", "init_args": {"update_every": 3, "eta": 5.0}},
        },
        "model": {"selector": {"class_path": "tiny_run.GlobalRandomTokens"}, "reference": None},
        "checkpoint": {"every_n_train_steps": 2, "save_top_k": -1},
    }
    from tiny_run import save_reference

    sections["model"]["reference"] = str(save_reference(tiny_data, tmp_path / "ref.ckpt"))
    whole = recipe(tmp_path / "whole.yaml", tiny_data, tmp_path / "whole", STEPS, **sections)
    assert sprout("fit", "--config", str(whole))[0] == 0

    # killed right after last.ckpt of step 4 is complete: no clean-up, and the loop never gets past that save
    kill = {"class_path": "tiny_run.KilledAfterSaving", "init_args": {"step": 4}}
    legs = recipe(tmp_path / "legs.yaml", tiny_data, tmp_path / "legs", STEPS, **sections)
    killed = recipe(
        tmp_path / "killed.yaml", tiny_data, tmp_path / "legs", STEPS, **sections, trainer={"plugins": [kill]}
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sprout", "fit", "--config", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    ckpts = tmp_path / "legs" / "tiny" / "version_0" / "checkpoints"
    assert not (ckpts / f"step{STEPS:06d}.ckpt").exists()  # it really died before the end

    assert sprout("fit", "--config", str(legs), "--ckpt_path", "last")[0] == 0  # last.ckpt: step 4's
    expected = tmp_path / "whole" / "tiny" / "version_0"
    for tag in ("train/loss", "train/grad_norm", "select/fraction"):
        got, want = scalars(tmp_path / "legs" / "tiny" / "version_0", tag), scalars(expected, tag)
        assert logged_steps(tmp_path / "legs" / "tiny" / "version_0", tag) == list(range(STEPS)), tag  # each once
        assert got == want, tag  # exact, the steps after the kill included


@pytest.fixture(scope="session")
def s3_server_checking_keys():
    with local_s3(check_credentials=True) as server:
        yield server


def training_fails(tiny_data: Path, tmp_path: Path, url: str) -> str:
    """``sprout fit`` on ``url`` fails cleanly; returns its one-paragraph error."""
    from test_bad_input import fails

    return fails(
        recipe(
            tmp_path / "r.yaml",
            tiny_data,
            tmp_path / "runs",
            data={"data_dir": url, "cache_dir": str(tmp_path / "cache"), "store_retry_seconds": 0},
        )
    )


def test_bad_buckets_endpoints_and_credentials_are_named(tiny_data, s3, s3_server_checking_keys, tmp_path, monkeypatch):
    url = upload(tiny_data, f"{s3}/tiny")
    bucket = url.split("/")[2]
    message = training_fails(tiny_data, tmp_path, "s3://no-such-bucket-here/tiny")
    assert (
        message.startswith("Bucket 'no-such-bucket-here' does not exist for s3://no-such-bucket-here/tiny")
        and "aws s3 mb" in message
    )

    message = training_fails(tiny_data, tmp_path, f"{s3}/nothing-here")
    assert (
        message.startswith(f"No prepared domains at data.data_dir {s3}/nothing-here")
        and f"--out_dir {s3}/nothing-here" in message
    )

    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    message = training_fails(tiny_data, tmp_path, url)
    assert message.startswith(f"No credentials for {url}") and "AWS_ACCESS_KEY_ID" in message

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    message = training_fails(tiny_data, tmp_path, url)
    assert (
        message.startswith(
            f"The object store at {url} did not answer for 0 s (bucket check, endpoint http://127.0.0.1:9: "
        )
        and "Connection refused" in message
        and "AWS_ENDPOINT_URL" in message
    )

    checking = s3_server_checking_keys
    for name, value in checking.env().items():
        monkeypatch.setenv(name, value)
    checking.client().create_bucket(Bucket=bucket)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    message = training_fails(tiny_data, tmp_path, url)
    assert message.startswith(f"The object store refused access to {url}") and "credentials are wrong" in message
    assert "not-the-secret" not in message and checking.access_key_id not in message  # never a credential


def prepare_args(tiny_data: Path, out: str, stage: Path, *extra: str) -> list[str]:
    """``sprout prepare`` arguments that rebuild ``tiny_data`` (the same sources and options)."""
    raw = tiny_data.parent / "raw"
    config = stage.parent / f"{stage.name}.yaml"
    sources = [
        {"paths": [str(p) for p in sorted((raw / name).glob("*.jsonl"))], "format": "jsonl", "domain": name}
        for name in ("code", "text")
    ]
    config.write_text(json.dumps({"sources": sources}))
    return [
        "prepare",
        "--config",
        str(config),
        "--tokenizer",
        str(tiny_data / "tokenizer.json"),
        "--out_dir",
        out,
        "--stage_dir",
        str(stage),
        "--val_fraction",
        "0.05",
        "--num_workers",
        "1",
        "--progress",
        "false",
        *extra,
    ]


def test_prepare_in_parts_to_s3_resumes_an_interrupted_upload_and_merges(tiny_data, s3, tmp_path, monkeypatch, capsys):
    from sprout.cli import main
    from sprout.data.store.mirror import remote_domains

    url = f"{s3}/tiny"
    store = ObjectStore(url)
    real_upload, uploads = ObjectStore.upload, []

    def failing_upload(self, local, key):
        if len(uploads) == 3:
            raise ConnectionError("network gone")  # the machine loses the store half-way through its part
        uploads.append(key)
        real_upload(self, local, key)

    monkeypatch.setattr(ObjectStore, "upload", failing_upload)
    with pytest.raises(ConnectionError):
        main(prepare_args(tiny_data, url, tmp_path / "stage0", "--num_parts", "3", "--part", "0"))
    assert uploads and store.read(".parts/of-0003/part-0000.json") is None  # the part is not finished
    monkeypatch.setattr(ObjectStore, "upload", real_upload)
    done = set(uploads)
    resumed = []
    monkeypatch.setattr(
        ObjectStore, "upload", lambda self, local, key: (resumed.append(key), real_upload(self, local, key))
    )
    main(prepare_args(tiny_data, url, tmp_path / "stage0", "--num_parts", "3", "--part", "0"))
    assert resumed and not (set(resumed) & done - {"tokenizer.json"})  # resumed: what was there is not sent again
    monkeypatch.setattr(ObjectStore, "upload", real_upload)

    for part in (1, 2):  # other machines: other stage folders
        main(prepare_args(tiny_data, url, tmp_path / f"stage{part}", "--num_parts", "3", "--part", str(part)))
    assert remote_domains(store) == []  # nothing is visible to training before the merge
    main(prepare_args(tiny_data, url, tmp_path / "merge", "--num_parts", "3", "--merge", "true"))
    assert remote_domains(store) == ["code", "text"]
    for domain in ("code", "text"):  # the same domain a single local run made
        assert json.loads(store.read(f"{domain}/meta.json")) == json.loads(
            (tiny_data / domain / "meta.json").read_text()
        )

    dm = SproutDataModule(url, seq_len=32, batch_size=4, cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    local = SproutDataModule(str(tiny_data), seq_len=32, batch_size=4)
    local.setup("fit")
    assert dm.stats == local.stats and sum(dm.sizes) >= sum(local.sizes) - 2 * 3 * len(dm.domains)  # chunk ends differ

    (tmp_path / "lost").mkdir()
    store.delete([".parts/of-0003/part-0001.json"])
    with pytest.raises(SystemExit) as exit_:
        main(prepare_args(tiny_data, url, tmp_path / "lost", "--num_parts", "3", "--merge", "true"))
    assert exit_.value.code == 2
    assert f"Cannot merge {url}: part(s) 1 of --num_parts 3 are not finished" in capsys.readouterr().err
