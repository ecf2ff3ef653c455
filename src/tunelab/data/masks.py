"""Loss masks: which pixels of a training image the model should learn (white) and which to ignore (black).

From a folder of same-name grayscale images (`--masks DIR`) or from each image's alpha channel
(`--alpha-mask`), the way kohya's masked loss reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PIL import Image, ImageOps

from tunelab.data.images import IMAGE_EXTENSIONS, BadImage, load_image
from tunelab.errors import TunelabError

MaskSource = Callable[[Path, tuple[int, int]], Image.Image]  # (image file, its size) -> mask, mode "L", same size


def masks_from_folder(folder: str | Path) -> MaskSource:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TunelabError(f"--masks {folder} is not a folder")

    def mask_for(image: Path, size: tuple[int, int]) -> Image.Image:
        candidates = [folder / f"{image.stem}{suffix}" for suffix in IMAGE_EXTENSIONS]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise TunelabError(f"--masks: no mask for {image.name} in {folder} (a same-name image, e.g. {image.stem}.png)")
        try:
            mask = load_image(found).convert("L")
        except BadImage as error:
            raise TunelabError(f"--masks: {error}") from None
        if mask.size != size:
            raise TunelabError(f"--masks: {found.name} is {mask.size[0]}x{mask.size[1]}, its image {image.name} "
                               f"{size[0]}x{size[1]}")
        return mask

    return mask_for


def masks_from_alpha(image: Path, size: tuple[int, int]) -> Image.Image:
    with Image.open(image) as opened:
        opened = ImageOps.exif_transpose(opened)
        if "A" not in opened.getbands():
            raise TunelabError(f"--alpha-mask: {image.name} has no alpha channel")
        return opened.getchannel("A")
