"""Data: tokenizers, preparation of raw corpora into per-domain shards, and their streaming.

``prepare`` is not re-exported here: the name would hide the ``app.data.prepare`` package.
Use ``from app.data.prepare import prepare``.
"""

from app.data.corpus import build_default_corpus, train_default_tokenizer
from app.data.prepare import Source
from app.data.stats import entropies
from app.data.tokenizer import Tokenizer

__all__ = ["Source", "Tokenizer", "build_default_corpus", "entropies", "train_default_tokenizer"]
