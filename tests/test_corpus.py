import ast
import json

import pytest

from sprout.data.corpus import (
    MANIFEST,
    build_default_corpus,
    corpus_texts,
    docstrings,
    stdlib_files,
    stdlib_root,
    train_default_tokenizer,
)
from sprout.data.prepare import Source, prepare

SMALL = 300_000  # bytes per domain: enough to be real, quick to build


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, build_default_corpus(out, max_bytes=SMALL, shards=3)


def records(paths):
    return [json.loads(line) for p in paths for line in p.read_text(encoding="utf-8").splitlines()]


def test_code_domain_is_stdlib_source_without_tests(small_corpus):
    _, corpus = small_corpus
    assert set(corpus) == {"code", "text"} and len(corpus["code"]) == 3
    code = records(corpus["code"])
    assert len(code) > 5
    assert sum(len(r["text"].encode()) for r in code) <= SMALL
    for r in code:
        parts = r["source"].split("/")
        assert r["source"].endswith(".py") and not {"test", "tests", "site-packages", "pydoc_data"} & set(parts)
        assert r["text"] == (stdlib_root() / r["source"]).read_text(encoding="utf-8")
        ast.parse(r["text"])


def test_text_domain_is_prose_from_topics_and_docstrings(small_corpus):
    from pydoc_data.topics import topics

    _, corpus = small_corpus
    text = records(corpus["text"])
    sources = [r["source"] for r in text]
    assert sources[0].startswith("pydoc_data.topics:")
    assert text[0]["text"] == topics[sources[0].split(":", 1)[1]]
    assert sum(len(r["text"].encode()) for r in text) <= SMALL


def test_docstrings_are_taken_without_importing():
    source = '''"""A module that explains itself in more than a few words."""
import this_module_does_not_exist

class Thing:
    """A thing with a docstring long enough to count as prose."""

    def short(self):
        """Too short."""

    async def run(self):
        """Run the thing until it is done, then stop."""
'''
    assert docstrings(source) == [
        "A module that explains itself in more than a few words.",
        "A thing with a docstring long enough to count as prose.",
        "Run the thing until it is done, then stop.",
    ]
    assert docstrings("def broken(:\n") == []


def test_build_is_deterministic_and_reused(small_corpus, tmp_path):
    out, corpus = small_corpus
    again = build_default_corpus(tmp_path / "again", max_bytes=SMALL, shards=3)
    for name in corpus:
        assert [p.read_bytes() for p in again[name]] == [p.read_bytes() for p in corpus[name]]
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert build_default_corpus(out, max_bytes=SMALL, shards=3) == corpus
    assert (out / MANIFEST).stat().st_mtime_ns == stamp  # reused, not rebuilt
    rebuilt = build_default_corpus(out, max_bytes=SMALL // 2, shards=2)  # other settings: rebuilt
    assert len(rebuilt["code"]) == 2 and not (out / "code" / "code-02.jsonl").exists()
    assert build_default_corpus(out, max_bytes=SMALL, shards=3) == corpus  # back as it was


def test_stdlib_order_samples_across_packages():
    top = {p.relative_to(stdlib_root()).parts[0] for p in stdlib_files()[:60]}
    assert len(top) > 20  # a hash order, not alphabetical


def test_default_tokenizer_and_preparation(small_corpus, tmp_path):
    _, corpus = small_corpus
    tok = train_default_tokenizer(corpus, tmp_path / "tokenizer.json", vocab_size=400, max_chars_per_domain=100_000)
    assert tok.vocab_size == 400 and tok.eos_id == 0
    sample = next(corpus_texts(corpus["code"]))
    assert tok.decode(tok.encode(sample)) == sample
    metas = prepare(
        [Source(paths, format="jsonl", domain=name) for name, paths in corpus.items()],
        tok,
        tmp_path / "data",
        val_fraction=0.05,
        num_workers=1,
        progress=False,
        summary=False,
    )
    assert set(metas) == {"code", "text"}
    for meta in metas.values():
        assert meta["splits"]["train"]["tokens"] > 10_000 and meta["splits"]["val"]["documents"] >= 1


def test_contiguous_runs_leave_no_shard_empty():
    from sprout.data.prepare.sources import contiguous_runs

    assert contiguous_runs([1, 1, 100, 1, 1, 1], 4) == [0, 0, 0, 1, 2, 3]  # after the big one no shard is skipped
    assert contiguous_runs([5, 5, 5, 5], 2) == [0, 0, 1, 1]
    assert contiguous_runs([1, 1, 1, 100], 3) == [0, 0, 1, 2]  # the last ones still fill every shard
    assert contiguous_runs([3, 4], 8) == [0, 1] and contiguous_runs([], 3) == []
    import random

    rng = random.Random(0)
    for _ in range(200):
        sizes = [rng.choice([1, 10, 1000]) for _ in range(rng.randint(1, 30))]
        n = rng.randint(1, 10)
        groups = contiguous_runs(sizes, n)
        assert sorted(set(groups)) == list(range(min(n, len(sizes)))) and groups == sorted(groups)
