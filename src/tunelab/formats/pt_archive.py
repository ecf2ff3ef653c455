"""`.pt` archives that stock A1111 loads.

A1111's safe loader opens a torch zip only when every entry is `<folder>/data.pkl`,
`<folder>/data/<N>` or `<folder>/version` (newer versions also allow `byteorder` and
`.data/serialization_id`), and refuses the file as "may be malicious" otherwise. torch >= 2.x
always adds `.format_version`, `.storage_alignment`, `byteorder` and `.data/serialization_id`,
and has no switch for most of them, so the archive torch writes is copied entry by entry,
keeping only what torch.load needs: without those records it reads the file as torch 1.x wrote
it (little-endian, storages at 64-byte offsets, which the copy keeps).
"""

from __future__ import annotations

import io
import re
import struct
import sys
import zipfile

import torch

from tunelab.errors import TunelabError

FOLDER = "archive"
_KEPT_ENTRY = re.compile(r"^[^/]+/(data\.pkl|data/\d+|version)$")
_STORAGE_ALIGNMENT = 64  # torch's own: storages start at multiples of it, so mmap loading works
_PADDING_FIELD = b"FB"  # the zip extra-field id torch's writer pads with
_LOCAL_HEADER_SIZE = 30
_PADDING_FIELD_HEADER = 4  # id and length


def torch_archive_bytes(tree: dict) -> bytes:
    """torch.save(tree) with only the zip entries A1111 allows."""
    if sys.byteorder != "little":
        # without a byteorder record, readers take storages as little-endian
        raise TunelabError("writing .pt files is supported on little-endian machines only")
    written = io.BytesIO()
    torch.save(tree, written)
    copy = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(written.getvalue())) as source, zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as target:
        for name in source.namelist():
            kept = _KEPT_ENTRY.match(name)
            if kept is None:
                continue
            entry = zipfile.ZipInfo(f"{FOLDER}/{kept.group(1)}", date_time=(1980, 1, 1, 0, 0, 0))
            entry.extra = _alignment_padding(copy.tell(), len(entry.filename.encode()))
            target.writestr(entry, source.read(name))
    return copy.getvalue()


def _alignment_padding(header_offset: int, name_length: int) -> bytes:
    """An extra field that makes the entry's data start at a multiple of the storage alignment."""
    data_start = header_offset + _LOCAL_HEADER_SIZE + name_length + _PADDING_FIELD_HEADER
    padding = -data_start % _STORAGE_ALIGNMENT
    return _PADDING_FIELD + struct.pack("<H", padding) + b"Z" * padding
