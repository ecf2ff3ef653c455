"""Find training images and their captions in a user's folder (flat or kohya-style)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.images import IMAGE_EXTENSIONS
from tunelab.errors import TunelabError

logger = logging.getLogger(__name__)

# kohya-ss convention: "<repeats>_<prompt>", e.g. "10_sks dog".
_KOHYA_FOLDER = re.compile(r"^(\d+)_(.*)$", re.DOTALL)


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    repeats: int = 1


def scan_image_folder(root: str | Path, instance_prompt: str | None, caption_extension: str = ".txt") -> list[ImageItem]:
    """List every image under root with its caption: caption file (same name, `caption_extension`) >
    subfolder prompt > instance_prompt."""
    root = Path(root)
    if not root.exists():
        raise TunelabError(f"image folder not found: {root}")
    if not root.is_dir():
        raise TunelabError(f"image folder is not a directory: {root}")

    instance_prompt = (instance_prompt or "").strip() or None
    found: list[tuple[Path, str | None, int]] = []  # (image, fallback prompt, repeats)
    found += [(p, instance_prompt, 1) for p in _images_in(root)]

    ignored_folders = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p)):
        match = _KOHYA_FOLDER.match(sub.name)
        if match is None:
            ignored_folders.append(sub.name)
            logger.warning("ignoring subfolder %s: name is not <repeats>_<prompt> (e.g. '10_sks dog')", sub)
            continue
        repeats = int(match.group(1))
        if repeats == 0:
            logger.warning("ignoring subfolder %s: 0 repeats", sub)
            continue
        folder_prompt = match.group(2).strip() or instance_prompt
        found += [(p, folder_prompt, repeats) for p in _images_in(sub)]

    if not found:
        hint = (
            f"; subfolders must be named <repeats>_<prompt>, ignored: {', '.join(ignored_folders)}"
            if ignored_folders
            else ""
        )
        raise TunelabError(f"no images found in {root} (accepted: {' '.join(IMAGE_EXTENSIONS)}){hint}")

    items, uncaptioned = [], []
    for path, fallback, repeats in found:
        caption = _read_caption(path, caption_extension) or fallback
        if caption is None:
            uncaptioned.append(path)
        else:
            items.append(ImageItem(path=path, caption=caption, repeats=repeats))
    if uncaptioned:
        raise TunelabError(
            f"{len(uncaptioned)} image(s) in {root} have no caption (first: {uncaptioned[0].name}): "
            f"pass an instance prompt or add a same-name {caption_extension} caption next to each image"
        )
    return sorted(items, key=lambda item: item.path)


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not _is_hidden(p) and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _read_caption(image: Path, extension: str) -> str | None:
    """The stripped text of image's same-name caption file, or None when missing or empty."""
    caption_file = image.with_suffix(extension)
    if not caption_file.is_file():
        return None
    try:
        text = caption_file.read_text(encoding="utf-8-sig")  # -sig: drop a Windows BOM
    except (OSError, UnicodeDecodeError) as e:
        raise TunelabError(f"cannot read caption file {caption_file}: {e}") from e
    return text.strip() or None
