"""The web server: Gradio mounted in a FastAPI app that refuses cross-origin requests, bound to
127.0.0.1 unless told otherwise, and a clean stop (running training checkpointed) on SIGTERM/Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import urllib.parse

import gradio as gr
import uvicorn
from fastapi import FastAPI

from tunelab.ui.app import build_app
from tunelab.ui.jobs import JobQueue
from tunelab.ui.workspace import MAX_UPLOAD_BYTES, Workspace


# Gradio's default theme has the browser fetch its fonts from a web font service; these are the machine's own.
LOCAL_THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                font_mono=["ui-monospace", "Consolas", "monospace"])


class SameOriginOnly:
    """ASGI middleware: a request that carries an Origin other than the server's own is refused (403).

    Browsers send Origin on cross-site fetches, form posts and websockets; without it (curl, the
    page's own navigation) the request is same-origin by construction. Served on 127.0.0.1, the Host
    must be a loopback name too, so a web site whose name is made to resolve to 127.0.0.1 (DNS
    rebinding) is not "same origin" either."""

    def __init__(self, app, allowed_hosts: set[str] | None):
        self.app = app
        self.allowed_hosts = allowed_hosts  # None: any (--listen, behind a password)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            host = headers.get(b"host", b"").decode("latin-1")
            foreign_origin = origin is not None and urllib.parse.urlsplit(origin.decode("latin-1")).netloc != host
            if foreign_origin or (self.allowed_hosts is not None and host not in self.allowed_hosts):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": b"cross-origin request refused\n"})
                return
        await self.app(scope, receive, send)


class Server(uvicorn.Server):
    """uvicorn's server, except that a signal only ends serving: uvicorn's own handling raises the
    signal again on the way out, which would end the process before a running training checkpoints."""

    @contextlib.contextmanager
    def capture_signals(self):
        previous = {signum: signal.signal(signum, self.handle_exit) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def make_server(workspace: Workspace, host: str, port: int, auth: tuple[str, str] | None) -> tuple[Server, JobQueue]:
    jobs = JobQueue()
    page = build_app(workspace, jobs)
    app = FastAPI()
    app = gr.mount_gradio_app(app, page, path="", auth=auth, allowed_paths=[str(workspace.root)],
                              blocked_paths=[str(workspace.root / ".tunelab-ui.lock")], max_file_size=MAX_UPLOAD_BYTES,
                              server_name=host, server_port=port, show_error=True, mcp_server=False, theme=LOCAL_THEME)
    loopback = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}
    app = SameOriginOnly(app, None if host == "0.0.0.0" else loopback)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
    return Server(config), jobs


def serve(workspace: Workspace, host: str, port: int, auth: tuple[str, str] | None) -> None:
    server, jobs = make_server(workspace, host, port, auth)
    print(f"tunelab ui: http://{host}:{port}/  (workspace {workspace.root}; Ctrl-C stops, checkpointing a running training)",
          flush=True)
    try:
        server.run()  # returns on SIGTERM / Ctrl-C
    finally:
        print("tunelab ui: stopping; a running training stops at its next step with a checkpoint", flush=True)
        jobs.shutdown()
