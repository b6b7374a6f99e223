from collections import Counter
from itertools import islice

import pytest

from sprout.data.sampler import MixtureBatchSampler


def take(sampler, n):
    return list(islice(iter(sampler), n))


def test_same_seed_same_batches_and_weights_respected():
    a = MixtureBatchSampler([[25, 25], [50] * 4], [0.2, 0.8], batch_size=16, seed=3)
    b = MixtureBatchSampler([[25, 25], [50] * 4], [0.2, 0.8], batch_size=16, seed=3)
    batches = take(a, 200)
    assert batches == take(b, 200)
    share = Counter(d for batch in batches for _, d, _ in batch)
    assert abs(share[1] / (200 * 16) - 0.8) < 0.03


def test_every_block_once_per_epoch_and_ranks_disjoint():
    seen = []
    for rank in range(2):
        s = MixtureBatchSampler([[10]], [1.0], batch_size=5, seed=0, rank=rank, world_size=2)
        seen.append([blk for batch in take(s, 1) for _, _, blk in batch])
    assert sorted(seen[0] + seen[1]) == list(range(10))


def test_resume_from_snapshot_continues_identically():
    s = MixtureBatchSampler([[10, 20], [40], [5, 5, 40]], [0.5, 0.3, 0.2], batch_size=4, seed=1)
    it = iter(s)
    for _ in range(7):
        next(it)  # drawn ahead of consumption, as a prefetching DataLoader does
    s.set_weights([0.1, 0.1, 0.8], from_batch=s.state["batch_no"])
    expected = [next(it) for _ in range(10)]

    again = MixtureBatchSampler([[10, 20], [40], [5, 5, 40]], [0.5, 0.3, 0.2], batch_size=4, seed=1)
    replay = iter(again)
    for _ in range(7):
        next(replay)
    state = again.snapshot(4)  # only 4 batches were consumed when the checkpoint was written
    again.set_weights([0.1, 0.1, 0.8], from_batch=7)

    resumed = MixtureBatchSampler([[10, 20], [40], [5, 5, 40]], [0.5, 0.3, 0.2], batch_size=4, seed=1)
    resumed.load_state(again.snapshot(4))
    batches = take(resumed, 13)
    assert batches[3:] == expected
    assert state["batch_no"] == 4


def test_snapshot_of_unknown_batch_is_an_error():
    s = MixtureBatchSampler([[8]], [1.0], batch_size=2)
    take(s, 3)
    s.snapshot(2)
    with pytest.raises(KeyError):
        s.snapshot(1)


def blocks_of_epoch(chunks, rank, world, window, n):
    """The first ``n`` blocks one rank reads of a one-domain mixture."""
    s = MixtureBatchSampler([chunks], [1.0], batch_size=1, seed=5, rank=rank, world_size=world, window=window)
    return [blk for batch in take(s, n) for _, _, blk in batch]


@pytest.mark.parametrize("chunks,world", [([7, 0, 12, 9, 3, 11, 8, 10, 6, 5, 9, 12], 3), ([4, 30], 4), ([3], 2)])
def test_each_epoch_reads_every_block_once_on_disjoint_ranks(chunks, world):
    """Ranks take disjoint chunks (pieces of chunks, or blocks, when there are fewer chunks than ranks)."""
    per_rank = [
        MixtureBatchSampler([chunks], [1.0], 1, seed=5, rank=r, world_size=world).orders[0].epoch_blocks(0)
        for r in range(world)
    ]
    seen = [blocks_of_epoch(chunks, r, world, window=2, n=per_rank[r]) for r in range(world)]
    assert sorted(b for blocks in seen for b in blocks) == list(range(sum(chunks)))
    assert all(per_rank)


def test_a_window_of_chunks_is_read_before_the_next():
    chunks = [10] * 40
    order = MixtureBatchSampler([chunks], [1.0], 1, window=4).orders[0]
    blocks = blocks_of_epoch(chunks, 0, 1, window=4, n=400)
    for w in range(10):  # each run of 40 reads is 4 whole chunks, shuffled together
        window = blocks[40 * w : 40 * (w + 1)]
        touched = {order.chunk_of(b) for b in window}
        assert len(touched) == 4 and sorted(window) == sorted(b for c in touched for b in range(10 * c, 10 * c + 10))
        assert window != sorted(window)
    assert [order.chunk_of(b) for b in blocks[::10]] != sorted(
        order.chunk_of(b) for b in blocks[::10]
    )  # chunks shuffled


def test_chunks_ahead_names_the_chunks_read_next():
    chunks = [5] * 30
    s = MixtureBatchSampler([chunks], [1.0], batch_size=5, window=3)
    order = s.orders[0]
    for _ in range(40):  # across the end of the epoch (30 batches) too
        ahead = s.chunks_ahead(0, 3)  # the window being read and the next whole one
        assert 3 <= len(ahead) <= 6
        coming = [order.chunk_of(b) for batch in take(s, 1) for _, _, b in batch]
        assert set(coming) <= set(ahead)


def test_state_is_small_at_scale():
    """419M blocks in 205k chunks (SlimPajama + Starcoderdata at seq_len 2048, 16 MiB chunks): the
    order keeps per-chunk arrays, never one entry per block."""
    chunks = [2047] * 204_700
    s = MixtureBatchSampler([chunks, chunks[:1000]], [0.9, 0.1], batch_size=8, rank=3, world_size=64, window=8)
    take(s, 5)
    big = [a.nbytes for o in s.orders for a in (o.units, o.starts, *[x for lay in o._layouts.values() for x in lay])]
    assert max(big) < 8 * 205_000 * 2 and sum(big) < 20e6


def test_windowed_order_resumes_exactly_at_any_batch_with_weights_changing():
    """Many chunks, a window of 2, epochs ending mid-run: a resume from the snapshot of any
    batch continues with the very batches of the uninterrupted run, weight changes included."""
    chunks = [[6, 9, 4, 7, 8, 5, 6, 9], [3] * 12]

    def sampler():
        return MixtureBatchSampler(chunks, [0.7, 0.3], batch_size=5, seed=2, window=2)

    whole = sampler()
    whole.set_weights([0.2, 0.8], from_batch=13)
    expected = take(whole, 40)  # 200 blocks: several epochs of both domains
    for stop in (1, 7, 13, 22, 39):
        first = sampler()
        first.set_weights([0.2, 0.8], from_batch=13)
        take(first, stop + 3)  # drawn ahead of consumption
        resumed = sampler()
        resumed.load_state(first.snapshot(stop))
        assert take(resumed, 40 - stop) == expected[stop:]
