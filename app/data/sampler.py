"""A weighted sampler over per-domain block streams whose weights may change mid-run.

litdata's ``CombinedStreamingDataset`` fixes its weights at start and does not resume
exactly with several workers, so Sprout samples in the main process instead: every
batch is a list of ``(batch_no, domain, block)`` keys drawn here and read by the
workers from the chunk files by block number. Because the DataLoader asks
for a new batch of keys exactly once per consumed batch, the draw sequence depends
only on the seed, the rank and the weight changes, never on worker timing. Weight
changes are queued to take effect at a given batch number for the same reason.

Within a domain, blocks come in the chunk-aware order of ``sprout.data.order``. The state is a few
numbers per domain, so with the weights fixed the blocks a run reads are a pure function of
seed, weights, chunk sizes, rank and batch number: ``itertools.islice(sampler, steps)``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from sprout.data.order import ChunkOrder


class MixtureBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Infinite batches of ``(batch_no, domain, block)`` keys, domains drawn by weight.

    ``chunks[d]`` lists how many blocks each chunk of domain ``d`` holds. Each domain is read in
    its ``ChunkOrder`` (chunks dealt to ranks, so ranks never read the same block in an epoch;
    the blocks of ``window`` chunks shuffled together), a new order every epoch of that domain.
    ``snapshot(b)`` is the state just before batch ``b`` was drawn; the data module keeps the one
    for the next batch to be consumed.
    """

    def __init__(
        self,
        chunks: Sequence[Sequence[int]],
        weights: Sequence[float],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        window: int = 8,
    ) -> None:
        self.orders = [ChunkOrder(c, seed, d, rank, world_size, window) for d, c in enumerate(chunks)]
        self.sizes = [int(o.starts[-1]) for o in self.orders]
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.state: dict[str, Any] = {
            "batch_no": 0,
            "weights": [float(w) for w in weights],
            "pending": [],  # [(from_batch, weights)], applied in order
            "epoch": [0] * len(chunks),
            "position": [0] * len(chunks),  # blocks this rank has read in the current epoch
            "rng": torch.Generator().manual_seed(seed * 1000003 + rank).get_state(),
        }
        self._snapshots: dict[int, dict[str, Any]] = {}

    def set_weights(self, weights: Sequence[float], from_batch: int) -> None:
        """Use ``weights`` for batches numbered ``from_batch`` and later.

        Kept snapshots get the change too: a resume from one of them must meet it at
        the same batch as the uninterrupted run did.
        """
        change = (int(from_batch), [float(w) for w in weights])
        for state in [self.state, *self._snapshots.values()]:
            state["pending"].append(change)

    @property
    def weights(self) -> list[float]:
        return list(self.state["weights"])

    def _next_block(self, domain: int) -> int:
        order, epoch = self.orders[domain], self.state["epoch"]
        if self.state["position"][domain] >= order.epoch_blocks(epoch[domain]):
            epoch[domain] += 1
            self.state["position"][domain] = 0
        self.state["position"][domain] += 1
        return order.block(epoch[domain], self.state["position"][domain] - 1)

    def chunks_ahead(self, domain: int, ahead: int) -> list[int]:
        """The chunks of ``domain`` this rank reads from now on: its current window's, then ``ahead`` more."""
        order, position = self.orders[domain], self.state["position"][domain]
        epoch = self.state["epoch"][domain]
        if position >= order.epoch_blocks(epoch):
            epoch, position = epoch + 1, 0
        return order.chunks_ahead(epoch, position, ahead)

    def _draw_batch(self) -> list[tuple[int, int, int]]:
        state = self.state
        b = state["batch_no"]
        self._snapshots[b] = copy.deepcopy(state)
        while state["pending"] and state["pending"][0][0] <= b:
            state["weights"] = state["pending"].pop(0)[1]
        g = torch.Generator()
        g.set_state(state["rng"])
        domains = torch.multinomial(
            torch.tensor(state["weights"], dtype=torch.float64), self.batch_size, replacement=True, generator=g
        )
        state["rng"] = g.get_state()
        state["batch_no"] = b + 1
        return [(b, int(d), self._next_block(int(d))) for d in domains]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        while True:
            yield self._draw_batch()

    def snapshot(self, batch_no: int) -> dict[str, Any]:
        """State before ``batch_no`` was drawn; forgets older snapshots."""
        for b in [b for b in self._snapshots if b < batch_no]:
            del self._snapshots[b]
        if batch_no in self._snapshots:
            return copy.deepcopy(self._snapshots[batch_no])
        if batch_no == self.state["batch_no"]:
            return copy.deepcopy(self.state)
        raise KeyError(f"no sampler snapshot for batch {batch_no}")

    def load_state(self, state: dict[str, Any]) -> None:
        self.state = copy.deepcopy(state)
        self._snapshots = {}
