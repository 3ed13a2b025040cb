"""Batch order: seeded, resumable part-way through an epoch, shared out over ranks."""
from dtgnet.data.samplers import LabelledShareSampler, ResumableSampler

# the batch order of the release that wrote these lines (seed, epoch): a change breaks every saved run's resume
GOLDEN = {(1, 0): [4, 1, 8, 6, 3, 9, 5, 7], (1, 2): [6, 1, 7, 8, 5, 4, 9, 3],
          "labelled": [1, 2, 3, 7, 0, 10, 2, 5, 4, 0, 1, 8, 1, 6, 9, 0]}


def test_labelled_share_sampler_mixes_every_batch_and_splits_ranks():

    labelled, unlabelled = list(range(5)), list(range(5, 30))
    single = LabelledShareSampler(labelled, unlabelled, 2, seed=3, global_batch=6)
    assert single.steps_per_epoch == 25 // 4 and len(single) == 6 * 6
    order = [i for _, i in single]
    for step in range(single.steps_per_epoch):  # a naive check of every batch
        batch = order[step * 6:(step + 1) * 6]
        assert sum(i < 5 for i in batch) == 2 and len(set(batch)) == 6
    unl = [i for i in order if i >= 5]
    assert len(set(unl)) == len(unl)  # an unlabelled video at most once per epoch
    ranks = [[i for _, i in LabelledShareSampler(labelled, unlabelled, 2, 3, 6, rank=r, world=2)] for r in (0, 1)]
    rebuilt = [i for step in range(6) for r in (0, 1) for i in ranks[r][step * 3:(step + 1) * 3]]
    assert rebuilt == order  # the ranks' local batches concatenate to the single-process batch
    single.set_position(1)
    assert [i for _, i in single] != order  # a new mix every epoch


def test_resumable_sampler_restarts_mid_epoch_and_ranks_split_each_global_batch():
    whole = [i for _, i in ResumableSampler(10, seed=1, global_batch=4)]
    assert len(whole) == 8 and len(set(whole)) == 8  # two full batches; the remainder waits for the next epoch
    resumed = ResumableSampler(10, seed=1, global_batch=4)
    resumed.set_position(0, start=5)
    assert [i for _, i in resumed] == whole[5:]
    r0, r1 = ([i for _, i in ResumableSampler(10, 1, 4, rank=r, world=2)] for r in (0, 1))
    assert r0[:2] + r1[:2] + r0[2:] + r1[2:] == whole  # concatenated in rank order: the single-process batches
    later = ResumableSampler(10, seed=1, global_batch=4)
    later.set_position(1)
    assert [i for _, i in later] != whole and all(e == 1 for e, _ in later)


def test_the_order_is_a_fixed_function_of_seed_and_epoch():
    """A run resumed by another release must read the same batches: the permutations are pinned."""
    s = ResumableSampler(10, seed=1, global_batch=4)
    assert [i for _, i in s] == GOLDEN[(1, 0)]
    s.set_position(2)
    assert [i for _, i in s] == GOLDEN[(1, 2)]
    s.set_position(2, start=3)
    assert len(s) == 5 and [i for _, i in s] == GOLDEN[(1, 2)][3:]
    s.set_position(0)  # start defaults to the epoch's beginning
    assert len(s) == 8 and [i for _, i in s] == GOLDEN[(1, 0)]
    mixed = LabelledShareSampler([0, 1, 2], list(range(3, 11)), 2, seed=4, global_batch=4)
    mixed.set_position(1)
    assert [i for _, i in mixed] == GOLDEN["labelled"]
