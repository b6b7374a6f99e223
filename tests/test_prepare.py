import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from litdata import StreamingDataset, TokensLoader

from sprout.data.prepare import Source, prepare
from sprout.data.readers import Document, read_documents, split_text
from sprout.data.stats import PairCounter, entropies, pair_codes
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError

WORDS = (
    "the of and to in is was that it for on with as his by at from her which but not had be this or have one an".split()
)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def zst(path: Path, records: list[dict]) -> None:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """One small input per format, written here."""
    root, rng = tmp_path_factory.mktemp("raw"), random.Random(0)
    (root / "books").mkdir()
    for i in range(5):
        (root / "books" / f"book{i}.txt").write_text("\n\n".join(sentence(rng, 12) for _ in range(6 + i)) + "\n")
    (root / "gsm.jsonl").write_text(
        "".join(
            json.dumps({"question": sentence(rng, 10) + "?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}) + "\n"
            for i in range(60)
        )
    )
    for lang in ("python", "java"):
        (root / "starcoder" / lang).mkdir(parents=True)
        pq.write_table(
            pa.table({"content": [f"// {lang} {i}\nint f{i}() {{ return {i}; }}\n" for i in range(30)]}),
            root / "starcoder" / lang / "train-0.parquet",
        )
    (root / "sp").mkdir()
    sets = ["RedPajamaC4", "RedPajamaGithub", "RedPajamaArXiv"]
    zst(
        root / "sp" / "chunk_0.jsonl.zst",
        [{"text": sentence(rng, 20), "meta": {"redpajama_set_name": sets[i % 3]}} for i in range(45)],
    )
    (root / "sp" / "chunk_1.jsonl").write_text(
        "".join(
            json.dumps({"text": sentence(rng, 15), "meta": {"redpajama_set_name": sets[i % 3]}}) + "\n"
            for i in range(30)
        )
    )
    return {
        "root": root,
        "books": root / "books",
        "gsm": root / "gsm.jsonl",
        "starcoder": root / "starcoder",
        "sp": root / "sp",
    }


@pytest.fixture(scope="module")
def tok(tmp_path_factory, corpus) -> Tokenizer:
    rng = random.Random(1)
    texts = [sentence(rng, 30) for _ in range(200)] + ["int f() { return 0; } #### 12 + 3 = 15 ?"] * 20
    return Tokenizer.train_bpe(texts, 320, tmp_path_factory.mktemp("tok") / "tokenizer.json")


def all_sources(corpus) -> list[Source]:
    return [
        Source([str(corpus["books"])], domain="books"),
        Source([str(corpus["gsm"])], domain="math", text_fields=["question", "answer"]),
        Source([str(corpus["starcoder"])]),
        Source([str(corpus["sp"])], exclude=["github"]),
    ]


def split_tokens(split_dir: Path) -> np.ndarray:
    """Every token of one split, read from the chunk files the index lists."""
    index = json.loads((split_dir / "index.json").read_text())
    arrays = []
    for chunk in index["chunks"]:
        header = (1 + chunk["chunk_size"] + 1) * 4
        arrays.append(np.fromfile(split_dir / chunk["filename"], dtype=np.int32, offset=header))
        assert len(arrays[-1]) == chunk["dim"]
    return np.concatenate(arrays)


def documents(tokens: np.ndarray, eos: int) -> list[np.ndarray]:
    ends = np.flatnonzero(tokens == eos)
    assert len(tokens) and ends[-1] == len(tokens) - 1  # every document ends with EOS
    return np.split(tokens, ends[:-1] + 1)


def expected_texts(sources: list[Source], domain: str) -> list[str]:
    from sprout.data.prepare.sources import resolve

    texts = []
    for source in sources:
        for f in resolve(source):
            for d in read_documents(
                f.path,
                f.read_format,
                text_fields=list(f.text_fields or []) or None,
                domain_field="meta.redpajama_set_name" if f.record_domains else None,
            ):
                natural = {"RedPajamaC4": "c4", "RedPajamaArXiv": "arxiv", "RedPajamaGithub": "github"}.get(d.domain)
                if isinstance(d, Document) and (f.domain or natural) == domain:
                    texts.append(d.text)
    return texts


def test_every_document_is_written_once_with_exact_token_counts(tmp_path, corpus, tok, capsys):
    sources = all_sources(corpus)
    metas = prepare(sources, tok, tmp_path / "out", val_fraction=0.2, num_workers=1, progress=False)
    assert set(metas) == {"books", "math", "python", "java", "c4", "arxiv"}  # github dropped
    assert "github" in capsys.readouterr().out  # ... and the summary says so
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == tok.path.read_bytes()
    for name, meta in metas.items():
        domain = tmp_path / "out" / name
        assert json.loads((domain / "meta.json").read_text()) == meta
        assert meta["format"] == "sprout-shards/1" and meta["domain"] == name and meta["tokenizer"] == tok.identity
        texts = expected_texts(sources, name)
        assert sum(meta["splits"][s]["tokens"] for s in ("train", "val")) == sum(len(tok.encode(t)) + 1 for t in texts)
        assert sum(meta["splits"][s]["documents"] for s in ("train", "val")) == len(texts)
        written = {s: split_tokens(domain / s) for s in ("train", "val")}
        docs = {s: documents(written[s], tok.eos_id) for s in written}
        assert sorted(tok.decode(d[:-1]) for s in docs for d in docs[s]) == sorted(texts)
        for s in docs:
            assert (len(docs[s]), len(written[s])) == (meta["splits"][s]["documents"], meta["splits"][s]["tokens"])
        # the same tokens through litdata's own reader
        stream = StreamingDataset(str(domain / "train"), item_loader=TokensLoader(block_size=1))
        assert len(stream) == len(written["train"])
        assert [int(stream[i][0]) for i in (0, len(stream) // 2, len(stream) - 1)] == [
            int(written["train"][i]) for i in (0, len(stream) // 2, len(stream) - 1)
        ]
        # statistics are those of the train split
        unigram = np.load(domain / meta["stats"]["unigram_counts_file"])
        assert np.array_equal(unigram, np.bincount(written["train"], minlength=tok.vocab_size))
        pairs = PairCounter(tok.vocab_size)
        for d in docs["train"]:
            pairs.add(pair_codes(d, tok.vocab_size))
        h = entropies(unigram, pairs.to_sparse())
        assert meta["stats"]["unigram_entropy"] == pytest.approx(h["shannon"])
        assert meta["stats"]["joint_entropy"] == pytest.approx(h["joint"])
        assert meta["stats"]["conditional_entropy"] == pytest.approx(h["conditional"])
        assert meta["skipped"] == {"count": 0, "examples": []}
    assert metas["python"]["sources"] == [str((corpus["starcoder"] / "python" / "train-0.parquet").resolve())]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".staging")]


def test_split_is_deterministic_across_workers_and_always_has_validation(tmp_path, corpus, tok):
    sources = all_sources(corpus)[:2]
    one = prepare(sources, tok, tmp_path / "one", val_fraction=0.2, num_workers=1, progress=False, summary=False)
    two = prepare(
        sources, tok, tmp_path / "two", val_fraction=0.2, num_workers=2, progress=False, summary=False
    )  # a worker pool
    for name in one:
        assert one[name]["splits"] == two[name]["splits"] and one[name]["stats"] == two[name]["stats"]
        val = [
            sorted(tok.decode(d) for d in documents(split_tokens(root / name / "val"), tok.eos_id))
            for root in (tmp_path / "one", tmp_path / "two")
        ]
        assert val[0] == val[1] and len(val[0]) > 0
    other = prepare(
        sources, tok, tmp_path / "seed", val_fraction=0.2, seed=7, num_workers=1, progress=False, summary=False
    )
    assert other["math"]["splits"] != one["math"]["splits"]
    # a fraction too small to pick any document still gives one validation document,
    # and the train statistics no longer count it
    tiny = prepare(sources, tok, tmp_path / "tiny", val_fraction=1e-12, num_workers=2, progress=False, summary=False)
    for name, meta in tiny.items():
        assert meta["splits"]["val"]["documents"] == 1
        train = split_tokens(tmp_path / "tiny" / name / "train")
        assert meta["splits"]["train"]["tokens"] == len(train)
        assert np.array_equal(
            np.load(tmp_path / "tiny" / name / "unigram.npy"), np.bincount(train, minlength=tok.vocab_size)
        )
    none = prepare(sources, tok, tmp_path / "none", val_fraction=0.0, num_workers=1, progress=False, summary=False)
    assert none["math"]["splits"]["val"] == {"tokens": 0, "documents": 0}


def bad_slimpajama(root: Path) -> Path:
    folder = root / "bad_sp"
    folder.mkdir()
    good = [{"text": f"good record {i}", "meta": {"redpajama_set_name": "RedPajamaC4"}} for i in range(20)]
    zst(folder / "a_good.jsonl.zst", good)
    rng = random.Random(0)  # random text: the first half of the file still holds whole zstd blocks
    big = [{"text": rng.randbytes(100).hex(), "meta": {"redpajama_set_name": "RedPajamaC4"}} for i in range(2000)]
    zst(folder / "b_full.jsonl.zst", big)
    data = (folder / "b_full.jsonl.zst").read_bytes()
    (folder / "b_full.jsonl.zst").unlink()
    (folder / "b_truncated.jsonl.zst").write_bytes(data[: len(data) // 2])
    lines = [json.dumps(r) for r in good[:3]] + ["{oops"] + ['{"meta": {"redpajama_set_name": "RedPajamaC4"}}']
    (folder / "c_mixed.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "d_empty.jsonl").write_text("")
    return folder


def test_bad_records_stop_the_run_or_are_skipped_and_reported(tmp_path, tok, capsys):
    folder = bad_slimpajama(tmp_path)
    with pytest.raises(SproutError, match=r"b_truncated.jsonl.zst, line \d+: truncated zstd") as err:
        prepare([Source([str(folder)])], tok, tmp_path / "strict", num_workers=1, progress=False)
    assert "--skip_bad_records" in str(err.value)
    assert not list((tmp_path / "strict").glob("*/meta.json")) and not list((tmp_path / "strict").glob(".staging*"))

    metas = prepare(
        [Source([str(folder)])], tok, tmp_path / "lenient", num_workers=1, skip_bad_records=True, progress=False
    )
    out = capsys.readouterr().out
    meta = metas["c4"]
    reasons = {(Path(e["file"]).name, e["line"]): e["reason"] for e in meta["skipped"]["examples"]}
    assert meta["skipped"]["count"] == 3 == len(reasons)
    assert (
        "truncated"
        in reasons[("b_truncated.jsonl.zst", next(line for f, line in reasons if f == "b_truncated.jsonl.zst"))]
    )
    assert "not valid JSON" in reasons[("c_mixed.jsonl", 4)] and "'text'" in reasons[("c_mixed.jsonl", 5)]
    kept = [
        d
        for f in sorted(folder.iterdir())
        for d in read_documents(f, "jsonl", domain_field="meta.redpajama_set_name")
        if isinstance(d, Document)
    ]
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == len(kept)
    assert "d_empty.jsonl: empty file" in out  # an empty file feeds no domain, so only the summary can list it
    assert "c_mixed.jsonl, line 4" in out

    gsm = tmp_path / "gsm_bad.jsonl"
    gsm.write_text('{"question": "a?", "answer": "b"}\n{"question": "no answer"}\n')
    with pytest.raises(SproutError, match=r"gsm_bad.jsonl, line 2: no string field 'answer'"):
        prepare(
            [Source([str(gsm)], domain="math", text_fields=["question", "answer"])],
            tok,
            tmp_path / "g",
            num_workers=1,
            progress=False,
        )
    metas = prepare(
        [Source([str(gsm)], domain="math", text_fields=["question", "answer"])],
        tok,
        tmp_path / "g",
        skip_bad_records=True,
        num_workers=1,
        progress=False,
    )
    assert metas["math"]["skipped"]["count"] == 1 and metas["math"]["skipped"]["examples"][0]["line"] == 2


def test_rerun_reuses_finished_domains_and_overwrite_rebuilds(tmp_path, corpus, tok):
    out = tmp_path / "out"
    sources = all_sources(corpus)
    first = prepare(sources, tok, out, num_workers=1, progress=False, summary=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = prepare(sources, tok, out, num_workers=1, progress=False, summary=False)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps

    # a domain whose meta.json is missing was interrupted: it is rebuilt, the others are not
    (out / "math" / "meta.json").unlink()
    (out / "math" / "train" / "index.json").unlink()
    assert prepare(sources, tok, out, num_workers=1, progress=False, summary=False) == first
    assert (out / "math" / "train" / "index.json").is_file()
    assert (out / "books" / "meta.json").stat().st_mtime_ns == stamps[out / "books" / "meta.json"]

    # more files for a prepared domain are appended; a file left out is refused rather than silently dropped
    extra = tmp_path / "more.txt"
    extra.write_text("One more book.")
    books = [str(corpus["books"]), str(extra)]
    grown = prepare([Source(books, domain="books")], tok, out, num_workers=1, progress=False, summary=False)
    count = lambda meta: sum(meta["splits"][s]["documents"] for s in ("train", "val"))  # noqa: E731
    assert count(grown["books"]) == count(first["books"]) + 1 and str(extra) in grown["books"]["files"]
    with pytest.raises(
        SproutError, match=r"'books' was prepared from 1 file\(s\) not given now: .*more.txt.*--overwrite"
    ):
        prepare([Source([str(corpus["books"])], domain="books")], tok, out, num_workers=1, progress=False)

    other = Tokenizer.train_bpe(["something else entirely"] * 50, 280, tmp_path / "other.json")
    with pytest.raises(
        SproutError, match=f"{tok.sha256[:12]}.*{other.sha256[:12]}|{other.sha256[:12]}.*{tok.sha256[:12]}"
    ):
        prepare(sources, other, out, num_workers=1, progress=False)
    rebuilt = prepare(sources, other, out, num_workers=1, overwrite=True, progress=False, summary=False)
    assert rebuilt["books"]["tokenizer"] == other.identity
    assert (out / "tokenizer.json").read_bytes() == other.path.read_bytes()


def test_sentencepiece_model_prepares_with_its_own_eos(tmp_path, corpus):
    spm = pytest.importorskip("sentencepiece")
    texts = [p.read_text() for p in sorted(corpus["books"].iterdir())]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 4),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=60,
        model_type="bpe",
        minloglevel=2,
    )
    tok = Tokenizer.load(tmp_path / "sp.model")
    metas = prepare(
        [Source([str(corpus["books"])], domain="books")],
        tok,
        tmp_path / "out",
        num_workers=2,
        progress=False,
        summary=False,
    )
    meta = metas["books"]
    assert meta["tokenizer"]["eos_id"] == 2 and (tmp_path / "out" / "tokenizer.model").is_file()
    written = np.concatenate([split_tokens(tmp_path / "out" / "books" / s) for s in ("train", "val")])
    assert len(written) == sum(len(tok.encode(t)) + 1 for t in texts)
    assert (written == 2).sum() == len(texts) == 5


def test_bad_sources_are_named(tmp_path, corpus, tok):
    def run(*sources, **kw):
        return prepare(list(sources), tok, tmp_path / "out", num_workers=1, progress=False, summary=False, **kw)

    with pytest.raises(SproutError, match="nowhere.txt does not exist"):
        run(Source([str(tmp_path / "nowhere.txt")], domain="x"))
    with pytest.raises(SproutError, match="needs a domain"):
        run(Source([str(corpus["books"])], format="text"))
    with pytest.raises(SproutError, match="listed by two sources"):
        run(Source([str(corpus["books"])], domain="a"), Source([str(corpus["books"] / "book0.txt")], domain="b"))
    with pytest.raises(SproutError, match="include/exclude"):
        run(Source([str(corpus["books"])], domain="a", exclude=["github"]))
    with pytest.raises(SproutError, match="'my books'"):
        run(Source([str(corpus["books"])], domain="my books"))
    with pytest.raises(SproutError, match="no files left"):
        run(Source([str(corpus["starcoder"])], include=["cobol"]))
    with pytest.raises(SproutError, match="val_fraction"):
        run(Source([str(corpus["books"])], domain="a"), val_fraction=1.0)
    with pytest.raises(SproutError, match="matched no"):
        run(Source([str(tmp_path / "*.nothing")], domain="a"))


def test_starcoder_languages_can_merge_into_one_domain(tmp_path, corpus, tok):
    metas = prepare(
        [Source([str(corpus["starcoder"])], format="starcoder", include=["python", "java"], domain="code")],
        tok,
        tmp_path / "out",
        num_workers=1,
        progress=False,
        summary=False,
    )
    assert list(metas) == ["code"] and len(metas["code"]["sources"]) == 2
    assert sum(s["documents"] for s in metas["code"]["splits"].values()) == 60


def test_cli_prepares_and_reports_errors(tmp_path, corpus, tok, capsys):
    from sprout.cli import main

    main(
        [
            "prepare",
            "--tokenizer",
            str(tok.path),
            "--out_dir",
            str(tmp_path / "out"),
            "--jsonl",
            str(corpus["gsm"]),
            "--domain",
            "math",
            "--text_fields",
            "[question, answer]",
            "--num_workers",
            "1",
            "--progress",
            "false",
        ]
    )
    out = capsys.readouterr().out
    assert "math" in out and "prepared" in out and "tokens/s" in out
    assert json.loads((tmp_path / "out" / "math" / "meta.json").read_text())["splits"]["train"]["documents"] > 0
    config = tmp_path / "prepare.yaml"
    config.write_text(f"""tokenizer: {tok.path}
out_dir: {tmp_path / "out"}
num_workers: 1
progress: false
sources:
  - paths: {corpus["books"]}
    domain: books
  - paths: [{corpus["sp"]}]
    format: slimpajama
    include: [c4]
""")
    main(["prepare", "--config", str(config)])
    assert sorted(p.parent.name for p in (tmp_path / "out").glob("*/meta.json")) == ["books", "c4", "math"]
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "prepare",
                "--tokenizer",
                str(tok.path),
                "--out_dir",
                str(tmp_path / "out"),
                "--text",
                str(corpus["books"]),
            ]
        )
    assert exit_.value.code == 2 and "--domain" in capsys.readouterr().err


def test_entropies_match_hand_computed_values():
    unigram = np.array([2, 1, 1, 0])
    pairs = {(0, 1): 2, (1, 0): 1, (0, 2): 1}
    h = entropies(unigram, pairs)
    assert h["shannon"] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert h["joint"] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    # H(X_t+1 | X_t) = -sum P(a,b) log P(b|a): P(1|0) = 2/3, P(2|0) = 1/3, P(0|1) = 1
    assert h["conditional"] == pytest.approx(-(0.5 * math.log(2 / 3) + 0.25 * math.log(1 / 3)))
    import scipy.sparse

    dense = np.zeros((4, 4))
    for (a, b), n in pairs.items():
        dense[a, b] = n
    assert entropies(unigram, scipy.sparse.csr_matrix(dense)) == pytest.approx(h)
    assert entropies(np.zeros(3), {}) == {"shannon": 0.0, "joint": 0.0, "conditional": 0.0}


def test_pair_counter_folds_and_takes_back_exactly():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 50, size=rng.integers(2, 40)) for _ in range(200)]
    counter = PairCounter(50, fold_every=64)  # folds many times
    for s in seqs:
        counter.add(pair_codes(s, 50))
    codes, counts = np.unique(np.concatenate([pair_codes(s, 50) for s in seqs]), return_counts=True)
    got = counter.result()
    assert np.array_equal(got[0], codes) and np.array_equal(got[1], counts)
    back_codes, back_counts = np.unique(pair_codes(seqs[0], 50), return_counts=True)
    counter.merge(back_codes, -back_counts)
    rest_codes, rest_counts = np.unique(np.concatenate([pair_codes(s, 50) for s in seqs[1:]]), return_counts=True)
    assert np.array_equal(counter.result()[0], rest_codes) and np.array_equal(counter.result()[1], rest_counts)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared sample corpus is not at {SHARED}")
