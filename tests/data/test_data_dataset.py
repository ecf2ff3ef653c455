import logging

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tunelab.data.buckets import BucketBatchSampler
from tunelab.data.dataset import ImageCaptionDataset, build_dataset, collate
from tunelab.data.folder import ImageItem
from tunelab.errors import TunelabError


def save_stripes(path, colors, stripe=(32, 32)):
    """Vertical stripes of stripe-sized blocks, left to right, so crops and flips are visible."""
    width, height = stripe
    img = Image.new("RGB", (width * len(colors), height))
    for i, color in enumerate(colors):
        img.paste(color, (i * width, 0, (i + 1) * width, height))
    img.save(path)
    return path


def mean_color(pixel_values):
    """Average RGB of a (3, H, W) sample, back in 0..255."""
    return ((pixel_values.mean(dim=(1, 2)) + 1) * 127.5).tolist()


def test_sample_shape_range_and_caption(tmp_path, noise):
    path = noise(tmp_path / "n.png", size=(40, 30))
    dataset = ImageCaptionDataset([ImageItem(path, "sks dog")], resolution=32)

    sample = dataset[0]

    assert sample["caption"] == "sks dog"
    assert sample["pixel_values"].shape == (3, 32, 32)
    assert sample["pixel_values"].dtype == torch.float32
    assert sample["pixel_values"].min() >= -1.0 and sample["pixel_values"].max() <= 1.0
    assert sample["pixel_values"].min() < -0.5 and sample["pixel_values"].max() > 0.5  # really spans the range


def test_white_and_black_map_to_plus_and_minus_one(tmp_path, solid):
    white = solid(tmp_path / "w.png", size=(20, 50), color=(255, 255, 255))
    black = solid(tmp_path / "b.png", size=(50, 20), color=(0, 0, 0))
    dataset = ImageCaptionDataset([ImageItem(white, "w"), ImageItem(black, "b")], resolution=16)

    assert torch.all(dataset[0]["pixel_values"] == 1.0)
    assert torch.all(dataset[1]["pixel_values"] == -1.0)


def test_center_crop_keeps_the_middle(tmp_path):
    path = save_stripes(tmp_path / "s.png", [(255, 0, 0), (0, 255, 0), (0, 0, 255)])  # 96x32
    dataset = ImageCaptionDataset([ImageItem(path, "x")], resolution=32)

    r, g, b = mean_color(dataset[0]["pixel_values"])

    assert g > 200 and r < 30 and b < 30


def test_random_crop_is_seeded(tmp_path):
    path = save_stripes(tmp_path / "s.png", [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    items = [ImageItem(path, "x", repeats=20)]

    def crops(seed, epoch):
        dataset = ImageCaptionDataset(items, resolution=32, center_crop=False, seed=seed)
        dataset.set_epoch(epoch)
        return torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])

    first = crops(seed=1, epoch=0)
    assert torch.equal(first, crops(seed=1, epoch=0))
    assert not torch.equal(first, crops(seed=1, epoch=1))
    assert len({round(mean_color(crop)[0]) for crop in first}) > 1  # red share varies with the offset


def test_random_flip_is_deterministic_and_flips_some(tmp_path):
    path = save_stripes(tmp_path / "s.png", [(0, 0, 0), (255, 255, 255)], stripe=(16, 32))  # 32x32
    dataset = ImageCaptionDataset([ImageItem(path, "x", repeats=16)], resolution=32, random_flip=True, seed=5)

    def left_is_white():
        return [bool(dataset[i]["pixel_values"][:, :, 0].mean() > 0) for i in range(len(dataset))]

    epoch0 = left_is_white()
    assert epoch0 == left_is_white()
    assert 0 < sum(epoch0) < len(epoch0)  # some flipped, some not
    dataset.set_epoch(1)
    assert left_is_white() != epoch0


def test_no_flip_by_default(tmp_path):
    path = save_stripes(tmp_path / "s.png", [(0, 0, 0), (255, 255, 255)], stripe=(16, 32))
    dataset = ImageCaptionDataset([ImageItem(path, "x", repeats=8)], resolution=32)
    assert all(dataset[i]["pixel_values"][:, :, 0].mean() < 0 for i in range(len(dataset)))


