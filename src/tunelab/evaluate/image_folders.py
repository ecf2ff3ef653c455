"""The images `tunelab evaluate` scores: a flat folder of generated images with their prompts, a folder of real ones."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tunelab.data.folder import scan_image_folder
from tunelab.data.images import IMAGE_EXTENSIONS, load_image
from tunelab.errors import TunelabError


def image_paths(folder: str | Path, role: str) -> list[Path]:
    """The images directly in `folder`, sorted by name; `role` names the folder in messages."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise TunelabError(f"{role} folder not found: {folder}")
    if not folder.is_dir():
        raise TunelabError(f"{role} path is not a folder: {folder}")
    paths = sorted(path for path in folder.iterdir()
                   if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise TunelabError(f"no images in the {role} folder {folder} (accepted: {' '.join(IMAGE_EXTENSIONS)})")
    return paths


def prompts_beside(paths: list[Path], prompt: str | None) -> list[str]:
    """`prompt` for every image, else each image's same-name .txt; an image without one is refused."""
    if prompt is not None:
        if not prompt.strip():
            raise TunelabError("--prompt is empty")
        return [prompt] * len(paths)
    prompts, missing = [], []
    for path in paths:
        text_file = path.with_suffix(".txt")
        try:
            text = text_file.read_text(encoding="utf-8-sig").strip() if text_file.is_file() else ""
        except (OSError, UnicodeDecodeError) as error:
            raise TunelabError(f"cannot read prompt file {text_file}: {error}") from None
        (prompts if text else missing).append(text or path)
    if missing:
        raise TunelabError(f"{len(missing)} of {len(paths)} generated images have no prompt (first: {missing[0].name}): "
                           "pass --prompt, or put a same-name .txt beside each image")
    return prompts


def load_images(paths: list[Path]) -> list[Image.Image]:
    return [load_image(path) for path in paths]


def training_images(folder: str | Path) -> list[Image.Image]:
    """Every image of a training folder (flat or kohya-style subfolders), once each: a subject's real images."""
    return load_images([item.path for item in scan_image_folder(folder, "caption not needed")])
