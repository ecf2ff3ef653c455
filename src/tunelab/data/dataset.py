"""Images and captions as training tensors: decoded once, resized once, cropped per sample."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tunelab.data.buckets import make_buckets, nearest_bucket
from tunelab.data.folder import ImageItem, scan_image_folder
from tunelab.data.images import BadImage, load_image
from tunelab.data.masks import MaskSource
from tunelab.errors import TunelabError

logger = logging.getLogger(__name__)


class ImageCaptionDataset(Dataset):
    """One sample per image per repeat; every image is kept in memory already resized."""

    def __init__(
        self,
        items: list[ImageItem],
        resolution: int,
        center_crop: bool = True,
        random_flip: bool = False,
        bucket: bool = False,
        seed: int = 0,
        mask_source: MaskSource | None = None,
    ):
        if not items:
            raise TunelabError("no training images given")
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.seed = seed
        self.epoch = 0
        self.skipped: list[tuple[Path, str]] = []
        square = (resolution, resolution)
        self.buckets: list[tuple[int, int]] = make_buckets(resolution) if bucket else [square]

        # Per usable image: resized pixels, target (width, height), caption.
        self._pixels: list[np.ndarray] = []  # each (H', W', 3) uint8, covering its target size; (H', W', 4) with a mask
        self._targets: list[tuple[int, int]] = []
        self._captions: list[str] = []
        self.items: list[ImageItem] = []  # the usable images, as given
        self._sample_to_image: list[int] = []  # one entry per repeat
        for item in items:
            try:
                image = load_image(item.path)
            except BadImage as e:
                logger.warning("skipping image %s", e)
                self.skipped.append((item.path, str(e)))
                continue
            target = nearest_bucket(*image.size, self.buckets) if bucket else square
            pixels = np.array(_resize_to_cover(image, target))  # (H', W', 3), writable, owns its memory
            if mask_source is not None:
                # The mask rides as a fourth channel, so every crop and flip is the image's.
                mask = np.array(_resize_to_cover(mask_source(item.path, image.size), target))  # (H', W')
                pixels = np.concatenate([pixels, mask[..., None]], axis=2)  # (H', W', 4)
            self._pixels.append(pixels)
            self._targets.append(target)
            self._captions.append(item.caption)
            self.items.append(item)
            self._sample_to_image += [len(self._pixels) - 1] * item.repeats

        if not self._pixels:
            folder = _common_folder([item.path for item in items])
            raise TunelabError(
                f"no usable images in {folder}: {len(self.skipped)} skipped "
                f"(first reason: {self.skipped[0][1]})"
            )
        # The sampler groups by these; without bucketing everything shares bucket 0.
        bucket_number = {shape: number for number, shape in enumerate(self.buckets)}
        self.bucket_ids: list[int] = [bucket_number[self._targets[image]] for image in self._sample_to_image]

    def set_epoch(self, epoch: int) -> None:
        """Random crops and flips depend on (seed, epoch, index) so runs are reproducible."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._sample_to_image)

    def __getitem__(self, index: int) -> dict:
        image = self._sample_to_image[index]
        pixels = self._pixels[image]  # (H', W', 3)
        width, height = self._targets[image]
        rng = np.random.default_rng([self.seed, self.epoch, index])

        slack_y, slack_x = pixels.shape[0] - height, pixels.shape[1] - width
        if self.center_crop:
            top, left = slack_y // 2, slack_x // 2
        else:
            top, left = int(rng.integers(slack_y + 1)), int(rng.integers(slack_x + 1))
        crop = pixels[top : top + height, left : left + width]  # (H, W, 3)
        if self.random_flip and rng.random() < 0.5:
            crop = crop[:, ::-1]

        tensor = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)  # (3 or 4, H, W) uint8
        sample = {"pixel_values": tensor[:3].float() / 127.5 - 1.0, "caption": self._captions[image]}
        if tensor.shape[0] == 4:
            sample["mask"] = tensor[3:].float() / 255.0  # (1, H, W), 1 = learn
        return sample


def collate(batch: list[dict]) -> dict:
    """Stack samples of one shape (one bucket) into a batch; masks, when any sample has one (class images
    have none: they learn every pixel)."""
    collated = {
        "pixel_values": torch.stack([sample["pixel_values"] for sample in batch]),  # (B, 3, H, W)
        "captions": [sample["caption"] for sample in batch],
        "is_prior": torch.tensor([sample.get("is_prior", False) for sample in batch]),  # (B,) class images
    }
    if any("mask" in sample for sample in batch):
        collated["masks"] = torch.stack([sample.get("mask", torch.ones_like(sample["pixel_values"][:1]))
                                         for sample in batch])  # (B, 1, H, W)
    return collated


def build_dataset(
    images_dir: str | Path,
    instance_prompt: str | None,
    resolution: int,
    *,
    center_crop: bool = True,
    random_flip: bool = False,
    bucket: bool = False,
    seed: int = 0,
    caption_extension: str = ".txt",
    mask_source: MaskSource | None = None,
    exclude: set[Path] | frozenset[Path] = frozenset(),
) -> ImageCaptionDataset:
    """Scan a folder and build its dataset in one call, leaving out the images in `exclude` (held out for validation)."""
    items = [item for item in scan_image_folder(images_dir, instance_prompt, caption_extension) if item.path not in exclude]
    return ImageCaptionDataset(
        items, resolution, center_crop=center_crop, random_flip=random_flip, bucket=bucket, seed=seed, mask_source=mask_source
    )


def _common_folder(paths: list[Path]) -> Path:
    try:
        return Path(os.path.commonpath([str(p.parent) for p in paths]))
    except ValueError:  # a mix of relative and absolute paths
        return paths[0].parent


def _resize_to_cover(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Scale so the image covers target with one side exact (the short side, for a square)."""
    width, height = image.size
    target_w, target_h = target
    scale = max(target_w / width, target_h / height)
    size = (max(target_w, round(width * scale)), max(target_h, round(height * scale)))
    if size == image.size:
        return image
    # reducing_gap: a cheap box pre-shrink before LANCZOS, for multi-megapixel photos.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
