"""What stock A1111's safe loader (modules/safe.py) accepts, written from its published rules.

A torch zip archive passes when every entry is `<folder>/data.pkl`, `<folder>/data/<N>` or
`<folder>/version` (the rule of its releases; later code also allows `byteorder` and
`.data/serialization_id`, so a file passing this stricter rule passes both), there is one
data.pkl, and the pickle names only the globals its restricted unpickler allows, and persistent
ids that are storages. The pickle is read as opcodes (pickletools), never unpickled.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path

ALLOWED_ENTRY = re.compile(r"^[^/]+/(data\.pkl|data/\d+|version)$")
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    *(("torch", name) for name in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                                   "ByteStorage", "float32", "BFloat16Storage")),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"), ("__builtin__", "set"),
}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def a1111_refusals(path: Path) -> list[str]:
    """Why A1111 would refuse the file; empty when it would load it."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        refusals = [f"zip entry {name} is not allowed" for name in names if not ALLOWED_ENTRY.match(name)]
        pickles = [name for name in names if re.match(r"^[^/]+/data\.pkl$", name)]
        if len(pickles) != 1:
            return [*refusals, f"{len(pickles)} data.pkl entries (exactly one is allowed)"]
        return refusals + _pickle_refusals(archive.read(pickles[0]))


def _pickle_refusals(data: bytes) -> list[str]:
    refusals = []
    since_mark: list[object] = []  # the values pushed since the last MARK (strings resolved through the memo)
    memo: dict[int, object] = {}
    last: object = None
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name == "MARK":
            since_mark = []
            continue
        if opcode.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[len(memo) if opcode.name == "MEMOIZE" else int(argument)] = last
            continue
        last = memo.get(argument) if opcode.name in ("BINGET", "LONG_BINGET", "GET") else argument if opcode.name in _STRING_OPS else opcode.name
        since_mark.append(last)
        if opcode.name == "GLOBAL":
            module, name = argument.split(" ", 1)
            if (module, name) not in ALLOWED_GLOBALS:
                refusals.append(f"global {module}.{name} is forbidden")
        elif opcode.name in ("STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4", "PERSID"):
            refusals.append(f"{opcode.name} names an object this check does not allow")
        elif opcode.name == "BINPERSID" and not (since_mark and since_mark[0] == "storage"):
            # a persistent id is a tuple opened by MARK whose first item must be the string 'storage'
            refusals.append("a persistent id that is not a storage")
    return refusals
