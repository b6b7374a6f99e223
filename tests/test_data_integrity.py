"""Data integrity: preparations that die leave no staging folder behind for long (and never
take a running one's); a shard damaged after preparation is refused with its file name, by its
checksum or, in shards prepared before checksums, by the token ids it holds; ``verify`` checks
every chunk."""

import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from sprout.data import checksums
from sprout.data.blocks import DomainBlocks, SequentialBlocks
from sprout.data.checksums import CHECKSUM
from sprout.data.datamodule import SproutDataModule
from sprout.data.prepare import Source, merge, prepare, worker
from sprout.data.prepare.staging import staging_folder
from sprout.data.verify import verify
from sprout.errors import SproutError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
DOMAINS = {"email": sorted((STDLIB / "email").glob("*.py"))[:8], "json": sorted((STDLIB / "json").glob("*.py"))}
OPTIONS = {"val_fraction": 0.2, "num_workers": 1, "chunk_tokens": 4096, "progress": False, "summary": False}

# The same preparation in a child process (its own session, like a terminal's job) where the
# first chunk written triggers `{action}`.
# SIGINT is set to raise KeyboardInterrupt, as in a terminal's foreground job: a shell's background
# job (`cmd &`) starts with SIGINT ignored, and Python then keeps it ignored.
CHILD = """
import json, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from sprout.data.prepare import Source, prepare, worker
paths, domains, tokenizer, out, options = json.loads(sys.argv[1])
real = worker.SplitWriter.write_chunk
def write_chunk(self, tokens):
    real(self, tokens)
    {action}
worker.SplitWriter.write_chunk = write_chunk
prepare([Source(p, format="text", domain=d) for p, d in zip(paths, domains)], tokenizer, out, **options)
"""


def sources() -> list[Source]:
    return [Source([str(p) for p in paths], format="text", domain=name) for name, paths in DOMAINS.items()]


def staging(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(".staging*"))


def splits(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text())["splits"] for p in sorted(out.glob("*/meta.json"))}


