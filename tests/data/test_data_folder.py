import logging

import pytest

from tunelab.data.folder import ImageItem, scan_image_folder
from tunelab.errors import TunelabError


def touch(path, text=None):
    """Scanning never opens images, so placeholder bytes are enough here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"img") if text is None else path.write_text(text)
    return path


def test_flat_folder_caption_precedence(tmp_path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "a.txt", "  a photo of a red car\n")
    touch(tmp_path / "b.jpg")
    touch(tmp_path / "b.txt", "   \n")  # empty caption counts as absent
    touch(tmp_path / "c.JPEG")

    items = scan_image_folder(tmp_path, "sks dog")

    assert items == [
        ImageItem(tmp_path / "a.png", "a photo of a red car", 1),
        ImageItem(tmp_path / "b.jpg", "sks dog", 1),
        ImageItem(tmp_path / "c.JPEG", "sks dog", 1),
    ]


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    touch(tmp_path / "keep.webp")
    touch(tmp_path / ".hidden.png")
    touch(tmp_path / "notes.md", "not an image")
    touch(tmp_path / ".cache" / "thumb.png")

    assert [item.path.name for item in scan_image_folder(tmp_path, "x")] == ["keep.webp"]


def test_kohya_subfolders_give_repeats_and_prompts(tmp_path, caplog):
    touch(tmp_path / "10_sks dog" / "x1.png")
    touch(tmp_path / "10_sks dog" / "x2.png")
    touch(tmp_path / "10_sks dog" / "x2.txt", "sks dog on a beach")
    touch(tmp_path / "3_" / "y.png")  # no prompt in the name: falls back to instance_prompt
    touch(tmp_path / "top.png")
    touch(tmp_path / "misc" / "ignored.png")

    with caplog.at_level(logging.WARNING, logger="tunelab.data.folder"):
        items = scan_image_folder(tmp_path, "a dog")

    by_name = {item.path.name: item for item in items}
    assert set(by_name) == {"x1.png", "x2.png", "y.png", "top.png"}
    assert by_name["x1.png"] == ImageItem(tmp_path / "10_sks dog" / "x1.png", "sks dog", 10)
    assert by_name["x2.png"].caption == "sks dog on a beach"  # .txt beats the folder prompt
    assert (by_name["y.png"].caption, by_name["y.png"].repeats) == ("a dog", 3)
    assert (by_name["top.png"].caption, by_name["top.png"].repeats) == ("a dog", 1)
    assert "misc" in caplog.text


def test_order_is_sorted_and_deterministic(tmp_path):
    for name in ["b.png", "a.png", "2_z/c.png", "1_z/d.png"]:
        touch(tmp_path / name)

    items = scan_image_folder(tmp_path, "x")

    assert [item.path for item in items] == sorted(item.path for item in items)
    assert items == scan_image_folder(tmp_path, "x")


def test_image_without_any_caption_is_an_error(tmp_path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "a.txt", "captioned")
    touch(tmp_path / "b.png")

    with pytest.raises(TunelabError, match=r"1 image\(s\) in .* no caption \(first: b.png\).*\.txt"):
        scan_image_folder(tmp_path, None)


def test_blank_instance_prompt_counts_as_none(tmp_path):
    touch(tmp_path / "a.png")
    with pytest.raises(TunelabError, match="no caption"):
        scan_image_folder(tmp_path, "   ")


def test_empty_folder_names_folder_and_extensions(tmp_path):
    touch(tmp_path / "readme.txt", "hi")
    with pytest.raises(TunelabError, match=rf"no images found in {tmp_path}.*\.png.*\.jpg"):
        scan_image_folder(tmp_path, "x")


def test_empty_folder_hints_at_badly_named_subfolders(tmp_path):
    touch(tmp_path / "dogs" / "a.png")
    with pytest.raises(TunelabError, match="<repeats>_<prompt>.*dogs"):
        scan_image_folder(tmp_path, "x")


def test_missing_folder(tmp_path):
    with pytest.raises(TunelabError, match="not found: .*nowhere"):
        scan_image_folder(tmp_path / "nowhere", "x")


def test_file_instead_of_folder(tmp_path):
    path = touch(tmp_path / "one.png")
    with pytest.raises(TunelabError, match="not a directory: .*one.png"):
        scan_image_folder(path, "x")
