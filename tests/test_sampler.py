import logging
from collections import Counter

import numpy as np
import pytest

from reid.data.sampler import PKSampler


def uneven_pids(seed=0, num_ids=40, max_images=13):
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, max_images, size=num_ids)
    counts[:3] = [2, 3, 2]  # some identities shorter than K=4
    pids = np.repeat(np.arange(num_ids), counts)
    return rng.permutation(pids).tolist()


def test_every_batch_is_p_identities_times_k_images():
    pids = uneven_pids()
    p, k = 6, 4
    sampler = PKSampler(pids, p, k, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    images_of = {}
    for index, pid in enumerate(pids):
        images_of.setdefault(pid, []).append(index)
    for batch in batches:
        assert len(batch) == p * k
        assert all(isinstance(i, int) and 0 <= i < len(pids) for i in batch)
        per_identity = Counter(pids[i] for i in batch)
        assert len(per_identity) == p and set(per_identity.values()) == {k}
        for pid in per_identity:
            chosen = [i for i in batch if pids[i] == pid]
            if len(images_of[pid]) >= k:
                assert len(set(chosen)) == k  # distinct images when the identity has enough
            else:
                assert set(chosen) == set(images_of[pid])  # a short identity shows all its images


def test_epoch_covers_roughly_the_dataset():
    pids = uneven_pids()
    sampler = PKSampler(pids, 4, 4)
    seen = [i for batch in sampler for i in batch]
    assert len(pids) - 4 * 4 - 3 * 40 <= len(seen) <= len(pids) + 4 * 4
    assert len(set(seen)) >= 0.75 * len(pids)


def test_plan_is_deterministic_per_seed_and_epoch():
    pids = uneven_pids()
    a, b = PKSampler(pids, 4, 4, seed=7), PKSampler(pids, 4, 4, seed=7)
    assert list(a) == list(b)
    a.set_epoch(1)
    epoch_one = list(a)
    assert epoch_one != list(b)
    b.set_epoch(1)
    assert epoch_one == list(b)
    assert list(PKSampler(pids, 4, 4, seed=8)) != list(PKSampler(pids, 4, 4, seed=7))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_the_single_process_plan(world_size):
    pids = uneven_pids(seed=1, num_ids=60)
    single = PKSampler(pids, 4, 4, seed=5)
    single.set_epoch(2)
    reference = list(single)
    shares = []
    for rank in range(world_size):
        sampler = PKSampler(pids, 4, 4, seed=5, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        shares.append(list(sampler))
    lengths = {len(share) for share in shares}
    assert lengths == {len(shares[0])} and len(shares[0]) == len(reference) // world_size
    used = len(shares[0]) * world_size
    positions = [set(range(rank, used, world_size)) for rank in range(world_size)]
    assert set().union(*positions) == set(range(used))  # disjoint, complete cover of the used batches
    for rank, share in enumerate(shares):
        assert share == [reference[i] for i in sorted(positions[rank])]


def test_single_image_identities_are_dropped_with_a_warning(caplog):
    pids = [0, 0, 0, 1, 2, 2, 3, 3, 3, 4]
    with caplog.at_level(logging.WARNING, logger="reid.data.sampler"):
        sampler = PKSampler(pids, 2, 2)
    assert "dropping 2 identities" in caplog.text
    assert sampler.num_identities == 3 and sampler.dropped_pids_count == 2
    used = {pids[i] for batch in sampler for i in batch}
    assert not used & {1, 4}


def test_k_of_one_keeps_single_image_identities():
    sampler = PKSampler([0, 1, 2, 3], 2, 1)
    assert sampler.num_identities == 4 and sorted(i for batch in sampler for i in batch) == [0, 1, 2, 3]


def test_small_split_errors_are_explicit():
    with pytest.raises(ValueError, match="empty"):
        PKSampler([], 4, 4)
    with pytest.raises(ValueError, match=r"only 3 identities.*data.ids_per_batch <= 3"):
        PKSampler([0, 0, 1, 1, 2, 2, 3], 4, 2)
    with pytest.raises(ValueError, match="world_size"):
        PKSampler([0, 0, 1, 1], 2, 2, world_size=4, rank=0)
    with pytest.raises(ValueError, match="rank"):
        PKSampler([0, 0, 1, 1], 2, 2, world_size=2, rank=2)
    with pytest.raises(ValueError, match="num_instances"):
        PKSampler([0, 0, 1, 1], 2, 0)
