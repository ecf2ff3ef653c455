"""Load any user image as a clean RGB picture, or refuse it with a clear reason."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tunelab.errors import TunelabError

# Our own limit, checked from the header before decoding; PIL's global is left alone.
MAX_IMAGE_PIXELS = 64_000_000

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# What broken or foreign files make PIL raise while opening or decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


class BadImage(TunelabError):
    """An image file that cannot be used: unreadable, truncated, or too large."""


def load_image(path: str | Path) -> Image.Image:
    """Open, fully decode and normalise an image to RGB (EXIF rotation applied, alpha on white)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _refuse_if_too_large(path, img)
                img.load()  # decode everything now so truncation surfaces here, not in training
                return _to_rgb(ImageOps.exif_transpose(img))
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"{path}: refused as a possible decompression bomb ({e})") from e
    except FileNotFoundError as e:
        raise BadImage(f"{path}: file not found") from e
    except _DECODE_ERRORS as e:
        raise BadImage(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def _refuse_if_too_large(path: Path, img: Image.Image) -> None:
    width, height = img.size  # from the header: nothing is decoded yet
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImage(
            f"{path}: {width}x{height} image ({width * height} pixels) is over the "
            f"{MAX_IMAGE_PIXELS}-pixel limit; refused as a possible decompression bomb"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(img)
    if img.mode == "F":
        return _float_to_rgb(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _composite_on_white(img.convert("RGBA"))
    # CMYK, YCbCr, palette without transparency, L and 1 all have direct RGB conversions.
    return img.convert("RGB")


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    # PIL's own I;16 -> L conversion clips at 255, turning almost everything white.
    values = np.asarray(img, dtype=np.float64)  # (H, W)
    gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)  # 0..65535 -> 0..255
    return Image.fromarray(gray).convert("RGB")


def _float_to_rgb(img: Image.Image) -> Image.Image:
    # Float images are usually 0..1; PIL's own conversion would treat them as 0..255 (near black).
    values = np.nan_to_num(np.asarray(img, dtype=np.float64))  # (H, W)
    if values.max(initial=0.0) <= 1.0:
        values = values * 255.0
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")
