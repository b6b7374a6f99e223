"""A re-run of the preparation with more input files appends their documents, and refuses what it
cannot do honestly: a file that changed or went missing, a domain prepared without per-file records."""

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from sprout.data.prepare import Source, prepare
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError

WORDS = (
    "the of and to in is was that it for on with as his by at from her which but not had be this or have one an".split()
)
OPTIONS = {"val_fraction": 0.3, "num_workers": 1, "chunk_tokens": 512, "progress": False, "summary": False}


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_inputs(root: Path, part: int) -> None:
    """Part 0 or 1 of one input per source format: SlimPajama .jsonl.zst, Starcoder parquet, text, JSON lines."""
    rng = random.Random(part)
    sets = ["RedPajamaC4", "RedPajamaBook"]
    records = [{"text": sentence(rng, 15), "meta": {"redpajama_set_name": sets[i % 2]}} for i in range(30)]
    (root / "sp").mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    (root / "sp" / f"chunk_{part}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    (root / "starcoder" / "python").mkdir(parents=True, exist_ok=True)
    code = [f"def f{part}_{i}():\n    return {i} + {part}\n" for i in range(25)]
    pq.write_table(pa.table({"content": code}), root / "starcoder" / "python" / f"train-{part}.parquet")
    (root / "books").mkdir(parents=True, exist_ok=True)
    for i in range(6):
        (root / "books" / f"book{part}{i}.txt").write_text("\n\n".join(sentence(rng, 12) for _ in range(4)) + "\n")
    qa = [{"question": sentence(rng, 8) + "?", "answer": f"{i} + {part} = {i + part}"} for i in range(20)]
    (root / f"gsm{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))


def sources(root: Path) -> list[Source]:
    return [
        Source([str(root / "sp")], format="slimpajama"),
        Source([str(root / "starcoder")], format="starcoder"),
        Source([str(root / "books")], format="text", domain="books"),
        Source(
            sorted(str(p) for p in root.glob("gsm*.jsonl")),
            format="jsonl",
            domain="math",
            text_fields=["question", "answer"],
        ),
    ]


def documents(domain_dir: Path, eos: int) -> Counter:
    """Every document of a domain (both splits) as a token tuple, counted."""
    found = Counter()
    for split in ("train", "val"):
        index = domain_dir / split / "index.json"
        if not index.is_file():
            continue
        chunks = json.loads(index.read_text())["chunks"]
        tokens = np.concatenate(
            [
                np.fromfile(domain_dir / split / c["filename"], dtype=np.int32, offset=(c["chunk_size"] + 2) * 4)
                for c in chunks
            ]
        )
        assert tokens[-1] == eos
        found.update(tuple(d.tolist()) for d in np.split(tokens, np.flatnonzero(tokens == eos)[:-1] + 1))
    return found


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    rng = random.Random(7)
    texts = [sentence(rng, 30) for _ in range(200)] + ["def f(): return 1 + 2 = 3 ?"] * 20
    return Tokenizer.train_bpe(texts, 300, tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture
def grown(tmp_path, tok):
    """Inputs prepared once, then a second file added to every source format and prepared again."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_inputs(raw, 0)
    first = prepare(sources(raw), tok, out, **OPTIONS)
    write_inputs(raw, 1)
    return raw, out, first


def test_added_files_of_every_format_are_appended_once(grown, tok, tmp_path, capsys):
    raw, out, first = grown
    assert sorted(first) == ["book", "books", "c4", "math", "python"]
    assert all(
        m["splits"]["val"]["documents"] for m in first.values()
    )  # so the split of each document is its hash's alone
    second = prepare(sources(raw), tok, out, **{**OPTIONS, "summary": True})
    summary = capsys.readouterr().out
    assert all(f" {name} " in summary or summary.count(name) for name in second)
    assert summary.count("appended") == 5
    whole = prepare(sources(raw), tok, tmp_path / "whole", **OPTIONS)  # everything at once, for comparison
    for name, meta in second.items():
        assert meta["splits"] == whole[name]["splits"], name
        assert meta["stats"] == pytest.approx(whole[name]["stats"]), name  # entropies merged exactly
        assert documents(out / name, tok.eos_id) == documents(tmp_path / "whole" / name, tok.eos_id), (
            name
        )  # each document once
        assert set(meta["files"]) == set(whole[name]["files"]) and len(meta["files"]) == 2 * len(first[name]["files"])
        assert sum(f["documents"] for f in meta["files"].values()) == sum(
            s["documents"] for s in meta["splits"].values()
        )
    # a third run finds nothing new and changes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    prepare(sources(raw), tok, out, **{**OPTIONS, "summary": True})
    assert "nothing new to prepare" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_a_touched_but_unchanged_file_is_the_same_file(grown, tok):
    raw, out, _ = grown
    prepare(sources(raw), tok, out, **OPTIONS)
    book = raw / "books" / "book00.txt"
    book.write_bytes(book.read_bytes())  # new modification time, same bytes
    again = prepare(sources(raw), tok, out, **OPTIONS)
    assert again["books"]["splits"] == json.loads((out / "books" / "meta.json").read_text())["splits"]


@pytest.mark.parametrize("damage", ["changed", "removed"])
def test_a_changed_or_removed_file_is_refused_naming_it_and_overwrite(damage, grown, tok):
    raw, out, first = grown
    target = raw / "starcoder" / "python" / "train-0.parquet"
    if damage == "changed":
        pq.write_table(pa.table({"content": ["def other():\n    return 0\n"] * 25}), target)
    else:
        target.unlink()
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SproutError) as err:
        prepare(sources(raw), tok, out, **OPTIONS)
    message = str(err.value)
    assert "--overwrite" in message and str(target) in message, message
    assert (
        "changed since domain 'python'"
        if damage == "changed"
        else "domain 'python' was prepared from 1 file(s) not given now"
    ) in message
    assert snapshot == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}  # nothing written
    assert prepare(sources(raw), tok, out, **{**OPTIONS, "overwrite": True})["python"]["files"]


def test_appending_is_refused_where_it_cannot_be_exact(grown, tok):
    raw, out, _ = grown
    meta_path = out / "books" / "meta.json"
    meta = json.loads(meta_path.read_text())
    old_style = {k: v for k, v in meta.items() if k != "files"}  # as an earlier Sprout wrote it
    old_style["stats"] = {k: v for k, v in meta["stats"].items() if k != "pair_counts_file"}
    meta_path.write_text(json.dumps(old_style))
    with pytest.raises(SproutError) as err:
        prepare(sources(raw), tok, out, **OPTIONS)
    message = str(err.value)
    assert message.startswith(
        f"New files for domain 'books' in {out} cannot be appended: it was prepared by an earlier Sprout"
    )
    assert str(raw / "books" / "book10.txt") in message and "--overwrite" in message
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SproutError, match=r"prepared with val_fraction=0.3, seed=0, and this run has val_fraction=0.2"):
        prepare(sources(raw), tok, out, **{**OPTIONS, "val_fraction": 0.2})
    assert not list(out.glob(".staging*"))
