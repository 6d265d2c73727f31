"""AdaptiveBatchSampler: each example once per epoch across size changes, ranks, resume and workers."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from batchscope.adapt import AdaptiveBatchSampler
from batchscope.errors import ConfigError


def _flat(batches):
    return [i for b in batches for i in b]


def test_every_example_once_per_epoch_across_size_changes():
    s = AdaptiveBatchSampler(102, 4, seed=3, drop_last=False)
    sizes, seen = [], []
    for k, b in enumerate(s):
        sizes.append(len(b))
        seen.append(b)
        if k == 2:
            s.set_batch_size(16)
        if k == 5:
            s.set_batch_size(8)
    assert sorted(_flat(seen)) == list(range(102))
    assert sizes == [4, 4, 4, 16, 16, 16, 8, 8, 8, 8, 8, 2]   # 12 + 48 + 40 + a last short batch


def test_drop_last_leaves_out_only_the_short_tail_and_epochs_differ():
    s = AdaptiveBatchSampler(10, 4, seed=0)
    e0 = list(s)
    e1 = list(s)
    assert [len(b) for b in e0] == [4, 4] and len(set(_flat(e0))) == 8
    assert s.epoch == 1 and _flat(e0) != _flat(e1)
    assert torch.equal(torch.tensor(_flat(e0)), s.permutation(0)[:8])


def test_ranks_split_each_global_batch_like_distributed_sampler():
    ranks = [AdaptiveBatchSampler(64, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    its = [iter(s) for s in ranks]
    seen = []
    for k in range(5):                                   # 8 + 8 + 16 + 16 + 16 = 64
        parts = [next(it) for it in its]
        if k == 1:
            for s in ranks:
                s.set_batch_size(16)
        assert len(parts[0]) == len(parts[1]) and not set(parts[0]) & set(parts[1])
        seen += parts[0] + parts[1]
    assert sorted(seen) == list(range(64))
    one = AdaptiveBatchSampler(64, 8, seed=1)
    it = iter(one)
    glob = [next(it) for _ in range(2)]
    one.set_batch_size(16)
    glob += [next(it) for _ in range(2)]
    split = [AdaptiveBatchSampler(64, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    its = [iter(s) for s in split]
    for k, g in enumerate(glob):
        if k == 2:
            for s in split:
                s.set_batch_size(16)
        assert [next(i) for i in its] == [g[0::2], g[1::2]]


def test_resume_yields_what_the_uninterrupted_run_would():
    full = AdaptiveBatchSampler(50, 4, seed=9)
    ref = []
    for _ in range(2):
        for k, b in enumerate(full):
            ref.append(b)
            if len(ref) == 3:
                full.set_batch_size(8)
    first = AdaptiveBatchSampler(50, 4, seed=9)
    got = []
    it = iter(first)
    for _ in range(4):
        got.append(next(it))
        if len(got) == 3:
            first.set_batch_size(8)
    state = first.state_dict()
    again = AdaptiveBatchSampler(50, 4, seed=9)
    again.load_state_dict(state)
    for _ in range(2 if again.epoch == 0 else 1):
        got.extend(again)
    assert got == ref


def test_bad_sizes_say_what_to_do():
    with pytest.raises(ConfigError, match="not a multiple of world_size 2"):
        AdaptiveBatchSampler(10, 3, world_size=2)
    with pytest.raises(ConfigError, match="larger than the data set"):
        AdaptiveBatchSampler(10, 4).set_batch_size(11)
    with pytest.raises(ConfigError, match="state is for 10 examples"):
        AdaptiveBatchSampler(12, 4).load_state_dict(AdaptiveBatchSampler(10, 4).state_dict())


class _Index(Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, i):
        return i


@pytest.mark.parametrize("workers,prefetch", [(0, None), (2, 2)])
def test_with_workers_a_change_lands_prefetch_batches_late(workers, prefetch):
    s = AdaptiveBatchSampler(100, 4, seed=2)
    kw = {} if workers == 0 else {"prefetch_factor": prefetch, "persistent_workers": False}
    loader = DataLoader(_Index(), batch_sampler=s, num_workers=workers, **kw)
    lag = 0 if workers == 0 else prefetch * workers
    change_at = 2
    sizes, seen = [], []
    for k, batch in enumerate(loader):
        sizes.append(len(batch))
        seen.extend(batch.tolist())
        if k == change_at:
            s.set_batch_size(8)
            received = k + 1
            state = s.state_dict(received=received)
    first_new = change_at + 1 + lag
    assert sizes[:first_new] == [4] * first_new and sizes[first_new] == 8
    assert sorted(seen) == list(range(100))   # 100 = 4k + 8j for both lags
    # The state taken at the change resumes on the examples the loop had not yet received.
    again = AdaptiveBatchSampler(100, 4, seed=2)
    again.load_state_dict(state)
    rest = _flat(list(again))
    assert seen[sum(sizes[:received]):] == rest
