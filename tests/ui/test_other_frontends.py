"""End to end in the other front ends users have: Jupyter Notebook 7, marimo (``run`` and
``edit``), and the offline page ``save_html`` writes, each in a real headless Chromium.

In each: the grid renders, a click drills down, the breadcrumb or Escape goes back,
and the widget logs no console errors. VS Code and Colab cannot run here (README).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, _free_port, code_notebook, serve, start_jupyter

pytestmark = pytest.mark.e2e

CLEAN = "When Mary and John went to the store , John gave a drink to"
CORRUPT = "When Mary and John went to the store , Mary gave a drink to"
N_TOKENS, N_LAYERS, N_HEADS = 14, 4, 4
TIMEOUT = 120_000  # ms: a kernel start and the first cell (imports torch) on a busy 2-core machine
WIDGET = ".patchwidget"
TOP_GRID = f'{WIDGET} .pw-grid[role=grid][aria-label^="resid_pre"]'
HEADS_GRID = f'{WIDGET} .pw-grid[role=grid][aria-label^="Heads of layer 2"]'
CRUMBS = f"{WIDGET} .pw-breadcrumb button.pw-crumb[data-level]"


def drill_and_back(page, back: str) -> None:
    """The grid is there; layer 2 at the second "John" opens that layer's heads; ``back`` returns."""
    from playwright.sync_api import expect

    top = page.locator(TOP_GRID)
    expect(top.locator(".pw-cell[role=gridcell]")).to_have_count(N_LAYERS * N_TOKENS, timeout=TIMEOUT)
    expect(page.locator(f"{WIDGET} .pw-progress")).to_have_count(0, timeout=TIMEOUT)
    top.locator('.pw-cell[data-row="2"][data-col="9"]').click()
    heads = page.locator(HEADS_GRID)
    expect(heads.locator(".pw-cell[role=gridcell]")).to_have_count(N_HEADS * N_TOKENS, timeout=TIMEOUT)
    expect(page.locator(CRUMBS)).to_have_text(["resid_pre", "L2 heads"])
    if back == "escape":
        heads.locator('.pw-cell[data-row="1"][data-col="9"]').focus()
        page.keyboard.press("Escape")
    else:
        page.locator(f'{CRUMBS}[data-level="0"]').click()
    expect(heads).to_have_count(0, timeout=TIMEOUT)
    expect(page.locator(TOP_GRID)).to_have_count(1)
    expect(page.locator(CRUMBS)).to_have_text(["resid_pre"])
    expect(page.locator(f"{WIDGET} .pw-error")).to_have_count(0)


def widget_errors(page, known: tuple[str, ...] = ()) -> list[str]:
    """The page's console errors and uncaught exceptions, less those known by their exact text."""
    return [e for e in page.errors if not any(k in e for k in known)]


# --- Jupyter Notebook 7 ---------------------------------------------------------------------------

# Notebook 7.6.5 itself throws this on any notebook, widget or not (seen on a blank one).
NOTEBOOK7_OWN_ERROR = "Cannot read properties of undefined (reading 'schema')"


@pytest.fixture(scope="module")
def notebook_server(request, tmp_path_factory, ui_output):
    return start_jupyter(request, tmp_path_factory, ui_output, "notebook")


def test_notebook7_drill_down_and_back(notebook_server, page, ui_output):
    from playwright.sync_api import expect

    code_notebook(
        notebook_server.root / "nb7.ipynb",
        f"import patchwidget as pw\nw = pw.explore(pw.load_model(), {CLEAN!r}, {CORRUPT!r}, answer='Mary', "
        "wrong='John')\nw",
    )
    try:
        page.goto(f"{notebook_server.url}/notebooks/nb7.ipynb", wait_until="domcontentloaded")
        cell = page.locator(".jp-Notebook .jp-CodeCell").first
        expect(cell).to_have_count(1, timeout=TIMEOUT)
        _wait_for_idle_kernel(notebook_server.url)
        cell.locator(".jp-InputArea-editor .cm-content").click()
        page.keyboard.press("Control+Enter")
        expect(page.locator(f"{WIDGET} [role=grid]")).to_have_count(1, timeout=TIMEOUT)
        drill_and_back(page, "escape")
        drill_and_back(page, "breadcrumb")
    except BaseException:
        page.screenshot(path=str(ui_output / "failure-notebook7.png"), full_page=True, timeout=10_000)
        raise
    errors = widget_errors(page, (NOTEBOOK7_OWN_ERROR,))
    assert not errors, "JavaScript errors in the page:\n" + "\n".join(errors)


