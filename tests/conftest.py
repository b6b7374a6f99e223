"""Shared fixtures: small prepared data made by the real preparation library."""

import os
from pathlib import Path

import pytest

from sprout.data.corpus import build_default_corpus, train_default_tokenizer
from sprout.data.prepare import Source, prepare

TINY_VOCAB = 320

# The tests have no network: Hugging Face libraries (lm-eval's data sets) must not try it.
os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared data dir with two domains (stdlib ``code`` and ``text``, ~150 kB each) and
    its ``tokenizer.json`` (byte-level BPE, ``TINY_VOCAB`` tokens), built once per session."""
    root = tmp_path_factory.mktemp("tiny_data")
    corpus = build_default_corpus(root / "raw", max_bytes=150_000, shards=2)
    tok = train_default_tokenizer(corpus, root / "data" / "tokenizer.json", vocab_size=TINY_VOCAB)
    sources = [Source([str(p) for p in files], format="jsonl", domain=name) for name, files in sorted(corpus.items())]
    prepare(sources, tok, root / "data", val_fraction=0.05, num_workers=1, progress=False, summary=False)
    return root / "data"
