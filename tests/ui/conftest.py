"""Fixtures for the end-to-end browser tests: a JupyterLab server and a headless Chromium.

The server runs from the interpreter running pytest (the project's virtualenv),
in a temporary root folder holding the test notebook, with its own settings,
workspaces and runtime folders so that nothing from the user's Jupyter setup
leaks in. Its log, the browser console and the screenshots go to
``test-output/ui/`` at the repository root.

Chromium is Debian's build (``/usr/bin/chromium``, or ``$PATCHWIDGET_CHROMIUM``):
the tests never download a browser. Without Playwright or Chromium they fail: `make test` installs both.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output" / "ui"
BUNDLE = REPO / "patchwidget" / "static" / "widget.js"
CHROMIUM = Path(os.environ.get("PATCHWIDGET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SERVER_START_TIMEOUT = 120  # seconds; the machine may be busy with other tests
ACTION_TIMEOUT = 60_000  # ms: Playwright's default wait for one step

# JupyterLab user settings: no news or update checks (no toast over the page,
# no requests to the internet, so no console noise from them).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


@dataclass
class LabServer:
    url: str
    root: Path
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="session")
def ui_output() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


def code_notebook(path: Path, *sources: str) -> Path:
    """Write a Python 3 notebook of code cells, one per source, to ``path``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _die_with_parent() -> None:
    """In the child, before exec (Linux): get SIGTERM when pytest dies, even by SIGKILL."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(process: subprocess.Popen) -> None:
    """Stop the server by its process id: SIGTERM (it shuts its kernels down), then SIGKILL.

    The server was started in its own session, so its process group id is its
    pid; kernels run in sessions of their own but exit when their parent does
    (ipykernel's parent poller).
    """
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


def start_jupyter(request, tmp_path_factory, ui_output, app: str) -> LabServer:
    """``jupyter lab`` or ``jupyter notebook`` (7) on 127.0.0.1 with no token, serving a temporary folder.

    Tests put their notebooks into the returned ``root`` before opening them.
    """
    if not BUNDLE.exists():
        pytest.fail(f"{BUNDLE.relative_to(REPO)} is missing: build the front end first (`make js`)")
    base = tmp_path_factory.mktemp(app)
    root, settings, private = base / "root", base / "settings", base / "private"
    for folder in (root, settings, private):
        folder.mkdir()
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port = _free_port()
    log = ui_output / f"{app}.log"
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(private / "runtime"),
        "IPYTHONDIR": str(private / "ipython"),  # no shared history database
        "PYTHONUNBUFFERED": "1",
    }
    app_class = "LabApp" if app == "lab" else "JupyterNotebookApp"
    command = [
        sys.executable,
        "-m",
        "jupyter",
        app,
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root}",
        "--allow-root",
        f"--{app_class}.user_settings_dir={settings}",
        f"--{app_class}.workspaces_dir={private / 'workspaces'}",
    ]
    url = f"http://127.0.0.1:{port}"
    process = serve(request, command, root, env, log, f"{url}/api/status", f"jupyter {app}")
    return LabServer(url=url, root=root, process=process, log=log)


def serve(request, command: list[str], cwd: Path, env: dict, log: Path, health: str, name: str) -> subprocess.Popen:
    """Start a server process (its output to ``log``, stopped when the test's scope ends) and wait until
    ``health`` answers."""
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    request.addfinalizer(lambda: _stop(process))
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while not _answers(health):
        if process.poll() is not None:
            pytest.fail(f"{name} exited with code {process.returncode}; see {log}")
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not answer within {SERVER_START_TIMEOUT} s; see {log}")
        time.sleep(0.5)
    return process


@pytest.fixture(scope="module")
def lab_server(request, tmp_path_factory, ui_output) -> LabServer:
    """JupyterLab on 127.0.0.1 with no token, serving a temporary folder."""
    return start_jupyter(request, tmp_path_factory, ui_output, "lab")


# Console errors that are not the widget's but that the page is known to log,
# as (regex on the message text, regex on the source URL, reason). Empty: with
# the news and update checks off (LAB_SETTINGS), JupyterLab 4.6 on this page
# logs no errors at all, so any console error or uncaught exception fails the test.
IGNORED_CONSOLE_ERRORS: list[tuple[str, str, str]] = []


def _console_ignored(text: str, url: str) -> bool:
    return any(re.search(t, text) and re.search(u, url) for t, u, _ in IGNORED_CONSOLE_ERRORS)


@pytest.fixture
def page(request, browser, ui_output):
    """A fresh page; every console message and page error is logged to a file, errors kept for the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(ACTION_TIMEOUT)
    page = context.new_page()
    page.errors = []  # unexpected errors, as strings, for the test to assert on
    log = open(ui_output / f"console-{request.node.name}.log", "w")

    def on_console(msg):
        url = msg.location.get("url", "") if msg.location else ""
        log.write(f"[{msg.type}] {msg.text}  ({url})\n")
        if msg.type == "error" and not _console_ignored(msg.text, url):
            page.errors.append(f"console.error: {msg.text} ({url})")

    def on_pageerror(error):
        log.write(f"[pageerror] {error}\n{getattr(error, 'stack', '')}\n")
        page.errors.append(f"uncaught: {error}")

    page.on("console", on_console)
    page.on("pageerror", on_pageerror)
    try:
        yield page
    finally:
        try:
            context.close()
        except Exception:  # the browser is already gone (e.g. Ctrl+C reached it first)
            pass
        log.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright's sync API."""
    from playwright import sync_api  # a dev dependency: its absence is a failure, not a skip

    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium (or set PATCHWIDGET_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            try:
                browser.close()
            except Exception:  # already gone
                pass
