"""Masked loss: the mask follows every crop and flip of its image, masked pixels give no gradient, and a
missing mask is one clear line naming the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from tunelab.data.dataset import build_dataset, collate
from tunelab.data.masks import masks_from_alpha, masks_from_folder
from tunelab.training.step import diffusion_losses


def write_pair(folder, masks, index: int, size=(56, 40)):
    """An image with a red square at a place that depends on `index`, and the mask of that square."""
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 90, (size[1], size[0], 3), dtype=np.uint8)  # a busy dark background
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    top, left = 5 + index, 10 + 3 * index
    pixels[top:top + 14, left:left + 14] = (255, 0, 0)
    mask[top:top + 14, left:left + 14] = 255
    Image.fromarray(pixels).save(folder / f"image_{index}.png")
    Image.fromarray(mask).save(masks / f"image_{index}.png")


def test_the_mask_follows_every_random_crop_and_flip(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for index in range(3):
        write_pair(images, masks, index)
    dataset = build_dataset(images, "a photo of sks toy", 32, center_crop=False, random_flip=True, seed=5,
                            mask_source=masks_from_folder(masks))
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            red = (sample["pixel_values"][0] > 0.9) & (sample["pixel_values"][1] < -0.9)  # (H, W) the square's pixels
            learned = sample["mask"][0] > 0.5
            assert red.sum() > 20 and (red == learned).float().mean() > 0.97  # resampling blurs one pixel at the edges
    batch = collate([dataset[0], {**dataset[1], "is_prior": True}])
    assert batch["masks"].shape == (2, 1, 32, 32)


def test_masked_pixels_give_no_gradient():
    prediction = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randn(2, 4, 8, 8)
    masks = torch.ones(2, 1, 64, 64)
    masks[:, :, :, :32] = 0  # the left half of every image is ignored
    loss, _, _ = diffusion_losses(prediction, target, torch.ones(2), torch.zeros(2, dtype=torch.bool), 1.0, masks)
    loss.backward()
    assert torch.all(prediction.grad[..., :4] == 0) and torch.all(prediction.grad[..., 4:] != 0)
    unmasked, _, _ = diffusion_losses(prediction, target, torch.ones(2), torch.zeros(2, dtype=torch.bool), 1.0)
    right = torch.nn.functional.mse_loss(prediction[..., 4:], target[..., 4:])
    assert loss.item() == pytest.approx(right.item() / 2, rel=1e-5) and unmasked.item() != loss.item()


def test_an_image_without_a_mask_is_one_line_naming_it(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    write_pair(images, masks, 0)
    Image.new("RGB", (40, 40)).save(images / "unmasked.png")
    assert run_cli("train", "lora", "--model", "tiny-sd", "--images", images, "--out", tmp_path / "out",
                   "--prompt", "a toy", "--masks", masks, "--steps", "1", "--log-with", "none") == 2
    err = capsys.readouterr().err
    assert "--masks: no mask for unmasked.png" in err and len(err.strip().splitlines()) == 1


def test_alpha_masks_come_from_the_alpha_channel(tmp_path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[8:24, 8:24] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "cut_out.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "opaque.png")
    mask = np.array(masks_from_alpha(tmp_path / "cut_out.png", (32, 32)))
    assert mask[8:24, 8:24].min() == 255 and mask.sum() == 255 * 16 * 16
    with pytest.raises(Exception, match="opaque.png has no alpha channel"):
        masks_from_alpha(tmp_path / "opaque.png", (32, 32))


def test_a_masked_run_trains_end_to_end(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for index in range(2):
        write_pair(images, masks, index)
    assert run_cli("train", "lora", "--model", "tiny-sd", "--images", images, "--out", tmp_path / "out", "--prompt", "a toy",
                   "--masks", masks, "--steps", "2", "--log-with", "none", "--class-prompt", "a toy",
                   "--num-class-images", "2", "--class-sample-steps", "1", "--class-cache", tmp_path / "cache") == 0
    assert (tmp_path / "out" / "lora.safetensors").is_file()
