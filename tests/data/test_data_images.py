import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from tunelab.data import images
from tunelab.data.images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, BadImage, load_image
from tunelab.errors import TunelabError

RED = (255, 0, 0)


def rgb_at(img, xy):
    return np.array(img.getpixel(xy), dtype=int)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 60x30 with a red block at the stored top-left; orientation 6 means "rotate 90° clockwise".
    stored = Image.new("RGB", (60, 30), (0, 0, 255))
    stored.paste(RED, (0, 0, 15, 15))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=95, exif=exif)

    img = load_image(path)

    assert img.mode == "RGB"
    assert img.size == (30, 60)  # dimensions swapped
    assert np.abs(rgb_at(img, (27, 3)) - RED).max() < 40  # stored top-left is now top-right
    assert np.abs(rgb_at(img, (3, 3)) - (0, 0, 255)).max() < 40


def test_transparent_pixels_become_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    rgba.save(tmp_path / "alpha.png")

    img = load_image(tmp_path / "alpha.png")

    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 1)) == RED
    assert all(120 <= v <= 135 for v in img.getpixel((2, 2)))  # half black over white


def test_grayscale_with_alpha_becomes_white_where_transparent(tmp_path):
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_loads_as_rgb(tmp_path, solid):
    path = solid(tmp_path / "cmyk.jpg", size=(16, 16), color=(255, 0, 0, 0), mode="CMYK", quality=95)

    img = load_image(path)

    assert img.mode == "RGB"
    assert np.abs(rgb_at(img, (8, 8)) - (0, 255, 255)).max() < 10  # pure cyan


def test_16_bit_grayscale_keeps_its_brightness(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)  # black, mid-gray (128 * 257), white
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")

    img = load_image(tmp_path / "deep.png")

    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (0, 0, 0)
    assert img.getpixel((1, 0)) == (128, 128, 128)  # not clipped to white
    assert img.getpixel((2, 0)) == (255, 255, 255)


def test_float_tiff_in_0_1_keeps_its_brightness(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    assert load_image(tmp_path / "float.tif").getpixel((0, 0)) == (128, 128, 128)


def test_palette_png_loads_its_colors(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "pal.png")

    img = load_image(tmp_path / "pal.png")

    assert img.mode == "RGB"
    assert img.getpixel((1, 1)) == (10, 200, 30)
    assert img.getpixel((0, 0)) == (0, 0, 0)


def test_palette_transparency_becomes_white(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "pal_t.png", transparency=0)

    img = load_image(tmp_path / "pal_t.png")

    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 1)) == (10, 200, 30)


@pytest.mark.parametrize(("mode", "value", "expected"), [("L", 77, 77), ("1", 1, 255), ("1", 0, 0)])
def test_grayscale_and_bilevel_load_as_rgb(tmp_path, solid, mode, value, expected):
    path = solid(tmp_path / "gray.png", size=(5, 5), color=value, mode=mode)

    img = load_image(path)

    assert img.mode == "RGB"
    assert img.getpixel((2, 2)) == (expected,) * 3


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_refused(tmp_path, noise, suffix):
    path = noise(tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False

    with pytest.raises(BadImage, match=f"cut\\{suffix}"):
        load_image(path)


def test_zero_byte_file_is_refused(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadImage, match="empty.png: empty file"):
        load_image(tmp_path / "empty.png")


def test_text_file_named_png_is_refused(tmp_path):
    (tmp_path / "notes.png").write_text("these are not pixels\n")
    with pytest.raises(BadImage, match="notes.png.*not a readable image"):
        load_image(tmp_path / "notes.png")


def test_missing_file_is_a_tunelab_error(tmp_path):
    with pytest.raises(TunelabError, match="gone.png"):
        load_image(tmp_path / "gone.png")


@pytest.fixture
def decoding_forbidden(monkeypatch):
    """Make any pixel decode fail the test: bombs must be refused from the header alone."""

    def forbidden(self):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)


def test_bomb_over_our_limit_is_refused_before_decoding(tmp_path, decoding_forbidden):
    # 72 Mpx: over our 64 Mpx limit but under PIL's own warning threshold, so our check must catch it.
    Image.new("1", (9000, 8000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 100_000

    start = time.perf_counter()
    with pytest.raises(BadImage, match="bomb.png: 9000x8000 .*decompression bomb"):
        load_image(tmp_path / "bomb.png")
    assert time.perf_counter() - start < 0.5


def test_bomb_over_pil_limit_is_refused_and_pil_global_untouched(tmp_path, decoding_forbidden):
    pil_limit = Image.MAX_IMAGE_PIXELS
    Image.new("1", (10000, 10000)).save(tmp_path / "huge.png")  # PIL warns about this one itself

    with pytest.raises(BadImage, match="huge.png.*decompression bomb.*100000000"):
        load_image(tmp_path / "huge.png")
    assert Image.MAX_IMAGE_PIXELS == pil_limit


def test_limit_is_read_at_call_time(tmp_path, solid, monkeypatch):
    path = solid(tmp_path / "small.png", size=(20, 10))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 199)
    with pytest.raises(BadImage, match="20x10"):
        load_image(path)


def test_constants():
    assert MAX_IMAGE_PIXELS == 64_000_000
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    assert issubclass(BadImage, TunelabError)
