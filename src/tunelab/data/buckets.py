"""Aspect-ratio bucketing (as in kohya-ss): group images by shape so none is cropped hard."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from tunelab.errors import TunelabError


def make_buckets(resolution: int, step: int = 8, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) shapes with area <= resolution**2, sides multiples of step, ratio <= max_ratio."""
    if resolution % step:
        raise TunelabError(f"resolution {resolution} must be a multiple of {step}")
    max_area = resolution * resolution
    buckets = {(resolution, resolution)}
    width = resolution + step
    while True:
        # The tallest height that keeps the area within budget for this width.
        height = (max_area // width) // step * step
        if height < step or width / height > max_ratio:
            break
        buckets.add((width, height))
        buckets.add((height, width))  # the portrait twin
        width += step
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket closest in aspect ratio (log-ratio distance); larger area wins ties."""
    log_ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - log_ratio), -b[0] * b[1]))


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices that all share one bucket, reshuffled per epoch from seed."""

    def __init__(self, bucket_ids: Sequence[int], batch_size: int, seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise TunelabError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        members: dict[int, list[int]] = defaultdict(list)
        for index, bucket in enumerate(bucket_ids):
            members[bucket].append(index)
        self._members = [members[b] for b in sorted(members)]  # sorted: order must not depend on dict history

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for indices in self._members:
            order = torch.randperm(len(indices), generator=generator).tolist()
            shuffled = [indices[i] for i in order]
            for start in range(0, len(shuffled), self.batch_size):
                batch = shuffled[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]

    def __len__(self) -> int:
        if self.drop_last:
            return sum(len(m) // self.batch_size for m in self._members)
        return sum(math.ceil(len(m) / self.batch_size) for m in self._members)
