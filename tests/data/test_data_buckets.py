import math

import pytest

from tunelab.data.buckets import BucketBatchSampler, make_buckets, nearest_bucket
from tunelab.errors import TunelabError


def test_buckets_respect_area_step_and_ratio():
    buckets = make_buckets(512)

    assert (512, 512) in buckets
    for w, h in buckets:
        assert w * h <= 512 * 512
        assert w % 8 == 0 and h % 8 == 0
        assert max(w / h, h / w) <= 2.0
        assert (h, w) in buckets  # portrait and landscape alike
    assert (720, 360) in buckets  # the 2:1 extreme is covered
    assert len(buckets) == len(set(buckets))


def test_buckets_other_step_and_ratio():
    buckets = make_buckets(1024, step=64, max_ratio=1.5)
    assert (1024, 1024) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and max(w / h, h / w) <= 1.5 for w, h in buckets)
    assert max(w / h for w, h in buckets) > 1.3


def test_resolution_must_fit_step():
    with pytest.raises(TunelabError, match="multiple of 8"):
        make_buckets(500)


def test_nearest_bucket_by_aspect_ratio():
    buckets = make_buckets(512)
    assert nearest_bucket(1000, 500, buckets) == (720, 360)
    assert nearest_bucket(500, 1000, buckets) == (360, 720)
    assert nearest_bucket(3000, 3000, buckets) == (512, 512)
    w, h = nearest_bucket(1600, 1200, buckets)  # 4:3
    assert abs(math.log((w / h) / (4 / 3))) < 0.03


def bucket_of(bucket_ids, batch):
    return {bucket_ids[i] for i in batch}


def test_sampler_never_mixes_buckets_and_covers_every_index():
    bucket_ids = [0, 1, 0, 2, 1, 0, 0, 1, 2, 0, 1]
    sampler = BucketBatchSampler(bucket_ids, batch_size=2, seed=3)

    batches = list(sampler)

    assert all(len(bucket_of(bucket_ids, b)) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(bucket_ids)))
    assert len(batches) == len(sampler) == 3 + 2 + 1  # ceil(5/2) + ceil(4/2) + ceil(2/2)


def test_sampler_drop_last():
    bucket_ids = [0, 0, 0, 1, 1, 1, 1]
    sampler = BucketBatchSampler(bucket_ids, batch_size=2, seed=0, drop_last=True)

    batches = list(sampler)

    assert all(len(b) == 2 for b in batches)
    assert len(batches) == len(sampler) == 1 + 2


def test_sampler_is_deterministic_per_seed_and_epoch():
    bucket_ids = [i % 3 for i in range(60)]

    def order(seed, epoch):
        sampler = BucketBatchSampler(bucket_ids, batch_size=4, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(7, 0) == order(7, 0)
    assert order(7, 1) == order(7, 1)
    assert order(7, 0) != order(7, 1)  # reshuffled each epoch
    assert order(7, 0) != order(8, 0)


def test_sampler_rejects_empty_batches():
    with pytest.raises(TunelabError, match="batch size"):
        BucketBatchSampler([0], batch_size=0)
