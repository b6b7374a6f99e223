"""Data: tokenizers, preparation of raw corpora into per-domain shards, and their streaming.

``prepare`` is not re-exported here: the name would hide the ``sprout.data.prepare`` package.
Use ``from sprout.data.prepare import prepare``.
"""

from sprout.data.corpus import build_default_corpus, train_default_tokenizer
from sprout.data.prepare import Source
from sprout.data.stats import entropies
from sprout.data.tokenizer import Tokenizer

__all__ = ["Source", "Tokenizer", "build_default_corpus", "entropies", "train_default_tokenizer"]
