"""`tunelab ui` end to end: a real headless Chromium (Debian's, driven by Playwright) against a running server.

One server for the module (it starts in seconds but not in none); the last test stops it with SIGTERM
mid-run. Screenshots of each tab go to the test's folder, or to TUNELAB_UI_SCREENSHOTS (docs/images for
the README) when that is set.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from helpers import write_subject_images

import tunelab
from tunelab.generation.png_info import read_options
from tunelab.ui.workspace import MAX_UPLOAD_BYTES

SLOW = 120_000  # ms: a page wait that covers a tiny-sd training on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ui(workspace: Path, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab.cli", "ui", "--workspace", str(workspace), "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until_serving(url: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"tunelab ui exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    raise AssertionError(f"tunelab ui did not answer at {url} within {seconds} s")


def request(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers or {}), timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    write_subject_images(root / "photos")
    outside = tmp_path_factory.mktemp("outside")
    write_subject_images(outside / "photos")
    (root / "escape").symlink_to(outside)  # a symlink that leaves the workspace
    return root


@pytest.fixture(scope="module")
def server(workspace):
    port = free_port()
    process = start_ui(workspace, port)
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(url, process)
    yield url, port, process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (apt-get install chromium; `make setup` installs it as root)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("TUNELAB_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(url)
    page.wait_for_selector("#train-start")
    return page


def shoot(page, path: Path) -> None:
    """A screenshot of the page as it is, stored small (a 64-colour palette) for the README."""
    page.screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def choose(page, elem_id: str, value: str) -> None:
    """Type a value into a dropdown that takes custom values (a file picker) and confirm it."""
    box = field(page, elem_id)
    box.click()
    box.fill(value)
    box.press("Enter")


def test_train_generate_and_a_lora_tool_through_the_page(server, browser, workspace, screenshots):
    url, _, _ = server
    page = open_page(browser, url)
    field(page, "train-model").fill("tiny-sd")
    # the images come in through the page: uploaded into a new workspace folder, which fills --images
    page.locator("#train-upload input[type=file]").set_input_files(sorted(str(path) for path in (workspace / "photos").iterdir()))
    expect(page.locator("#train-message")).to_contain_text("uploaded 4 file(s) to uploads/", timeout=30_000)
    expect(field(page, "train-images")).to_have_value(re.compile(r"^uploads/\d{8}-\d{6}"))
    field(page, "train-out").fill("runs/toy")
    field(page, "train-prompt").fill("a photo of sks toy")
    field(page, "train-steps").fill("0")
    page.click("#train-start")  # a refused option: the library's one line, before anything is queued
    expect(page.locator("#train-message")).to_contain_text("Refused: --steps must be at least 1, got 0", timeout=30_000)
    expect(page.locator("#train-steps")).to_contain_text("--steps must be at least 1, got 0")  # next to the field too
    field(page, "train-steps").fill("3")
    field(page, "train-sample_every").fill("3")
    page.click("#train-start")
    status = page.locator("#train-status")
    expect(status).to_contain_text("step", timeout=SLOW)  # progress while it runs (or once done)
    expect(page.locator("#train-steps")).not_to_contain_text("must be at least")  # the field's own help again
    expect(status).to_contain_text("finished: runs/toy/lora.safetensors", timeout=SLOW)
    expect(status).to_contain_text("step 3/3")
    assert (workspace / "runs/toy/lora.safetensors").is_file()
    assert (workspace / "runs/toy/config.yaml").is_file()
    expect(page.locator("#train-samples img").first).to_be_visible(timeout=30_000)  # the sample written at step 3
    expect(page.locator("#train-resolved")).to_contain_text(re.compile(r"config\s*\.yaml"))  # the resolved config to download
    page.locator("#train-start").evaluate("button => button.scrollIntoView()")  # the run, its curve and sample
    shoot(page, screenshots / "ui-train.png")

    page.get_by_role("tab", name="Generate").click()
    field(page, "generate-model").fill("tiny-sd")
    field(page, "generate-prompt").fill("a photo of sks toy")
    field(page, "generate-steps").fill("2")
    choose(page, "generate-lora", "runs/toy/lora.safetensors:0.8")
    page.click("#generate-run")
    expect(page.locator("#generate-gallery img").first).to_be_visible(timeout=SLOW)
    (written,) = workspace.glob("outputs/*/*.png")
    recorded = read_options(written)
    assert recorded["lora"] == [f"{(workspace / 'runs/toy/lora.safetensors').resolve()}:0.8"]
    page.locator("#generate-gallery img").first.click()
    expect(field(page, "generate-parameters")).to_have_value(re.compile("a photo of sks toy"), timeout=30_000)
    shoot(page, screenshots / "ui-generate.png")
    field(page, "generate-prompt").fill("something else")
    field(page, "generate-steps").fill("7")
    page.click("#generate-send")  # the selected image's stored options back into the form (what --from-png reads)
    expect(field(page, "generate-prompt")).to_have_value("a photo of sks toy", timeout=30_000)
    expect(field(page, "generate-steps")).to_have_value("2")
    expect(page.locator("#generate-lora")).to_contain_text("runs/toy/lora.safetensors:0.8")

    page.get_by_role("tab", name="LoRA tools").click()
    page.get_by_role("tab", name="info", exact=True).click()
    choose(page, "lora-info-file", "runs/toy/lora.safetensors")
    page.click("#lora-info-run")
    result = page.locator("#lora-info-result")
    expect(result).to_contain_text("done", timeout=SLOW)
    expect(result).to_contain_text("rank")  # the tool's table
    shoot(page, screenshots / "ui-lora-tools.png")

    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare-start")).to_be_visible()
    shoot(page, screenshots / "ui-compare.png")
    page.close()


BAD_PATHS = ["../photos", "/etc", "%2e%2e/photos", "escape/photos"]
# (tab, sub-tab, field, the button that submits, where the answer shows)
FORMS = [
    ("Train", None, "train-images", "#train-start", "#train-message"),
    ("Train", None, "train-out", "#train-start", "#train-message"),
    ("Generate", None, "generate-model", "#generate-run", "#generate-message"),
    ("Generate", None, "generate-lora", "#generate-run", "#generate-message"),
    ("LoRA tools", "info", "lora-info-file", "#lora-info-run", "#lora-info-result"),
    ("LoRA tools", "convert", "lora-convert-out", "#lora-convert-run", "#lora-convert-result"),
    ("Compare", None, "compare-out", "#compare-start", "#compare-message"),
]
VALID = {"train-images": "photos", "generate-model": "tiny-sd"}


def test_every_form_refuses_paths_outside_the_workspace(server, browser, workspace):
    url, _, _ = server
    page = open_page(browser, url)
    # valid values everywhere else, so the path under test is what is refused
    field(page, "train-model").fill("tiny-sd")
    field(page, "train-images").fill("photos")
    field(page, "train-out").fill("runs/refused")
    field(page, "train-prompt").fill("a photo")
    for tab, sub_tab, elem_id, button, answer in FORMS:
        page.get_by_role("tab", name=tab).click()
        if sub_tab:
            page.get_by_role("tab", name=sub_tab, exact=True).click()
        # every form gets '..'; the other kinds take turns (tests/ui/test_workspace.py has each on every field kind)
        for bad in (BAD_PATHS[0], BAD_PATHS[1 + FORMS.index((tab, sub_tab, elem_id, button, answer)) % 3]):
            if elem_id == "generate-lora":
                box = field(page, elem_id)
                box.click()
                box.press("Backspace")  # drop the previous value (a multiselect keeps its tokens)
                choose(page, elem_id, bad)
            elif elem_id == "lora-info-file":
                choose(page, elem_id, bad)
            else:
                field(page, elem_id).fill(bad)
            page.click(button)
            expect(page.locator(answer)).to_contain_text(f"'{bad}'", timeout=30_000)  # this value's refusal
            expect(page.locator(answer)).to_contain_text("Refused")
            expect(page.locator(answer)).to_contain_text(re.compile("workspace|encoded"))
        if elem_id in VALID:  # the next form's refusal must be its own
            field(page, elem_id).fill(VALID[elem_id])
    page.close()
    assert not (workspace.parent / "photos").exists() and not list(workspace.glob("runs/refused*"))
    # Gradio's own file route serves the workspace only
    assert request(url + "gradio_api/file=/etc/passwd") in (403, 404)
    assert request(url + "gradio_api/file=" + str(workspace / "../../etc/passwd")) in (403, 404)
    assert request(url + "gradio_api/file=" + str(workspace / "escape/photos/subject_0.png")) in (403, 404)
    assert request(url + "gradio_api/file=" + str(workspace / "photos/subject_0.png")) == 200


def test_the_server_binds_to_loopback_only(server):
    _, port, _ = server
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.rsplit(":", 1)
        if int(local_port, 16) == port and state == "0A":  # LISTEN
            listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, nothing else


def test_listen_without_auth_is_refused_with_exit_2(tmp_path):
    for extra in (["--listen"], ["--listen", "--auth", "nopassword"]):
        process = start_ui(tmp_path / "ws", free_port(), *extra)
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 2, output
        assert "--auth" in output and "Traceback" not in output


def test_foreign_origin_and_oversized_uploads_are_refused(server):
    url, port, _ = server
    assert request(url, headers={"Origin": "http://evil.example"}) == 403
    assert request(url + "gradio_api/upload", "POST", headers={"Origin": "http://evil.example"}, data=b"x") == 403
    assert request(url + "config", headers={"Origin": f"http://127.0.0.1:{port}"}) == 200
    assert request(url + "config", headers={"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}) == 200
    # a foreign name resolved to 127.0.0.1 (DNS rebinding): same "origin" as its Host, still refused
    assert request(url + "config", headers={"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}) == 403
    boundary = "tunelabboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + b"\0" * (MAX_UPLOAD_BYTES + 1024) + f"\r\n--{boundary}--\r\n".encode()
    assert request(url + "gradio_api/upload", "POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                   data=body) == 413


def test_a_run_outlives_its_page_and_a_server_stop_leaves_a_checkpoint(server, browser, workspace):
    """Last in the module: it stops the server."""
    url, _, process = server
    page = open_page(browser, url)
    field(page, "train-model").fill("tiny-sd")
    field(page, "train-images").fill("photos")
    field(page, "train-out").fill("runs/long")
    field(page, "train-prompt").fill("a photo of sks toy")
    field(page, "train-steps").fill("100000")
    page.click("#train-start")
    status = page.locator("#train-status")
    expect(status).to_contain_text(re.compile(r"run (\d+) \(.*runs/long\): running, step [1-9]"), timeout=SLOW)
    expect(status).to_contain_text(re.compile(r"\d steps/s, \d+ s left"))
    run_id = re.search(r"run (\d+)", status.inner_text()).group(1)
    page.close()

    reopened = open_page(browser, url)
    expect(reopened.locator("#train-status")).to_contain_text(
        re.compile(rf"run {run_id} \(.*runs/long\): running, step \d+/100000"), timeout=30_000)
    reopened.close()

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    checkpoints = sorted((workspace / "runs/long/checkpoints").glob("step-*"))
    assert checkpoints, output
    stopped_at = int(checkpoints[-1].name.split("-")[1])

    resumed = []

    def first_step_only(progress):
        resumed.append(progress.step)
        progress.request_stop()

    result = tunelab.train("lora", model="tiny-sd", images=(workspace / "photos").resolve(),
                           out=(workspace / "runs/long").resolve(),
                           prompt="a photo of sks toy", steps=100000, resume="latest", on_progress=first_step_only)
    assert resumed == [stopped_at + 1] and result.stopped
