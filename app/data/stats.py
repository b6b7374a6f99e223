"""Per-domain token statistics for entropy-based mixture policies (entropies in nats).

Adjacent pairs ``(a, b)`` are kept as sparse codes ``a * V + b`` with counts, sorted and
unique, so a 32000-token vocabulary never needs a dense V x V table. Counting is by sorting
(uint32 codes while V * V fits), which is several times faster than hashing in Python. Pairs are counted
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


def code_dtype(vocab_size: int):
    """uint32 while V * V fits (sorting it is several times faster than int64), else int64."""
    return np.uint32 if vocab_size <= 65535 else np.int64


def pair_codes(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Codes ``a * V + b`` of the adjacent pairs of one token sequence."""
    tokens = tokens.astype(code_dtype(vocab_size))
    return tokens[:-1] * vocab_size + tokens[1:]


def count_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique codes and how often each occurs (a plain sort: no argsort needed)."""
    codes = np.sort(codes)
    if len(codes) == 0:
        return codes, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return codes[starts], np.diff(np.r_[starts, len(codes)]).astype(np.int64)


def merge_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum several (sorted unique codes, counts) into one; zero counts are dropped."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes, _ = count_codes(np.concatenate([c for c, _ in parts]))  # sorted union
    counts = np.zeros(len(codes), np.int64)
    for part_codes, part_counts in parts:
        counts[np.searchsorted(codes, part_codes)] += part_counts  # codes are unique within a part
    keep = counts != 0
    return codes[keep], counts[keep]


class PairCounter:
    """Accumulates pair codes: buffers them, counts each full buffer, sums the counts at the end."""

    def __init__(self, vocab_size: int, fold_every: int = 1 << 22) -> None:
        self.vocab_size = vocab_size
        self.fold_every = fold_every
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._folded: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, codes: np.ndarray) -> None:
        self._buffer.append(codes)
        self._buffered += len(codes)
        if self._buffered >= self.fold_every:
            self._fold()

    def merge(self, codes: np.ndarray, counts: np.ndarray) -> None:
        """Add already-counted pairs (counts may be negative to take a document back out)."""
        self._folded.append((codes, counts))
        self._fold()

    def _fold(self) -> None:
        if self._buffer:
            self._folded.append(count_codes(np.concatenate(self._buffer)))
            self._buffer, self._buffered = [], 0
        if len(self._folded) > 8:  # bound memory: keep one summed part
            self._folded = [merge_counts(self._folded)]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._fold()
        self._folded = [merge_counts(self._folded)]
        return self._folded[0]

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