def child(script: str, out: Path, tokenizer: Path, options: dict) -> dict:
    """Popen arguments running ``script`` on DOMAINS in its own session, which it may signal whole."""
    args = json.dumps(
        [[[str(p) for p in paths] for paths in DOMAINS.values()], list(DOMAINS), str(tokenizer), str(out), options]
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    return {
        "args": [sys.executable, "-c", script, args],
        "env": env,
        "start_new_session": True,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
    }


def run_child(action: str, out: Path, tokenizer: Path, options: dict) -> int:
    return subprocess.run(**child(CHILD.format(action=action), out, tokenizer, options), timeout=300).returncode


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "data"
    prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
    assert sorted(splits(out)) == sorted(DOMAINS)
    return splits(out)


@pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")
def test_a_killed_preparation_leaves_staging_that_the_next_one_removes(tiny_data, uninterrupted, tmp_path):
    out = tmp_path / "data"
    assert (
        run_child("os.kill(os.getpid(), signal.SIGKILL)", out, tiny_data / "tokenizer.json", OPTIONS) == -signal.SIGKILL
    )
    left = staging(out)
    assert len(left) == 2 and left[1] == left[0] + ".lock"  # killed outright: nothing could clean up
    assert any((out / left[0]).iterdir())

    prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
    assert staging(out) == []
    assert splits(out) == uninterrupted


# A pool worker kills the main process as its first task starts, then every worker stays
# alive without writing (as workers busy with large files would), until the test kills them.
ORPHANS = """
import json, os, signal, sys, time
from sprout.data.prepare import Source, prepare, worker
paths, domains, tokenizer, out, options = json.loads(sys.argv[1])
main = os.getpid()
def run_task(task, tok, report):
    try:
        os.close(os.open(out + ".killed", os.O_CREAT | os.O_EXCL))
        os.kill(main, signal.SIGKILL)
    except FileExistsError:
        pass
    time.sleep(120)
worker.run_task = run_task
prepare([Source(p, format="text", domain=d) for p, d in zip(paths, domains)], tokenizer, out, **options)
"""


@pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL and fork")
def test_workers_outliving_a_killed_preparation_do_not_keep_its_staging(tiny_data, uninterrupted, tmp_path):
    out = tmp_path / "data"
    main = subprocess.Popen(
        **child(ORPHANS, out, tiny_data / "tokenizer.json", {**OPTIONS, "num_workers": 2})
    )  # no pipes: orphans would hold them
    try:
        assert main.wait(timeout=300) == -signal.SIGKILL
        assert len(staging(out)) == 2
        prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
        assert staging(out) == [] and splits(out) == uninterrupted
    finally:
        os.killpg(main.pid, signal.SIGKILL)  # the orphaned workers (the session is the child's own)


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT to a process group")
def test_ctrl_c_during_a_worker_pool_removes_the_staging_folder(tiny_data, uninterrupted, tmp_path):
    out = tmp_path / "data"
    # a worker sends SIGINT to its whole process group, as Ctrl-C in a terminal does
    code = run_child(
        "os.killpg(os.getpgrp(), signal.SIGINT)", out, tiny_data / "tokenizer.json", {**OPTIONS, "num_workers": 2}
    )
    assert code == -signal.SIGINT  # KeyboardInterrupt went all the way up
    assert staging(out) == [] and splits(out) == {}

    prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
    assert splits(out) == uninterrupted


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize(
    "where", [(worker.SplitWriter, "write_chunk"), (merge, "merge_split")], ids=["write_chunk", "merge_split"]
)
def test_an_interrupted_preparation_removes_its_staging_folder(
    error, where, tiny_data, uninterrupted, tmp_path, monkeypatch
):
    target, name = where
    real, calls = getattr(target, name), [0]

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise error("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)
    out = tmp_path / "data"
    with pytest.raises(error, match="interrupted"):
        prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
    assert staging(out) == []
    monkeypatch.undo()
    prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
    assert splits(out) == uninterrupted


def test_only_stale_sprout_staging_folders_are_removed(tiny_data, tmp_path):
    out, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not preparation's")
    stale = out / ".staging-old12345"  # left by a run without a lock file (an older Sprout)
    (stale / "email" / "train").mkdir(parents=True)
    decoys = [out / ".staging-keep", out / ".staging-ABCDEFGH", out / "staging-abcdefgh", out / ".staging-abcdefgh.txt"]
    for d in decoys:
        d.mkdir()
    (out / ".staging-file1234").write_text("a file, not a folder")
    (out / ".staging-link1234").symlink_to(elsewhere)
    with staging_folder(out) as running:  # a preparation into the same folder, still running
        (running / "chunk.bin").write_bytes(b"in use")
        prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
        assert (running / "chunk.bin").read_bytes() == b"in use" and Path(f"{running}.lock").is_file()
        assert not stale.exists() and not Path(f"{stale}.lock").exists()
        assert all(d.is_dir() for d in decoys)
        assert (out / ".staging-file1234").read_text() == "a file, not a folder"
        assert (out / ".staging-link1234" / "keep.txt").is_file()
    assert not running.exists() and not Path(f"{running}.lock").exists()


# -- shards overwritten after preparation --------------------------------------------------


@pytest.fixture
def small_chunks(tiny_data, tmp_path) -> Path:
    """The two domains again, in chunks of 1000 tokens so that a split has several."""
    out = tmp_path / "data"
    prepare(sources(), tiny_data / "tokenizer.json", out, **{**OPTIONS, "chunk_tokens": 1000})
    return out


@pytest.fixture
def old_chunks(small_chunks) -> Path:
    """``small_chunks`` as an earlier Sprout prepared them: no checksums in the indexes."""
    for index in small_chunks.glob("*/*/index.json"):
        data = json.loads(index.read_text())
        data["chunks"] = [{k: v for k, v in c.items() if k != CHECKSUM} for c in data["chunks"]]
        index.write_text(json.dumps(data))
    return small_chunks


def overwrite(chunk: Path, value: int, start: int = 0) -> None:
    """Fill the chunk from byte ``start`` on with int32 ``value``, keeping its size."""
    size = chunk.stat().st_size
    with open(chunk, "r+b") as f:
        f.seek(start)
        f.write(np.full((size - start) // 4, value, np.int32).tobytes())
    assert chunk.stat().st_size == size


@pytest.mark.parametrize("value", [2**31 - 1, 320, -7])
def test_a_shard_overwritten_with_garbage_names_file_domain_value_and_vocabulary(old_chunks, value):
    small_chunks = old_chunks
    split = small_chunks / "json" / "train"
    chunks = json.loads((split / "index.json").read_text())["chunks"]
    assert len(chunks) >= 3
    block = 33
    per_chunk = [c["dim"] // block for c in chunks]
    overwrite(split / chunks[1]["filename"], value)
    blocks = DomainBlocks([small_chunks / "email" / "train", split], block)
    assert blocks[(0, 1, per_chunk[0] - 1)]["input_ids"].max() < 320  # the chunk before is intact
    assert blocks[(0, 1, per_chunk[0] + per_chunk[1])]["input_ids"].max() < 320  # and the one after
    with pytest.raises(SproutError) as err:
        blocks[(0, 1, per_chunk[0])]
    message = str(err.value)
    assert (
        chunks[1]["filename"] in message
        and "'json'" in message
        and f"token id {value}" in message
        and "320 ids" in message
    )
    assert "sprout prepare" in message and "--overwrite" in message


def test_garbage_in_a_validation_shard_or_through_the_data_module(old_chunks):
    small_chunks = old_chunks
    val = small_chunks / "email" / "val"
    first = json.loads((val / "index.json").read_text())["chunks"][0]
    overwrite(val / first["filename"], 10_000, start=(first["chunk_size"] + 2) * 4 + 40 * 4)  # from the 41st token on
    blocks = SequentialBlocks(val, 33, domain=0, limit=None)
    assert blocks[0]["input_ids"].max() < 320  # tokens 0..32 untouched
    with pytest.raises(SproutError, match=rf"{first['filename']} of domain 'email' holds token id 10000"):
        blocks[1]

    train = small_chunks / "json" / "train"
    for chunk in json.loads((train / "index.json").read_text())["chunks"]:
        overwrite(train / chunk["filename"], 2**31 - 1)  # the header too: litdata's token reader skips it unread
    data = SproutDataModule(str(small_chunks), domains=["json"], seq_len=32, batch_size=2)
    data.setup("fit")  # sizes match the index, so only reading can tell
    with pytest.raises(SproutError, match=r"chunk-\S+\.bin of domain 'json' holds token id 2147483647"):
        next(iter(data.train_dataloader()))


# -- checksums -----------------------------------------------------------------------------


def flip_a_bit(chunk: Path, token: int) -> None:
    """Change one bit of token ``token`` (its lowest): the size stays, and so does a valid token id."""
    data = bytearray(chunk.read_bytes())
    header = (json.loads((chunk.parent / "index.json").read_text())["chunks"][0]["chunk_size"] + 2) * 4
    data[header + 4 * token] ^= 1
    chunk.write_bytes(bytes(data))


def test_a_damaged_or_truncated_shard_is_refused_by_its_checksum_and_verify_names_it(small_chunks, capsys):
    split = small_chunks / "json" / "train"
    chunks = json.loads((split / "index.json").read_text())["chunks"]
    assert len(chunks) >= 3 and all(len(c[CHECKSUM]) == 16 for c in chunks)  # recorded at preparation
    assert verify(str(small_chunks)) == {"email": [], "json": []}
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["email", "json"]
    assert all(line.endswith("match their checksums") for line in lines), lines

    block, (flipped, cut) = 33, (split / c["filename"] for c in chunks[1:3])
    per_chunk = [c["dim"] // block for c in chunks]
    flip_a_bit(flipped, 100)
    cut.write_bytes(cut.read_bytes()[: chunks[2]["chunk_bytes"] // 2])
    blocks = DomainBlocks([small_chunks / "email" / "train", split], block)
    assert blocks[(0, 1, per_chunk[0] - 1)]["input_ids"].max() < 320  # the chunk before is intact
    with pytest.raises(SproutError) as err:
        blocks[(0, 1, per_chunk[0])]
    assert str(err.value).startswith(
        f"Shard {flipped} of domain 'json' is damaged: it is of the right size, but its xxh3_64 checksum is "
    )
    assert "(read twice). Re-run sprout prepare for domain 'json' with --overwrite" in str(err.value)
    assert f"sprout verify {small_chunks} checks every shard" in str(err.value)
    with pytest.raises(
        SproutError, match=f"Shard {cut} of domain 'json' is damaged: it is [0-9,]+ bytes, but its index"
    ):
        blocks[(0, 1, per_chunk[0] + per_chunk[1])]

    with pytest.raises(SproutError, match=r"domain\(s\) 'json' hold damaged or missing chunks"):
        verify(str(small_chunks))
    email, json_line = capsys.readouterr().out.splitlines()
    assert email.endswith("match their checksums") and json_line.startswith("json: 2 of ")
    assert f"{flipped} is of the right size, but its xxh3_64 checksum is" in json_line
    assert (
        f"{cut} is {chunks[2]['chunk_bytes'] // 2:,} bytes, but its index.json says {chunks[2]['chunk_bytes']:,}"
        in json_line
    )


def test_a_chunk_read_wrong_once_is_read_again(small_chunks, monkeypatch):
    """A flaky disk or network file system returns other bytes once: the second read is used."""
    split = small_chunks / "json" / "train"
    real, calls = checksums.digest, []
    monkeypatch.setattr(
        checksums, "digest", lambda path: (calls.append(path), "0" * 16 if len(calls) == 1 else real(path))[1]
    )
    assert DomainBlocks([split], 33)[(0, 0, 0)]["input_ids"].max() < 320
    assert len(calls) == 2


def test_shards_prepared_before_checksums_train_and_verify_says_they_have_none(old_chunks, capsys):
    assert verify(str(old_chunks)) == {"email": [], "json": []}
    for line in capsys.readouterr().out.splitlines():
        assert line.endswith(
            "of the sizes their index says, but no checksums (prepared before Sprout recorded them; re-prepare with --overwrite to add them)"
        )
    data = SproutDataModule(str(old_chunks), seq_len=32, batch_size=2)
    data.setup("fit")
    assert next(iter(data.train_dataloader()))["input_ids"].shape == (2, 32)
