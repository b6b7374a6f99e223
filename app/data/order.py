"""The order in which one rank reads one domain's blocks: chunk-aware, windowed, O(chunks) state.

A split's blocks live in chunks of a few thousand blocks each; reading blocks uniformly at random
over the whole split makes nearly every read land in a chunk that is not in the cache, so a
corpus larger than the cache is downloaded again and again. Here, in each epoch of a domain:

- the domain's chunks are permuted (seeded by seed, domain and epoch) and dealt to the ranks,
  rank ``r`` of ``W`` taking chunks ``r, r+W, ...`` of that order, so ranks never share a block;
- a rank walks its chunks in that order, ``window`` chunks at a time, and the blocks of a window
  are shuffled together (seeded by seed, domain, epoch, rank and window number).

This is MosaicML Streaming's ``py1b`` shuffle (shards in random order, samples shuffled within
blocks of ``shuffle_block_size``) computed lazily: Streaming builds the epoch's whole sample
permutation up front (8 bytes per sample: 3.4 GB at 419M blocks), here only the chunk order and
the current window's permutation exist. A position ``(epoch, position)`` maps to its block by a
pure function, so a resume at any batch needs nothing else, and the chunks a rank reads next are
known ahead (``chunks_ahead``), for downloading them before they are read.

A domain with fewer chunks than ranks (tiny data) has its chunks cut into as many pieces as
needed, or into single blocks, so every rank gets a share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class ChunkOrder:
    """One domain's blocks as one rank reads them, epoch after epoch.

    ``chunk_blocks[c]`` is how many blocks chunk ``c`` holds; blocks are numbered through the
    split (chunk ``c``'s first block is the sum of the earlier chunks' counts), as offline scores
    and the readers number them.
    """

    def __init__(
        self, chunk_blocks: Sequence[int], seed: int, domain: int, rank: int, world_size: int, window: int
    ) -> None:
        counts = np.asarray(chunk_blocks, dtype=np.int64)
        if counts.sum() < world_size:
            raise ValueError(f"a domain needs at least {world_size} blocks, got {int(counts.sum())}")
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # chunk c holds blocks starts[c]:starts[c+1]
        self.seed, self.domain, self.rank, self.world_size, self.window = seed, domain, rank, world_size, window
        self.units = self._units(counts)  # [n, 2]: start and stop block of each unit dealt to ranks
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._shuffled: tuple[tuple[int, int] | None, np.ndarray] = (None, np.empty(0, dtype=np.int64))

    def _units(self, counts: np.ndarray) -> np.ndarray:
        chunks = np.flatnonzero(counts)
        pieces = math.ceil(self.world_size / len(chunks))
        if pieces == 1:  # the usual case: a unit is a chunk
            return np.stack([self.starts[chunks], self.starts[chunks + 1]], axis=1)
        units = []
        for c in chunks:
            edges = np.linspace(self.starts[c], self.starts[c + 1], pieces + 1).astype(np.int64)
            units += [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
        if len(units) < self.world_size:  # a few blocks in all: every block is a unit
            units = [(b, b + 1) for b in range(int(self.starts[-1]))]
        return np.asarray(units, dtype=np.int64)

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's units of ``epoch`` in reading order, and their cumulative block counts."""
        if epoch not in self._layouts:  # kept: this epoch and the next (read ahead across its end)
            perm = np.random.default_rng([self.seed, self.domain, epoch]).permutation(len(self.units))
            mine = self.units[perm[self.rank :: self.world_size]]
            self._layouts = {e: v for e, v in self._layouts.items() if e >= epoch - 1}
            self._layouts[epoch] = mine, np.concatenate([[0], np.cumsum(mine[:, 1] - mine[:, 0])])
        return self._layouts[epoch]

    def _window(self, epoch: int, k: int) -> np.ndarray:
        """The blocks of window ``k`` of ``epoch``, shuffled together."""
        if self._shuffled[0] != (epoch, k):
            mine, _ = self._layout(epoch)
            blocks = np.concatenate([np.arange(a, b) for a, b in mine[k * self.window : (k + 1) * self.window]])
            rng = np.random.default_rng([self.seed, self.domain, epoch, self.rank, k])
            self._shuffled = (epoch, k), rng.permutation(blocks)
        return self._shuffled[1]

    def epoch_blocks(self, epoch: int) -> int:
        """How many blocks this rank reads in ``epoch`` of the domain."""
        return int(self._layout(epoch)[1][-1])

    def block(self, epoch: int, position: int) -> int:
        """The block this rank reads at ``position`` of ``epoch`` (``0 <= position < epoch_blocks``)."""
        _, ends = self._layout(epoch)
        unit = int(np.searchsorted(ends, position, side="right")) - 1
        k = unit // self.window
        return int(self._window(epoch, k)[position - ends[k * self.window]])

    def chunk_of(self, block: int) -> int:
        return int(np.searchsorted(self.starts, block, side="right")) - 1

    def chunks_ahead(self, epoch: int, position: int, ahead: int) -> list[int]:
        """The chunks of the window that ``position`` is in, then those of the next ``ahead`` units
        (into the next epoch at its end), in reading order, each once."""
        mine, ends = self._layout(epoch)
        first = (int(np.searchsorted(ends, position, side="right")) - 1) // self.window * self.window
        units = list(mine[first : first + self.window + ahead])
        if len(units) < self.window + ahead:
            units += list(self._layout(epoch + 1)[0][: self.window + ahead - len(units)])
        return list(dict.fromkeys(self.chunk_of(int(a)) for a, _ in units))