def test_repeats_expand_the_index(tmp_path, solid):
    solid(tmp_path / "10_sks dog" / "a.png")
    solid(tmp_path / "10_sks dog" / "b.png")
    solid(tmp_path / "c.png")

    dataset = build_dataset(tmp_path, "a dog", 16)

    assert len(dataset) == 21
    assert sorted(dataset[i]["caption"] for i in range(len(dataset))) == ["a dog"] + ["sks dog"] * 20


def test_bad_file_is_skipped_and_counted(tmp_path, solid, caplog):
    good = solid(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")

    with caplog.at_level(logging.WARNING, logger="tunelab.data.dataset"):
        dataset = build_dataset(tmp_path, "sks dog", 16)

    assert len(dataset) == 1
    assert [path for path, _ in dataset.skipped] == [bad]
    assert "not a readable image" in dataset.skipped[0][1]
    assert "bad.png" in caplog.text
    assert dataset[0]["pixel_values"].shape == (3, 16, 16)
    assert good.exists()


def test_all_bad_folder_is_an_error(tmp_path):
    (tmp_path / "a.png").write_text("nope")
    (tmp_path / "b.jpg").write_bytes(b"")

    with pytest.raises(TunelabError, match=rf"no usable images in {tmp_path}: 2 skipped \(first reason: .*a.png"):
        build_dataset(tmp_path, "sks dog", 16)


def test_all_bad_relative_paths_name_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_text("nope")

    with pytest.raises(TunelabError, match=r"no usable images in \.: 1 skipped"):
        build_dataset(".", "sks dog", 16)


def test_images_stay_in_memory(tmp_path, solid):
    path = solid(tmp_path / "a.png", color=(10, 20, 30))
    dataset = build_dataset(tmp_path, "x", 16)
    path.unlink()  # reading from disk again would now fail

    assert dataset[0]["pixel_values"].shape == (3, 16, 16)


def test_bucketing_puts_wide_images_in_wide_buckets(tmp_path, noise):
    wide = noise(tmp_path / "wide.png", size=(128, 64))
    tall = noise(tmp_path / "tall.png", size=(64, 128), seed=1)
    square = noise(tmp_path / "square.png", size=(70, 70), seed=2)
    items = [ImageItem(wide, "w", 3), ImageItem(tall, "t", 3), ImageItem(square, "s", 3)]

    dataset = ImageCaptionDataset(items, resolution=64, bucket=True)

    shapes = {dataset[i]["caption"]: tuple(dataset[i]["pixel_values"].shape) for i in range(len(dataset))}
    _, wide_h, wide_w = shapes["w"]
    assert wide_w > wide_h and wide_w * wide_h <= 64 * 64
    assert shapes["t"] == (3, wide_w, wide_h)
    assert shapes["s"] == (3, 64, 64)
    assert len(dataset.bucket_ids) == len(dataset) == 9
    assert len(set(dataset.bucket_ids)) == 3


def test_bucketed_loader_batches_share_one_shape(tmp_path, noise):
    for i, size in enumerate([(128, 64), (120, 60), (64, 128), (64, 64), (80, 80)]):
        noise(tmp_path / f"{i}.png", size=size, seed=i)
    dataset = build_dataset(tmp_path, "x", 64, bucket=True, random_flip=True)
    sampler = BucketBatchSampler(dataset.bucket_ids, batch_size=2, seed=0)

    batches = list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate))

    assert len(batches) == len(sampler)
    assert sum(len(b["captions"]) for b in batches) == len(dataset)
    for batch in batches:
        assert batch["pixel_values"].ndim == 4 and batch["pixel_values"].shape[1] == 3
        assert len(batch["captions"]) == batch["pixel_values"].shape[0]


def test_collate_stacks_samples():
    batch = [
        {"pixel_values": torch.zeros(3, 8, 16), "caption": "a"},
        {"pixel_values": torch.ones(3, 8, 16), "caption": "b"},
    ]

    out = collate(batch)

    assert out["pixel_values"].shape == (2, 3, 8, 16)
    assert out["captions"] == ["a", "b"]
    assert torch.equal(out["pixel_values"][1], torch.ones(3, 8, 16))


def test_upscales_small_images_to_resolution(tmp_path, solid):
    solid(tmp_path / "tiny.png", size=(8, 6))
    assert build_dataset(tmp_path, "x", 32)[0]["pixel_values"].shape == (3, 32, 32)


def test_no_items_is_an_error():
    with pytest.raises(TunelabError):
        ImageCaptionDataset([], resolution=32)