def _wait_for_idle_kernel(url: str) -> None:
    import json
    import urllib.request

    deadline = time.monotonic() + TIMEOUT / 1000
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/api/kernels", timeout=5) as response:
            kernels = json.loads(response.read())
        if kernels and all(k["execution_state"] == "idle" for k in kernels):
            return
        time.sleep(0.5)
    pytest.fail("the notebook's kernel did not become idle")


# --- marimo -------------------------------------------------------------------------------------------


@pytest.fixture(params=["run", "edit"])
def marimo_app(request, ui_output):
    port = _free_port()
    log = ui_output / f"marimo-{request.param}.log"
    command = [sys.executable, "-m", "marimo", request.param, "--headless", "--no-token", "--port", str(port)]
    command.append(str(REPO / "examples" / "quickstart_marimo.py"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    url = f"http://127.0.0.1:{port}"
    serve(request, command, REPO, env, log, url, f"marimo {request.param}")
    return request.param, url


def test_marimo_drill_down_and_back(marimo_app, page, ui_output):
    from playwright.sync_api import expect

    mode, url = marimo_app
    try:
        page.goto(url, wait_until="domcontentloaded")
        if mode == "edit":  # edit mode opens with stale cells: run them all, once its kernel listens
            run_all = page.locator("button[data-testid=run-button]").last  # the run-all button, after the cells' own
            for _ in range(6):
                run_all.click(timeout=TIMEOUT)
                try:
                    expect(page.locator(TOP_GRID)).to_have_count(1, timeout=20_000)
                    break
                except AssertionError:
                    continue  # the click came before the kernel was connected
        expect(page.locator(TOP_GRID)).to_have_count(1, timeout=TIMEOUT)
        drill_and_back(page, "breadcrumb")
        drill_and_back(page, "escape")
    except BaseException:
        page.screenshot(path=str(ui_output / f"failure-marimo-{mode}.png"), full_page=True, timeout=10_000)
        raise
    errors = [e for e in widget_errors(page) if "patchwidget" in e or "widget" in e.lower()]
    assert not errors, "JavaScript errors from the widget:\n" + "\n".join(errors)


# --- the offline page -------------------------------------------------------------------------------

# Words that have broken offline pages: a comment and script opener, the template's placeholders.
HOSTILE = ["<!--<script>", "__BUNDLE__", "__DATA__", "</script>"]


def hostile_model():
    """A tiny random GPT-2 whose word-level vocabulary holds the hostile words, so they are real tokens."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    import patchwidget as pw

    words = ["[UNK]", *sorted(set(CLEAN.split()) | set(CORRUPT.split()) | set(HOSTILE))]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=len(words), attn_implementation="eager")
    return pw.load_model(GPT2LMHeadModel(config).eval(), tokenizer=tokenizer)


def offline_page(widget, path, row: int, col: int):
    """The widget's offline page with one click's level computed in the notebook (as a click would), then closed."""
    level = widget.session.drill(widget.explorer.levels[0], "resid_pre", row, col)
    widget.session.cache[(level, widget.explorer.settings)] = widget.session.compute(level, widget.explorer.settings)
    saved = widget.save_html(path)
    widget.close()
    return saved


def test_offline_page_replays_its_drill_down_with_hostile_tokens(page, tmp_path, ui_output):
    from playwright.sync_api import expect

    import patchwidget as pw

    clean = CLEAN.replace("went to", f"{HOSTILE[0]} {HOSTILE[1]}").replace("a drink", f"{HOSTILE[2]} {HOSTILE[3]}")
    corrupt = CORRUPT.replace("went to", f"{HOSTILE[0]} {HOSTILE[1]}").replace("a drink", f"{HOSTILE[2]} {HOSTILE[3]}")
    widget = pw.explore(hostile_model(), clean, corrupt, answer="Mary", wrong="John", preview=False)
    tokens = widget.session.prompts.tokens
    assert set(HOSTILE) <= set(tokens), tokens
    path = offline_page(widget, tmp_path / "offline.html", 2, 9)
    try:
        page.goto(path.as_uri(), wait_until="load")
        top = page.locator(TOP_GRID)
        expect(top.locator(".pw-cell[role=gridcell]")).to_have_count(N_LAYERS * N_TOKENS, timeout=TIMEOUT)
        headers = top.locator("th[role=columnheader]")
        expect(headers).to_have_text([f"{t} ({i})" for i, t in enumerate(tokens)])  # shown as text, not markup
        prompt = page.locator(f"{WIDGET} .pw-context-prompt").first.locator(".pw-token")
        expect(prompt).to_have_text(tokens)  # the saved page says what was patched, hostile words as text
        drill_and_back(page, "breadcrumb")
        # Never computed (issue 39, item 8): not offered as a click, and the tooltip says why; no red error.
        never = top.locator('.pw-cell[data-row="1"][data-col="0"]')
        expect(never).not_to_have_class(re.compile(r"pw-clickable"))
        never.hover()
        expect(page.locator(f"{WIDGET} .pw-tooltip")).to_contain_text("not opened in the notebook")
        never.click()
        expect(page.locator(f"{WIDGET} .pw-error")).to_have_count(0)
        expect(page.locator(CRUMBS)).to_have_count(1)
        # Settings cannot change in a saved page: the menus and site tabs are disabled, saying why.
        expect(page.locator(f"{WIDGET} .pw-direction")).to_be_disabled()
        assert "change this there" in page.locator(f"{WIDGET} .pw-direction").get_attribute("title")
        expect(page.locator(f"{WIDGET} .pw-site-tab").first).to_be_disabled()
        assert page.title().startswith("patchwidget: resid_pre")  # the level the page opens on
        # Figures to take away (issue 39, item 6): the panel as SVG (hostile tokens as text) and as PNG.
        with page.expect_download() as svg:
            page.locator(f"{WIDGET} .pw-download-svg").first.click()
        text = Path(svg.value.path()).read_text(encoding="utf-8")
        assert text.startswith("<svg") and text.count("<rect") == 1 + N_LAYERS * N_TOKENS
        assert "&lt;!--&lt;script&gt;" in text and "<!--<script>" not in text
        with page.expect_download() as png:
            page.locator(f"{WIDGET} .pw-download-png").first.click()
        assert Path(png.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except BaseException:
        page.screenshot(path=str(ui_output / "failure-offline.png"), full_page=True, timeout=10_000)
        raise
    assert not widget_errors(page), "JavaScript errors in the page:\n" + "\n".join(page.errors)
    assert page.evaluate("document.querySelectorAll('script').length") == 3


def test_offline_page_opens_a_span_into_its_positions(page, tmp_path, ui_output, demo):
    """Template prompts of different lengths: the page's grid is by span, and a click on a span cell
    opens its positions (computed in the notebook, replayed by the page in chromium)."""
    from playwright.sync_api import expect

    import patchwidget as pw

    from ..test_spans import UNEQUAL, args

    widget = pw.explore(demo, **args(UNEQUAL), preview=False)
    columns = widget.session.labels
    place = columns.index("PLACE")
    path = offline_page(widget, tmp_path / "spans.html", 1, place)
    try:
        page.goto(path.as_uri(), wait_until="load")
        top = page.locator(TOP_GRID)
        expect(top.locator(".pw-cell[role=gridcell]")).to_have_count(N_LAYERS * len(columns), timeout=TIMEOUT)
        expect(top.locator("th[role=columnheader]")).to_have_text(columns)
        top.locator(f'.pw-cell[data-row="1"][data-col="{place}"]').click()
        expect(page.locator(CRUMBS)).to_have_text(["resid_pre", "PLACE by position"], timeout=TIMEOUT)
        expect(page.locator(f"{WIDGET} th[role=columnheader]")).to_have_text(["PLACE[0]"])
    except BaseException:
        page.screenshot(path=str(ui_output / "failure-spans.png"), full_page=True, timeout=10_000)
        raise
    assert not widget_errors(page), "JavaScript errors in the page:\n" + "\n".join(page.errors)


def test_offline_page_replays_the_circuit_view(page, tmp_path, ui_output, demo):
    """A circuit found in the notebook is in the saved page: Find circuit on the first grid opens the circuit
    view, and a click on a head node opens its breakdown (both computed in the notebook)."""
    from playwright.sync_api import expect

    import patchwidget as pw
    from patchwidget.ui.levels import Level

    widget = pw.explore(demo, CLEAN, CORRUPT, answer="Mary", wrong="John", preview=False)
    found = Level("circuit", target=0.9)
    head = widget.session.drill(found, "circuit", 0, 1)  # L3H1: the last layer on top
    bottleneck = Level("search", target=0.9)
    for level in (found, head, bottleneck):
        widget.session.cache[(level, widget.explorer.settings)] = widget.session.compute(
            level, widget.explorer.settings
        )
    path = widget.save_html(tmp_path / "circuit.html")
    widget.close()
    try:
        page.goto(path.as_uri(), wait_until="load")
        expect(page.locator(TOP_GRID)).to_have_count(1, timeout=TIMEOUT)
        page.locator(f"{WIDGET} .pw-target").fill("0.8")
        page.locator(f"{WIDGET} .pw-circuit-button").click()  # never run at 0.8: the page says so
        expect(page.locator(f"{WIDGET} .pw-error")).to_contain_text("No search with this target")
        page.locator(f"{WIDGET} .pw-target").fill("0.9")
        page.locator(f"{WIDGET} .pw-circuit-button").click()
        circuit = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Circuit of 8 nodes"]')
        expect(circuit).to_have_count(1, timeout=TIMEOUT)
        expect(page.locator(CRUMBS)).to_have_text(["resid_pre", "find circuit (target 0.9)"])
        circuit.locator('.pw-cell[data-row="0"][data-col="1"]').click()
        expect(page.locator(CRUMBS)).to_have_text(["resid_pre", "find circuit (target 0.9)", "L3 H1"], timeout=TIMEOUT)
        page.locator(f"{CRUMBS}[data-level='1']").click()
        expect(circuit).to_have_count(1, timeout=TIMEOUT)
        # The bottleneck view (issue 39, item 7): its trace a table of numbers, its curve a line with the target.
        page.locator(f"{CRUMBS}[data-level='0']").click()
        page.locator(f"{WIDGET} .pw-find-button").click()
        expect(page.locator(f"{WIDGET} table.pw-table tbody tr").first).to_be_visible(timeout=TIMEOUT)
        expect(page.locator(f"{WIDGET} table.pw-table thead th")).to_have_text(
            ["level", "candidates", "kept", "restore"]
        )
        expect(page.locator(f"{WIDGET} svg.pw-curve .pw-curve-target")).to_have_count(1)
        expect(page.locator(f"{WIDGET} .pw-panel-curve .pw-panel-note")).to_contain_text("not MIB's faithfulness")
    except BaseException:
        page.screenshot(path=str(ui_output / "failure-circuit.png"), full_page=True, timeout=10_000)
        raise
    assert not widget_errors(page), "JavaScript errors in the page:\n" + "\n".join(page.errors)
