"""Data: tokenizers, preparation of raw corpora into per-domain shards, and their streaming."""

from app.data.corpus import build_default_corpus, train_default_tokenizer
from app.data.prepare import Source, prepare
from app.data.stats import entropies
from app.data.tokenizer import Tokenizer

__all__ = ["Source", "Tokenizer", "build_default_corpus", "entropies", "prepare", "train_default_tokenizer"]
