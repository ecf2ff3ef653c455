"""Instance images paired with class images for DreamBooth's prior-preservation loss."""

from __future__ import annotations

from torch.utils.data import Dataset

from tunelab.data.dataset import collate


class PriorPairedDataset(Dataset):
    """Sample i is (instance i, a class image); the class images cycle, shifted each epoch,
    so every class image is seen even when there are more of them than instance images."""

    def __init__(self, instance: Dataset, prior: Dataset):
        self.instance = instance
        self.prior = prior
        self.epoch = 0
        self.skipped = list(getattr(instance, "skipped", [])) + list(getattr(prior, "skipped", []))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for part in (self.instance, self.prior):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.instance)

    def __getitem__(self, index: int) -> tuple[dict, dict]:
        prior_index = (index + self.epoch * len(self.instance)) % len(self.prior)
        return self.instance[index], {**self.prior[prior_index], "is_prior": True}


def collate_paired(batch: list[tuple[dict, dict]]) -> dict:
    """Instance samples first, then their class samples: one forward pass for both losses."""
    return collate([instance for instance, _ in batch] + [prior for _, prior in batch])
