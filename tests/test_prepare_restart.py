"""Data integrity: a preparation killed half way (SIGKILL, no clean-up) and run again writes the
same shards as one that was never interrupted: same token and document counts, same token
stream, so no document is lost or written twice."""

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from sprout.data.prepare import Source, prepare

STDLIB = Path(sysconfig.get_paths()["stdlib"])
DOMAINS = {
    "email": sorted((STDLIB / "email").glob("*.py"))[:12],
    "http": sorted((STDLIB / "http").glob("*.py")),
    "json": sorted((STDLIB / "json").glob("*.py")),
}
OPTIONS = {"val_fraction": 0.2, "num_workers": 1, "chunk_tokens": 4096, "progress": False, "summary": False}

# The same preparation in a child process that SIGKILLs itself right after the n-th call of a function.
KILL_AT = """
import json, os, signal, sys
import importlib
from sprout.data.prepare import Source, prepare
paths, domains, tokenizer, out, options = json.loads(sys.argv[1])
module, owner, name = "{where}".split(":")
target = importlib.import_module(module)
target = getattr(target, owner) if owner else target
real, calls = getattr(target, name), [0]
def killing(*args, **kwargs):
    result = real(*args, **kwargs)
    calls[0] += 1
    if calls[0] == {calls}:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(target, name, killing)
prepare([Source(p, format="text", domain=d) for p, d in zip(paths, domains)], tokenizer, out, **options)
"""


def sources() -> list[Source]:
    return [Source([str(p) for p in paths], format="text", domain=name) for name, paths in DOMAINS.items()]


def stream(split_dir: Path) -> tuple[int, str]:
    """(tokens, sha256 of the token stream) of one split, read through its litdata index."""
    index = json.loads((split_dir / "index.json").read_text())
    digest, total = hashlib.sha256(), 0
    for chunk in index["chunks"]:
        tokens = np.fromfile(split_dir / chunk["filename"], dtype=np.int32, offset=(chunk["chunk_size"] + 2) * 4)
        assert len(tokens) == chunk["dim"]
        digest.update(tokens.tobytes())
        total += len(tokens)
    return total, digest.hexdigest()


def summary(out: Path) -> dict:
    """What a restart must reproduce: per domain and split, the counts of meta.json and the token stream."""
    found = {}
    for meta_path in sorted(out.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        for split, counts in meta["splits"].items():
            found[meta["domain"], split] = (counts["tokens"], counts["documents"], *stream(meta_path.parent / split))
    return found


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "data"
    prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
    found = summary(out)
    assert sorted({d for d, _ in found}) == sorted(DOMAINS) and all(n > 0 for n, *_ in found.values())
    return found


@pytest.mark.parametrize(
    "where, calls",
    [("sprout.data.prepare.worker:SplitWriter:write_chunk", 5), ("sprout.data.prepare.merge::merge_split", 3)],
)
def test_killed_preparation_restarted_writes_the_same_shards(where, calls, tiny_data, uninterrupted, tmp_path):
    out = tmp_path / "data"
    child = KILL_AT.format(where=where, calls=calls)
    args = [[str(p) for p in paths] for paths in DOMAINS.values()]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            child,
            json.dumps([args, list(DOMAINS), str(tiny_data / "tokenizer.json"), str(out), OPTIONS]),
        ],
        env=env,
        timeout=300,
    )
    assert run.returncode == -9  # killed, so nothing was cleaned up
    assert summary(out) != uninterrupted  # it really stopped half way

    prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
    assert summary(out) == uninterrupted


def first_half() -> list[Source]:
    return [
        Source([str(p) for p in paths[: len(paths) // 2]], format="text", domain=name)
        for name, paths in DOMAINS.items()
    ]


@pytest.fixture(scope="module")
def appended(tiny_data, tmp_path_factory) -> dict:
    """Half of every domain's files prepared, then all of them: the second run appends."""
    out = tmp_path_factory.mktemp("appended") / "data"
    prepare(first_half(), tiny_data / "tokenizer.json", out, **OPTIONS)
    prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
    return summary(out)


@pytest.mark.parametrize(
    "where, calls", [("sprout.data.prepare.merge::merge_split", 1), ("sprout.data.prepare.merge::_move_if_there", 2)]
)
def test_killed_append_restarted_writes_the_same_shards(where, calls, tiny_data, appended, tmp_path):
    """Killed while assembling an append in staging, or half way through moving it into the domain."""
    out = tmp_path / "data"
    prepare(first_half(), tiny_data / "tokenizer.json", out, **OPTIONS)
    child = KILL_AT.format(where=where, calls=calls)
    args = [[str(p) for p in paths] for paths in DOMAINS.values()]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    payload = json.dumps([args, list(DOMAINS), str(tiny_data / "tokenizer.json"), str(out), OPTIONS])
    run = subprocess.run([sys.executable, "-c", child, payload], env=env, timeout=300)
    assert run.returncode == -9
    assert summary(out) != appended

    prepare(sources(), tiny_data / "tokenizer.json", out, **OPTIONS)
    assert summary(out) == appended
    assert not list(out.glob("*/.pending-append"))
