from collections import Counter
from itertools import islice

import pytest

from app.data.sampler import MixtureBatchSampler


def take(sampler, n):
    return list(islice(iter(sampler), n))


def test_same_seed_same_batches_and_weights_respected():
    a = MixtureBatchSampler([50, 200], [0.2, 0.8], batch_size=16, seed=3)
    b = MixtureBatchSampler([50, 200], [0.2, 0.8], batch_size=16, seed=3)
    batches = take(a, 200)
    assert batches == take(b, 200)
    share = Counter(d for batch in batches for _, d, _ in batch)
    assert abs(share[1] / (200 * 16) - 0.8) < 0.03


def test_every_block_once_per_epoch_and_ranks_disjoint():
    seen = []
    for rank in range(2):
        s = MixtureBatchSampler([10], [1.0], batch_size=5, seed=0, rank=rank, world_size=2)
        seen.append([blk for batch in take(s, 1) for _, _, blk in batch])
    assert sorted(seen[0] + seen[1]) == list(range(10))


def test_resume_from_snapshot_continues_identically():
    s = MixtureBatchSampler([30, 40, 50], [0.5, 0.3, 0.2], batch_size=4, seed=1)
    it = iter(s)
    for _ in range(7):
        next(it)  # drawn ahead of consumption, as a prefetching DataLoader does
    s.set_weights([0.1, 0.1, 0.8], from_batch=s.state["batch_no"])
    expected = [next(it) for _ in range(10)]

    again = MixtureBatchSampler([30, 40, 50], [0.5, 0.3, 0.2], batch_size=4, seed=1)
    replay = iter(again)
    for _ in range(7):
        next(replay)
    state = again.snapshot(4)  # only 4 batches were consumed when the checkpoint was written
    again.set_weights([0.1, 0.1, 0.8], from_batch=7)

    resumed = MixtureBatchSampler([30, 40, 50], [0.5, 0.3, 0.2], batch_size=4, seed=1)
    resumed.load_state(again.snapshot(4))
    batches = take(resumed, 13)
    assert batches[3:] == expected
    assert state["batch_no"] == 4


def test_snapshot_of_unknown_batch_is_an_error():
    s = MixtureBatchSampler([8], [1.0], batch_size=2)
    take(s, 3)
    s.snapshot(2)
    with pytest.raises(KeyError):
        s.snapshot(1)
