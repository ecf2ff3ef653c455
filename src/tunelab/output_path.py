"""Where a command may write: checked before any work, so a bad --out is one line, not a crash at the end.

Train, compare and generate share these rules: never the file-system root, never a path whose folder
part is an existing file, and a folder output never an existing file (nor a file output a folder).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError


def check_output_path(path: str | Path, *, folder: bool, flag: str = "--out") -> Path:
    """`path` as a place to write a folder (`folder=True`) or a file; returns it made absolute."""
    if str(path).strip() == "":
        raise TunelabError(f"{flag} is empty")
    absolute = Path(path).expanduser().absolute()
    if absolute == Path(absolute.anchor):
        raise TunelabError(f"{flag} {path} is the file-system root; give a folder of its own")
    for ancestor in absolute.parents:
        if ancestor.exists() and not ancestor.is_dir():
            raise TunelabError(f"{flag} {path}: {ancestor} is a file, not a folder")
    if folder and absolute.exists() and not absolute.is_dir():
        raise TunelabError(f"{flag} {path} is a file; give a folder")
    if not folder and absolute.is_dir():
        raise TunelabError(f"{flag} {path} is a folder; give a .png file name (or several images' folder with --count)")
    return absolute