def test_shared_corpus_four_domains(tmp_path):
    from sprout.data.corpus import stdlib_files

    rng = random.Random(0)
    books = sorted((SHARED / "books").glob("*.txt"))
    sample = [p.read_text(encoding="utf-8-sig")[:60_000] for p in books[:3]] + [
        (SHARED / "shakespeare" / "tinyshakespeare.txt").read_text()[:60_000]
    ]
    tok = Tokenizer.train_bpe(sample, 512, tmp_path / "tokenizer.json")
    code, size = [], 0
    for path in stdlib_files():
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            continue  # empty __init__.py files: an empty file is bad input
        code.append(str(path))
        size += path.stat().st_size
        if size > 1_000_000:
            break
    rng.shuffle(code)
    sources = [
        Source([str(p) for p in books[:4]], domain="books", max_doc_chars=50_000),  # 4 of 10 books keeps the test short
        Source([str(SHARED / "shakespeare")], format="text", domain="shakespeare", max_doc_chars=20_000),
        Source([str(SHARED / "math" / "gsm8k_train.jsonl")], domain="math", text_fields=["question", "answer"]),
        Source(code, format="text", domain="code"),
    ]
    metas = prepare(sources, tok, tmp_path / "out", val_fraction=0.05, num_workers=2, progress=False)
    assert set(metas) == {"books", "shakespeare", "math", "code"}
    for meta in metas.values():
        assert meta["splits"]["val"]["documents"] >= 1 and meta["splits"]["train"]["tokens"] > 100_000
        assert 0 < meta["stats"]["conditional_entropy"] < meta["stats"]["unigram_entropy"] < math.log(512)
    assert sum(s["documents"] for s in metas["math"]["splits"].values()) == len(
        (SHARED / "math" / "gsm8k_train.jsonl").read_text().splitlines()
    )
    plays = split_text((SHARED / "shakespeare" / "tinyshakespeare.txt").read_text(encoding="utf-8-sig"), 20_000)
    assert sum(s["documents"] for s in metas["shakespeare"]["splits"].values()) == len(plays)
    assert sum(s["tokens"] for s in metas["shakespeare"]["splits"].values()) == sum(
        len(e) + 1 for e in tok.encode_batch(plays)
    )
    assert metas["code"]["sources"] == sorted(os.path.realpath(p) for p in code)


@pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL and fork")
def test_a_killed_worker_fails_the_run_instead_of_hanging(tmp_path, corpus, tok, monkeypatch):
    import signal

    from sprout.data.prepare import worker

    real = worker.run_task

    def killed_on_second_task(task, tokenizer, report):
        if task.task_id == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
        return real(task, tokenizer, report)

    monkeypatch.setattr(worker, "run_task", killed_on_second_task)  # forked workers inherit it
    with pytest.raises(SproutError, match="died"):
        prepare([Source([str(corpus["books"])], domain="books")], tok, tmp_path / "out", num_workers=2, progress=False)
    assert not (tmp_path / "out" / "books" / "meta.json").exists() and not list((tmp_path / "out").glob(".staging*"))
