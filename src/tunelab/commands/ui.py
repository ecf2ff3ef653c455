"""`tunelab ui`: the local web UI (docs/ui.md)."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from tunelab.errors import TunelabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--workspace", default="tunelab-workspace",
                        help="folder the UI reads and writes; every path in the forms is inside it (default ./tunelab-workspace)")
    parser.add_argument("--listen", action="store_true",
                        help="serve on all network interfaces instead of 127.0.0.1 (needs --auth or --auth-file)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="ask for this user name and password")
    parser.add_argument("--auth-file", metavar="FILE", help="file whose first line is USER:PASSWORD")
    parser.add_argument("--model-dir", action="append", default=[], metavar="DIR",
                        help="folder of models outside the workspace the forms may name by absolute path (read only; repeatable)")


def credentials(args: argparse.Namespace) -> tuple[str, str] | None:
    text = args.auth
    if args.auth_file:
        path = Path(args.auth_file)
        if not path.is_file():
            raise TunelabError(f"--auth-file: file not found: {path}")
        lines = path.read_text().splitlines()
        text = lines[0].strip() if lines else ""
    if text is None:
        return None
    user, colon, password = text.partition(":")
    if not (colon and user and password):
        raise TunelabError("--auth must be USER:PASSWORD, both non-empty")
    return user, password


def run(args: argparse.Namespace) -> None:
    auth = credentials(args)
    if args.listen and auth is None:
        raise TunelabError("--listen serves every network interface: give --auth USER:PASSWORD or --auth-file FILE too")
    if not 0 < args.port < 65536:
        raise TunelabError(f"--port must be between 1 and 65535, got {args.port}")
    if importlib.util.find_spec("gradio") is None:
        raise TunelabError("tunelab ui needs gradio: pip install gradio==6.31.0 (`make setup` installs it)")
    root = Path(args.workspace).expanduser().resolve()
    # Gradio's uploads and copies, class images and other caches stay in the workspace too (set before
    # gradio is imported: it makes its folder on import)
    os.environ["GRADIO_TEMP_DIR"] = str(root / ".gradio")
    os.environ.setdefault("TUNELAB_CACHE_DIR", str(root / ".cache"))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # a local tool: nothing is sent anywhere
    from tunelab.ui.server import serve  # deferred: gradio and torch load only once the arguments are accepted
    from tunelab.ui.workspace import Workspace  # deferred: as above (it reads the model presets)

    workspace = Workspace(root, args.model_dir)
    workspace.lock()
    serve(workspace, "0.0.0.0" if args.listen else "127.0.0.1", args.port, auth)
