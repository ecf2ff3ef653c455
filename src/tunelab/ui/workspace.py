"""The one folder the UI reads and writes: every path typed into a form is checked here first.

A form path is relative to the workspace. Refused, with one line naming the field: absolute paths,
`..`, `~`, URL-encoded characters (`%2e%2e`), NUL bytes, and paths whose real location (symlinks
followed) leaves the workspace. Models may also be a preset name or sit under a `--model-dir`
folder given on the command line (read only).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.models.presets import PRESETS

URL_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
MAX_UPLOAD_FILES = 200  # images or captions in one upload
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # one uploaded file; a training image is rarely over a few MB


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


class Workspace:
    def __init__(self, root: str | Path, model_dirs: list[str | Path] = ()):
        self.root = Path(root).expanduser().resolve()
        self.model_dirs = [Path(folder).expanduser().resolve() for folder in model_dirs]
        self._lock_file = None

    def lock(self) -> None:
        """One server per workspace, so one run at a time there: a second `tunelab ui` on it is refused."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / ".tunelab-ui.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise TunelabError(f"another `tunelab ui` is serving the workspace {self.root}") from None
        self._lock_file = handle

    def path(self, text: str, field: str = "path", must_exist: bool = False) -> Path:
        """The real path of a workspace-relative `text`, or a TunelabError naming `field`."""
        text = str(text).strip()
        if not text:
            raise TunelabError(f"{field}: a path inside the workspace is needed")
        if "\x00" in text or URL_ESCAPE.search(text):
            raise TunelabError(f"{field}: {text!r} holds encoded characters; type the path as it is")
        if text.startswith("~") or Path(text).is_absolute() or "\\" in text:
            raise TunelabError(f"{field}: {text!r} is not a path inside the workspace (give it relative to {self.root})")
        if ".." in Path(text).parts:
            raise TunelabError(f"{field}: {text!r} leaves the workspace ('..' is not allowed)")
        real = (self.root / text).resolve()
        if not _within(real, self.root):
            raise TunelabError(f"{field}: {text!r} leads outside the workspace (through a symlink)")
        if must_exist and not real.exists():
            raise TunelabError(f"{field}: {text!r} does not exist in the workspace")
        return real

    def model(self, text: str, field: str = "model") -> str:
        """A preset name, a model in the workspace, or one under a --model-dir folder (typed in full)."""
        text = str(text).strip()
        if text in PRESETS:
            return text
        if self.model_dirs and Path(text).is_absolute() and not URL_ESCAPE.search(text):
            real = Path(text).resolve()
            if any(_within(real, folder) for folder in self.model_dirs) and ".." not in Path(text).parts:
                return str(real)
            raise TunelabError(f"{field}: {text!r} is neither in the workspace nor under a --model-dir folder")
        return str(self.path(text, field, must_exist=True))

    def weighted(self, text: str, field: str) -> str:
        """FILE[:WEIGHT] or FILE[:TOKEN] with FILE inside the workspace."""
        text = str(text).strip()
        name, colon, rest = text.rpartition(":")
        if colon and name and "/" not in rest:
            return f"{self.path(name, field, must_exist=True)}:{rest}"
        return str(self.path(text, field, must_exist=True))

    def relative(self, path: str | Path) -> str:
        real = Path(path).resolve()
        return str(real.relative_to(self.root)) if _within(real, self.root) else str(path)

    def files(self, suffixes: tuple[str, ...], limit: int = 300) -> list[str]:
        """Workspace files with these suffixes (newest first), for the forms' pickers."""
        found = [path for path in self.root.rglob("*") if path.suffix.lower() in suffixes and path.is_file()
                 and not any(part.startswith(".") for part in path.relative_to(self.root).parts)]
        found.sort(key=lambda path: path.stat().st_mtime, reverse=True)
        return [self.relative(path) for path in found[:limit]]

    def new_folder(self, kind: str) -> Path:
        folder = self.root / kind / time.strftime("%Y%m%d-%H%M%S")
        suffix = 1
        while folder.exists():
            folder = folder.with_name(f"{folder.name.split('_')[0]}_{suffix}")
            suffix += 1
        folder.mkdir(parents=True)
        return folder

    def take_uploads(self, uploaded: list[str], kind: str) -> Path:
        """Copy uploaded files (Gradio's temporary paths) into a new workspace folder, within the limits."""
        if len(uploaded) > MAX_UPLOAD_FILES:
            raise TunelabError(f"upload: {len(uploaded)} files is more than the limit of {MAX_UPLOAD_FILES}")
        for source in uploaded:
            if os.path.getsize(source) > MAX_UPLOAD_BYTES:
                raise TunelabError(f"upload: {Path(source).name} is over {MAX_UPLOAD_BYTES // 2**20} MB")
        folder = self.new_folder(kind)
        for source in uploaded:
            name = Path(source).name
            if name.startswith("."):
                raise TunelabError(f"upload: {name!r} is a hidden file name")
            shutil.copyfile(source, folder / name)
        return folder
