"""The quick start's data: built on first use from the running Python install."""

from __future__ import annotations

from pathlib import Path

from sprout.data.corpus import DEFAULT_MAX_BYTES, build_default_corpus, train_default_tokenizer
from sprout.data.prepare import Source, prepare
from sprout.data.shards import is_prepared
from sprout.data.tokenizer import Tokenizer
from sprout.protocols import Preparation


class EmbeddedCorpus(Preparation):
    """Two domains from the standard library, ``code`` (its sources) and ``text`` (its prose).

    The first run writes the raw corpus, trains a byte-level BPE and prepares shards under
    ``data_dir``; later runs find them and start at once.

    Args:
        vocab_size: size of the BPE vocabulary trained on the corpus.
        max_bytes: raw text per domain.
        val_fraction: documents held out for validation.
    """

    def __init__(self, vocab_size: int = 4096, max_bytes: int = DEFAULT_MAX_BYTES, val_fraction: float = 0.02) -> None:
        self.vocab_size = vocab_size
        self.max_bytes = max_bytes
        self.val_fraction = val_fraction

    def run(self, data_dir: Path, tokenizer_path: Path) -> None:
        if tokenizer_path.is_file() and all(is_prepared(data_dir / d) for d in ("code", "text")):
            return
        print(f"Building the embedded quick-start corpus under {data_dir} (first run only)...")
        corpus = build_default_corpus(data_dir / "raw", max_bytes=self.max_bytes)
        if tokenizer_path.is_file():
            tokenizer = Tokenizer.load(tokenizer_path)
        else:
            tokenizer = train_default_tokenizer(corpus, tokenizer_path, vocab_size=self.vocab_size)
        sources = [
            Source(paths=[str(p) for p in files], format="jsonl", domain=name) for name, files in sorted(corpus.items())
        ]
        prepare(sources, tokenizer, data_dir, val_fraction=self.val_fraction)
