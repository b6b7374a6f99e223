"""Per-domain token statistics for entropy-based mixture policies (entropies in nats).

Adjacent pairs ``(a, b)`` are kept as sparse codes ``a * V + b`` with counts, sorted and
unique, so a 32000-token vocabulary never needs a dense V x V table. Pairs are counted
inside each document (its tokens followed by EOS), so the numbers do not depend on how
files were split between workers.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse


def count_unigrams(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    counts = np.bincount(tokens, minlength=vocab_size)
    if len(counts) > vocab_size:
        raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary of {vocab_size}")
    return counts.astype(np.int64)


def pair_codes(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Codes ``a * V + b`` of the adjacent pairs of one token sequence."""
    tokens = tokens.astype(np.int64)
    return tokens[:-1] * vocab_size + tokens[1:]


def reduce_pairs(codes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum counts of equal codes; returns sorted unique codes and their counts, zeros dropped."""
    if len(codes) == 0:
        return codes.astype(np.int64), counts.astype(np.int64)
    order = np.argsort(codes, kind="stable")  # timsort: merging sorted runs is linear
    codes, counts = codes[order], counts[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    codes, counts = codes[starts], np.add.reduceat(counts, starts)
    keep = counts != 0
    return codes[keep], counts[keep]


class PairCounter:
    """Accumulates pair codes; buffers them and folds them into sorted counts now and then."""

    def __init__(self, vocab_size: int, fold_every: int = 1 << 22) -> None:
        self.vocab_size = vocab_size
        self.fold_every = fold_every
        self.codes = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def add(self, codes: np.ndarray) -> None:
        self._buffer.append(codes)
        self._buffered += len(codes)
        if self._buffered >= self.fold_every:
            self._fold()

    def merge(self, codes: np.ndarray, counts: np.ndarray) -> None:
        """Add already-counted pairs (counts may be negative to take a document back out)."""
        self._fold()
        self.codes, self.counts = reduce_pairs(np.concatenate([self.codes, codes]), np.concatenate([self.counts, counts]))

    def _fold(self) -> None:
        if not self._buffer:
            return
        codes, counts = np.unique(np.concatenate(self._buffer), return_counts=True)
        self._buffer, self._buffered = [], 0
        self.codes, self.counts = reduce_pairs(np.concatenate([self.codes, codes]), np.concatenate([self.counts, counts.astype(np.int64)]))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._fold()
        return self.codes, self.counts

    def to_sparse(self) -> scipy.sparse.coo_array:
        codes, counts = self.result()
        v = self.vocab_size
        return scipy.sparse.coo_array((counts, (codes // v, codes % v)), shape=(v, v))


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts / total
    return float(-(p * np.log(p)).sum())


def entropies(unigram: np.ndarray, bigram_pairs) -> dict[str, float]:
    """Shannon H(X), joint H(X_t, X_t+1) and conditional H(X_t+1 | X_t), in nats.

    ``bigram_pairs`` is ``{(a, b): count}`` or a scipy sparse matrix of pair counts. The
    conditional entropy is the joint minus the entropy of the pairs' first tokens, i.e.
    ``-sum P(a, b) log P(b | a)``.
    """
    if isinstance(bigram_pairs, dict):
        firsts = np.array([a for a, _ in bigram_pairs], dtype=np.int64)
        counts = np.array(list(bigram_pairs.values()), dtype=np.int64)
    else:
        coo = scipy.sparse.coo_array(bigram_pairs)
        coo.sum_duplicates()
        firsts, counts = coo.row.astype(np.int64), np.asarray(coo.data, dtype=np.int64)
    joint = _entropy(counts)
    first_marginal = np.bincount(firsts, weights=counts) if len(firsts) else np.zeros(0)
    return {"shannon": _entropy(np.asarray(unigram)), "joint": joint, "conditional": joint - _entropy(first_marginal)}
