"""End to end: the widget in JupyterLab, driven through a real (headless) Chromium.

Opens a notebook that calls ``patchwidget.explore`` on the bundled demo model
(4 layers, 4 heads) with a 14-token IOI prompt, runs it, then checks the grid,
a drill-down by mouse, the way back by Escape and a drill-down by Enter, both
in the page and, through a probe cell, in the kernel. Screenshots of the
widget go to ``test-output/ui/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from .conftest import code_notebook

pytestmark = pytest.mark.e2e

CLEAN = "When Mary and John went to the store , John gave a drink to"
CORRUPT = "When Mary and John went to the store , Mary gave a drink to"
TOKENS = ["When", "Mary", "and", "John", "went", "to", "the", "store", ",", "John", "gave", "a", "drink", "to"]
N_LAYERS = N_HEADS = 4

KERNEL_TIMEOUT = 120_000  # ms: kernel start and the first cell (imports torch) on a busy 2-core machine
ACTION_TIMEOUT = 60_000  # ms: one drill-down, one probe cell (also the page default)

WIDGET = ".patchwidget"
TOP_GRID = f'{WIDGET} .pw-grid[role=grid][aria-label^="resid_pre"]'
CRUMBS = f"{WIDGET} .pw-breadcrumb button.pw-crumb[data-level]"

PROBE = (
    "print('PROBE', '/'.join(level['kind'] for level in w.path), w.path[-1]['layer'], w.path[-1]['pos'], "
    "w.status['state'], len(w.breadcrumb))"
)


# The workshop's save step (README, "Keep what you found"): the page written from a cell.
SAVE = "p = w.save_html('saved.html'); print('SAVED', p.name, oct(p.stat().st_mode & 0o777))"


def umask_mode() -> str:
    """The mode a new file gets here (the kernel inherits this process's umask), as ``oct`` prints it."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    return oct(0o666 & ~umask)


def choose_drill_down() -> tuple[int, int, list[list[float]]]:
    """The layer whose heads grid shows the most (the largest total |effect|), measured here with the
    widget's default metric, and the token where its largest cell is: where the README's picture is taken.

    Returns (layer, position, that layer's heads-by-token values).
    """
    import numpy as np

    import patchwidget as pw

    heads = pw.patch(
        pw.load_model(), CLEAN, CORRUPT, answer="Mary", wrong="John", site="head_out", metric="logit_diff_norm"
    ).values  # (layer, head, pos): the widget's default view (logit_diff, normalised)
    layer = int(np.abs(heads).sum(axis=(1, 2)).argmax())
    _, pos = np.unravel_index(np.abs(heads[layer]).argmax(), heads[layer].shape)
    return layer, int(pos), heads[layer].tolist()


def write_notebook(folder: Path, name: str = "patchwidget_e2e.ipynb") -> Path:
    # one notebook per test: JupyterLab keeps a document it has opened
    return code_notebook(
        folder / name,
        "import patchwidget as pw\n"
        f"w = pw.explore(pw.load_model(), {CLEAN!r}, {CORRUPT!r}, answer='Mary', wrong='John')\n"
        "w",
        PROBE,
        SAVE,
    )


def wait_kernel_idle(page) -> None:
    """Wait until the notebook's kernel is connected and idle.

    Not ``.jp-Notebook-ExecutionIndicator[data-status='idle']``: JupyterLab
    4.6 initialises that indicator to "idle" before any kernel exists, and a
    cell run then is silently dropped (it stays "[ ]"). The status bar shows
    the session's ``kernelDisplayStatus``, which is "Idle" only with a
    connected, idle kernel.
    """
    from playwright.sync_api import expect

    status = page.locator("#jp-main-statusbar").get_by_text(re.compile(r"^Python 3 \(ipykernel\) \| Idle$"))
    expect(status).to_have_count(1, timeout=KERNEL_TIMEOUT)


def run_cell(page, index: int) -> None:
    """Put the cursor into the cell's editor and run it (Ctrl+Enter: run, stay on the cell)."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(index)
    cell.locator(".jp-InputArea-editor .cm-content").click()
    page.keyboard.press("Control+Enter")


def probe(page, expected: str) -> None:
    """Run the probe cell and wait for the kernel's view of the widget: ``w.path``, ``w.status``."""
    from playwright.sync_api import expect

    run_cell(page, 1)
    output = page.locator(".jp-Notebook .jp-CodeCell").nth(1).locator(".jp-OutputArea-output")
    expect(output).to_have_text(f"PROBE {expected}", timeout=ACTION_TIMEOUT)


def wait_settled(page) -> None:
    """No request in flight (the progress bar shows only while one runs, including while an
    attribution estimate is on show before the exact values), exact values shown, no error."""
    from playwright.sync_api import expect

    expect(page.locator(f"{WIDGET} .pw-progress")).to_have_count(0, timeout=ACTION_TIMEOUT)
    expect(page.locator(f"{WIDGET} .pw-error")).to_have_count(0)
    expect(page.locator(f"{WIDGET} .pw-panel-estimate")).to_have_count(0)


def check_top_grid(page) -> None:
    from playwright.sync_api import expect

    grid = page.locator(TOP_GRID)
    expect(grid).to_have_count(1, timeout=ACTION_TIMEOUT)
    expect(page.locator(f"{WIDGET} .pw-grid[role=grid]")).to_have_count(1)
    cells = grid.locator(".pw-cell[role=gridcell]")
    expect(cells).to_have_count(N_LAYERS * len(TOKENS))
    expect(grid.locator("th[role=rowheader]")).to_have_text([f"L{i}" for i in range(N_LAYERS)])
    expect(grid.locator("th[role=columnheader]")).to_have_text([f"{t} ({i})" for i, t in enumerate(TOKENS)])
    cell = grid.locator('.pw-cell[data-row="2"][data-col="9"]')
    label = cell.get_attribute("aria-label")
    assert label.startswith("L2, 'John (9)', resid_pre"), label
    assert re.search(r": -?\d+\.\d{3}$", label), label
    # Every cell is coloured (no NaN in this grid) and shows its value.
    styles = cells.evaluate_all("cs => cs.map(c => [c.style.backgroundColor, c.textContent])")
    assert all(bg.startswith("rgb") and re.fullmatch(r"-?\d+\.\d\d", text) for bg, text in styles), styles[:5]


def screenshot(page, path: Path) -> None:
    """The widget alone, without focus ring or tooltip."""
    page.mouse.move(0, 0)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.locator(WIDGET).screenshot(path=str(path), animations="disabled")


def test_drill_down_and_back(lab_server, page, ui_output):
    from playwright.sync_api import expect

    layer, pos, measured = choose_drill_down()
    assert max(abs(v) for row in measured for v in row) > 0.2, "no head of any layer has a visible effect"
    notebook = write_notebook(lab_server.root)
    (ui_output / "failure-page.png").unlink(missing_ok=True)  # only ever from this run
    try:
        page.goto(f"{lab_server.url}/lab/tree/{notebook.name}", wait_until="domcontentloaded")
        expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(3, timeout=KERNEL_TIMEOUT)
        wait_kernel_idle(page)

        # Run the explore cell; the widget shows the resid_pre grid, layers x tokens.
        cell = page.locator(".jp-Notebook .jp-CodeCell").first
        cell.locator(".jp-InputArea-editor .cm-content").click()
        page.keyboard.press("Shift+Enter")
        # JupyterLab marks the cell [*] as soon as it sends it; "[ ]" means the run was dropped.
        expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[(\*|\d+)\]"), timeout=10_000)
        expect(page.locator(f"{WIDGET} [role=grid]")).to_have_count(1, timeout=KERNEL_TIMEOUT)
        wait_settled(page)
        check_top_grid(page)
        expect(page.locator(CRUMBS)).to_have_text(["resid_pre"])
        # What is being patched (issue 39, item 4): the answers, the runs' logit difference, the changed token.
        facts = page.locator(f"{WIDGET} .pw-context-facts")
        expect(facts).to_contain_text('answer "Mary" vs "John"')
        expect(facts).to_contain_text("logit difference: clean ")
        expect(page.locator(f"{WIDGET} .pw-context mark")).to_have_text(["John", "Mary"])
        screenshot(page, ui_output / "widget-top.png")

        # Click the layer and token chosen from the measured grid: that layer's heads, heads x tokens.
        page.locator(f'{TOP_GRID} .pw-cell[data-row="{layer}"][data-col="{pos}"]').click()
        heads = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Heads of layer {layer}"]')
        expect(heads).to_have_count(1, timeout=ACTION_TIMEOUT)
        wait_settled(page)
        expect(page.locator(f"{WIDGET} .pw-grid[role=grid]")).to_have_count(1)
        expect(heads.locator(".pw-cell[role=gridcell]")).to_have_count(N_HEADS * len(TOKENS))
        expect(heads.locator("th[role=rowheader]")).to_have_text([f"H{i}" for i in range(N_HEADS)])
        expect(page.locator(CRUMBS)).to_have_count(2)
        expect(page.locator(CRUMBS)).to_have_text(["resid_pre", f"L{layer} heads"])
        expect(page.locator(f'{CRUMBS}[aria-current="page"]')).to_have_attribute("data-level", "1")
        # The drawn grid is the measured one, and clearly not all zeros.
        texts = heads.locator(".pw-cell[role=gridcell]").evaluate_all("cs => cs.map(c => c.textContent)")
        drawn = [[float(texts[h * len(TOKENS) + i]) for i in range(len(TOKENS))] for h in range(N_HEADS)]
        assert all(abs(d - m) <= 0.006 for dr, mr in zip(drawn, measured) for d, m in zip(dr, mr)), drawn
        assert max(abs(v) for row in drawn for v in row) > 0.5  # a head that clearly carries the answer
        probe(page, f"top/heads {layer} {pos} idle 2")
        screenshot(page, ui_output / "widget-heads.png")

        # Escape on a head cell goes back one level, and keeps the keyboard in the widget.
        heads.locator('.pw-cell[data-row="1"][data-col="9"]').focus()
        page.keyboard.press("Escape")
        expect(heads).to_have_count(0, timeout=ACTION_TIMEOUT)
        wait_settled(page)
        check_top_grid(page)
        expect(page.locator(CRUMBS)).to_have_count(1)
        focused = page.evaluate("document.activeElement.closest('.pw-grid')?.getAttribute('aria-label') ?? ''")
        assert focused.startswith("resid_pre"), f"focus left the grid after Escape: {focused!r}"
        probe(page, "top None None idle 1")

        # Enter on a focused cell drills down too.
        page.locator(f'{TOP_GRID} .pw-cell[data-row="3"][data-col="13"]').focus()
        page.keyboard.press("Enter")
        expect(page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Heads of layer 3"]')).to_have_count(
            1, timeout=ACTION_TIMEOUT
        )
        wait_settled(page)
        expect(page.locator(CRUMBS)).to_have_text(["resid_pre", "L3 heads"])

        # Find circuit (README, "Find the circuit"; the IOI workshop's exercise 6) ends on the circuit view;
        # clicking a head node opens its breakdown, Escape comes back, Enter on an MLP node opens mlp_out.
        page.locator(f"{WIDGET} .pw-target").fill("0.9")
        page.locator(f"{WIDGET} .pw-circuit-button").click()
        circuit = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Circuit of 8 nodes: on their own"]')
        expect(circuit).to_have_count(1, timeout=KERNEL_TIMEOUT)
        wait_settled(page)
        # A search is of the whole model: it starts from the first grid, not below L3 heads (issue 39, item 9).
        expect(page.locator(CRUMBS)).to_have_text(["resid_pre", "find circuit (target 0.9)"])
        # A diagram as circuit.plot() draws it (issue 39, item 1): the last layer on top, heads then the MLP.
        expect(circuit.locator("th[role=rowheader]")).to_have_text(["L3", "L2", "L1", "L0", "embed"])
        kept = circuit.locator(".pw-node-in").evaluate_all(
            "ns => ns.map(n => n.closest('.pw-cell')).map(c => [c.dataset.row, c.dataset.col])"
        )
        nodes = {("4", "0"), ("3", "3"), ("2", "0"), ("0", "1")} | {(str(r), "4") for r in range(4)}
        assert set(map(tuple, kept)) == nodes, kept  # the embeddings, L0H3, L1H0, L3H1 and the four MLPs
        assert "NaN" not in circuit.inner_text()
        expect(page.locator(f"{WIDGET} svg.pw-curve polyline")).to_have_count(1)
        expect(page.locator(f"{WIDGET} .pw-curve-target")).to_have_count(1)
        expect(page.locator(f"{WIDGET} .pw-panel-note").last).to_contain_text("the area under this curve")
        expect(page.locator(f"{WIDGET} .pw-direction")).to_be_disabled()
        assert "clean prompts" in page.locator(f"{WIDGET} .pw-direction").get_attribute("title")
        screenshot(page, ui_output / "widget-circuit.png")
        circuit.locator('.pw-cell[data-row="0"][data-col="1"]').click()
        expect(page.locator(CRUMBS).last).to_have_text("L3 H1", timeout=ACTION_TIMEOUT)
        wait_settled(page)
        # In a head's breakdown (README, path patching; the IOI workshop's section 6): a click on its query
        # opens what feeds this head, Enter on its output the direct path to the logits.
        parts = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="L3 H1: query, key, value and output"]')
        parts.locator('.pw-cell[data-row="0"][data-col="13"]').click()
        expect(page.locator(CRUMBS).last).to_have_text("what feeds L3 H1", timeout=ACTION_TIMEOUT)
        wait_settled(page)
        # One colour range for the three panels, said on screen (issue 39, item 3; three scales before).
        ticks = page.locator(f"{WIDGET} .pw-legend-ticks").evaluate_all("ts => ts.map(t => t.textContent)")
        assert len(ticks) == 3 and len(set(ticks)) == 1, ticks
        expect(page.locator(f"{WIDGET} .pw-range-note")).to_contain_text("±1, fixed: the values are normalised")
        page.locator(f"{WIDGET} .pw-grid[role=grid] .pw-cell").first.focus()
        page.keyboard.press("Escape")
        expect(page.locator(CRUMBS).last).to_have_text("L3 H1", timeout=ACTION_TIMEOUT)
        wait_settled(page)
        parts.locator('.pw-cell[data-row="3"][data-col="13"]').focus()
        page.keyboard.press("Enter")
        expect(page.locator(CRUMBS).last).to_have_text("direct to logits", timeout=ACTION_TIMEOUT)
        wait_settled(page)
        page.locator(f"{CRUMBS}[data-level='1']").click()  # the breadcrumb back to the circuit view
        expect(circuit).to_have_count(1, timeout=ACTION_TIMEOUT)
        wait_settled(page)
        circuit.locator('.pw-cell[data-row="0"][data-col="1"]').click()
        expect(page.locator(CRUMBS).last).to_have_text("L3 H1", timeout=ACTION_TIMEOUT)
        wait_settled(page)
        page.locator(f"{WIDGET} .pw-grid[role=grid] .pw-cell").first.focus()
        page.keyboard.press("Escape")
        expect(circuit).to_have_count(1, timeout=ACTION_TIMEOUT)
        wait_settled(page)
        circuit.locator('.pw-cell[data-row="1"][data-col="4"]').focus()
        page.keyboard.press("Enter")
        expect(page.locator(CRUMBS).last).to_have_text("mlp_out", timeout=ACTION_TIMEOUT)
        wait_settled(page)
        expect(page.locator(f"{WIDGET} .pw-site-tab[aria-selected=true]")).to_have_text("mlp_out")

        # Saving the page after path patching (whose levels link back to each other) returns, and the
        # page, opened from the disk, follows the saved path: circuit, L3 H1, what feeds it, direct, L3 H1.
        run_cell(page, 2)
        saved = page.locator(".jp-Notebook .jp-CodeCell").nth(2).locator(".jp-OutputArea-output")
        # A new file gets the umask's mode (0o600 before), so a page copied to a shared folder stays readable.
        expect(saved).to_have_text(f"SAVED saved.html {umask_mode()}", timeout=ACTION_TIMEOUT)
        follow_saved_page(page, lab_server.root / "saved.html")
    except BaseException:
        try:
            page.screenshot(path=str(ui_output / "failure-page.png"), full_page=True, timeout=10_000)
        except Exception:
            pass  # the original failure matters more
        raise

    assert not page.errors, "JavaScript errors in the page:\n" + "\n".join(page.errors)


def test_remote_queue_status_shows_in_the_progress_bar(lab_server, page, ui_output):
    """The widget on a weightless model served by the stand-in NDIF server (tests/fake_ndif.py),
    which keeps each job queued for a few seconds: the progress bar says so, then the grid comes."""
    from playwright.sync_api import expect

    repo = Path(__file__).resolve().parents[2]
    notebook = code_notebook(
        lab_server.root / "patchwidget_remote.ipynb",
        f"import sys; sys.path.insert(0, {str(repo)!r})\n"
        "import patchwidget as pw\n"
        "from nnsight.modeling import huggingface\n"
        "from tests.fake_ndif import FakeNDIF\n"
        "server = FakeNDIF(pw.load_model()).__enter__()\n"
        "client = pw.load_model(dispatch=False)  # no weights here, as with NDIF\n"
        "huggingface._ID_CACHE[client.repo_id] = 'patchwidget/demo-model'\n"
        f"w = pw.explore(client, {CLEAN!r}, {CORRUPT!r}, answer='Mary', wrong='John', remote=server.url, "
        "preview=False)\n"
        "server.queue_seconds = 3\n"
        "w",
    )
    try:
        # ?reset: a fresh workspace, without the notebook an earlier test left open
        page.goto(f"{lab_server.url}/lab/tree/{notebook.name}?reset", wait_until="domcontentloaded")
        expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(1, timeout=KERNEL_TIMEOUT)
        wait_kernel_idle(page)
        run_cell(page, 0)
        expect(page.locator(f"{WIDGET} [role=grid]")).to_have_count(1, timeout=KERNEL_TIMEOUT)
        wait_settled(page)
        check_top_grid(page)

        page.locator(f'{TOP_GRID} .pw-cell[data-row="2"][data-col="9"]').click()
        status = page.locator(f"{WIDGET} .pw-progress .pw-server-status")
        expect(status).to_have_text("server: queued (position 1)", timeout=ACTION_TIMEOUT)
        screenshot(page, ui_output / "widget-remote-queued.png")
        heads = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Heads of layer 2"]')
        expect(heads).to_have_count(1, timeout=ACTION_TIMEOUT)
        wait_settled(page)
        expect(heads.locator(".pw-cell[role=gridcell]")).to_have_count(N_HEADS * len(TOKENS))
    except BaseException:
        try:
            page.screenshot(path=str(ui_output / "failure-remote.png"), full_page=True, timeout=10_000)
        except Exception:
            pass
        raise

    assert not page.errors, "JavaScript errors in the page:\n" + "\n".join(page.errors)


def follow_saved_page(page, path: Path) -> None:
    """Open the offline page over file:// and follow path patching through it, cycles included."""
    from playwright.sync_api import expect

    page.goto(path.as_uri(), wait_until="load")
    expect(page.locator(TOP_GRID)).to_have_count(1, timeout=ACTION_TIMEOUT)
    page.locator(f"{WIDGET} .pw-target").fill("0.9")
    page.locator(f"{WIDGET} .pw-circuit-button").click()
    circuit = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Circuit of 8 nodes"]')
    expect(circuit).to_have_count(1, timeout=ACTION_TIMEOUT)
    circuit.locator('.pw-cell[data-row="0"][data-col="1"]').click()
    parts = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="L3 H1: query, key, value and output"]')
    expect(parts).to_have_count(1, timeout=ACTION_TIMEOUT)
    parts.locator('.pw-cell[data-row="0"][data-col="13"]').click()
    expect(page.locator(CRUMBS)).to_have_text(
        ["resid_pre", "find circuit (target 0.9)", "L3 H1", "what feeds L3 H1"], timeout=ACTION_TIMEOUT
    )
    page.locator(f"{CRUMBS}[data-level='2']").click()
    parts.locator('.pw-cell[data-row="3"][data-col="13"]').focus()
    page.keyboard.press("Enter")
    expect(page.locator(CRUMBS).last).to_have_text("direct to logits", timeout=ACTION_TIMEOUT)
    # The direct path's L3 H1 opens the head again: the same saved level, one step deeper.
    page.locator(f'{WIDGET} .pw-grid[role=grid] .pw-cell[data-row="3"][data-col="1"]').click()
    expect(page.locator(CRUMBS)).to_have_text(
        ["resid_pre", "find circuit (target 0.9)", "L3 H1", "direct to logits", "L3 H1"], timeout=ACTION_TIMEOUT
    )
    expect(page.locator(f"{WIDGET} .pw-error")).to_have_count(0)


def open_widget(page, lab_server, name: str, n_cells: int) -> None:
    """Open a notebook in a fresh workspace (``?reset``: none of the notebooks earlier tests left open), run its
    first cell (``pw.explore``) and wait for the settled first grid."""
    from playwright.sync_api import expect

    page.goto(f"{lab_server.url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
    expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(n_cells, timeout=KERNEL_TIMEOUT)
    wait_kernel_idle(page)
    run_cell(page, 0)
    expect(page.locator(TOP_GRID)).to_have_count(1, timeout=KERNEL_TIMEOUT)
    wait_settled(page)


def tooltip_box(page) -> dict | None:
    """The shown tooltip's box in the viewport, or None when hidden."""
    return page.evaluate(
        "() => { const t = document.querySelector('.patchwidget .pw-tooltip');"
        " if (!t || t.hidden) return null; const r = t.getBoundingClientRect();"
        " return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; }"
    )


def visible_area(page) -> dict:
    """What JupyterLab shows of the widget's output (it clips at the output area), within the viewport."""
    return page.evaluate(
        "() => { const o = document.querySelector('.patchwidget').closest('.jp-OutputArea-output');"
        " const r = o.getBoundingClientRect(); return {left: Math.max(0, r.left), top: Math.max(0, r.top),"
        " right: Math.min(innerWidth, r.right), bottom: Math.min(innerHeight, r.bottom)}; }"
    )


def test_tooltips_are_whole_and_go_away(lab_server, page, ui_output):
    """Issue 39, item 2: a tooltip on the bottom row and at the left and right edges is wholly inside what
    JupyterLab shows; it goes when the pointer leaves, and focus the widget moves itself after a drill
    opens none."""
    from playwright.sync_api import expect

    notebook = write_notebook(lab_server.root, "tooltips.ipynb")
    try:
        open_widget(page, lab_server, notebook.name, n_cells=3)
        page.locator(TOP_GRID).scroll_into_view_if_needed()
        for row, col in ((N_LAYERS - 1, 0), (N_LAYERS - 1, len(TOKENS) - 1), (0, 0)):
            page.locator(f'{TOP_GRID} .pw-cell[data-row="{row}"][data-col="{col}"]').hover()
            expect(page.locator(f"{WIDGET} .pw-tooltip")).to_be_visible()
            box, area = tooltip_box(page), visible_area(page)
            inside = all(
                [box["left"] >= area["left"], box["right"] <= area["right"]]
                + [box["top"] >= area["top"], box["bottom"] <= area["bottom"]]
            )
            assert inside, f"the tooltip of cell ({row}, {col}) at {box} is cut by what is shown, {area}"
        # Zeros say why (issue 39, item 5): the bottom-left cell is before the first token the corruption changes.
        page.locator(f'{TOP_GRID} .pw-cell[data-row="{N_LAYERS - 1}"][data-col="0"]').hover()
        expect(page.locator(f"{WIDGET} .pw-tooltip")).to_contain_text("0 by causality: before 'John (9)'")
        page.mouse.move(0, 0)
        expect(page.locator(f"{WIDGET} .pw-tooltip")).to_be_hidden()

        # The keyboard's own focus shows the tooltip; the focus the widget moves to the new grid does not.
        page.locator(f'{TOP_GRID} .pw-cell[data-row="3"][data-col="12"]').focus()
        page.keyboard.press("ArrowRight")
        expect(page.locator(f"{WIDGET} .pw-tooltip")).to_be_visible()
        page.keyboard.press("Enter")
        heads = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Heads of layer 3"]')
        expect(heads).to_have_count(1, timeout=ACTION_TIMEOUT)
        wait_settled(page)
        focused = page.evaluate("document.activeElement.closest('.pw-grid')?.getAttribute('aria-label') ?? ''")
        assert focused.startswith("Heads of layer 3"), focused
        expect(page.locator(f"{WIDGET} .pw-tooltip")).to_be_hidden()
        expect(heads.locator("th.pw-marked")).to_have_text(["to (13)"])  # the token the drill was made at

        # The Lens beside the sites (issue 40, item 3): the logit lens and direct logit attribution; a head that
        # writes the answer opens its breakdown, "writes the answer" and "needed for it" two clicks apart.
        page.locator(f"{WIDGET} .pw-site-tab[data-site=lens]").click()
        dla = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Direct logit attribution"]')
        expect(dla).to_have_count(1, timeout=ACTION_TIMEOUT)
        expect(page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Logit lens"]')).to_have_count(1)
        wait_settled(page)
        screenshot(page, ui_output / "widget-lens.png")
        dla.locator('.pw-cell[data-row="3"][data-col="1"]').click()
        expect(page.locator(CRUMBS)).to_have_text(["lens", "L3 H1"], timeout=ACTION_TIMEOUT)
        wait_settled(page)
    except BaseException:
        page.screenshot(path=str(ui_output / "failure-tooltips.png"), full_page=True, timeout=10_000)
        raise
    assert not page.errors, "JavaScript errors in the page:\n" + "\n".join(page.errors)


def test_copy_code_reproduces_the_grid_in_the_kernel(lab_server, page, ui_output):
    """Issue 39, item 6: *Copy code*, pasted into a cell and run, computes the values the grid shows."""
    from playwright.sync_api import expect

    code_notebook(
        lab_server.root / "copy.ipynb",
        "import patchwidget as pw\n"
        f"w = pw.explore(pw.load_model(), {CLEAN!r}, {CORRUPT!r}, answer='Mary', wrong='John')\n"
        "w",
        "",
    )
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=lab_server.url)
    try:
        open_widget(page, lab_server, "copy.ipynb", n_cells=2)
        shown = page.locator(f'{TOP_GRID} .pw-cell[data-row="2"][data-col="10"]').get_attribute("aria-label")
        page.locator(f"{WIDGET} .pw-copy-code").click()
        expect(page.locator(f"{WIDGET} .pw-code-said")).to_contain_text("Copied")
        cell = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
        cell.locator(".jp-InputArea-editor .cm-content").click()
        page.keyboard.press("Control+v")
        expect(cell.locator(".cm-content")).to_contain_text("pw.patch(model, **prompts", timeout=10_000)
        page.keyboard.press("Control+End")
        page.keyboard.insert_text("\nprint('COPIED', f'{resid_pre.values[2, 10]:.3f}')")
        page.keyboard.press("Control+Enter")
        output = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']")
        expect(output).to_have_text(f"COPIED {shown.rsplit(': ', 1)[1]}", timeout=ACTION_TIMEOUT)

        # Shift-click selects cells (README, the widget): Keep as circuit says what it kept (it showed nothing
        # before, issue 39, item 6), and Patch selected together draws the joint patch.
        for col in (9, 10):
            page.locator(f'{TOP_GRID} .pw-cell[data-row="1"][data-col="{col}"]').click(modifiers=["Shift"])
        expect(page.locator(f"{WIDGET} .pw-selection-count")).to_have_text("2 cells selected")
        page.locator(f"{WIDGET} .pw-keep").click()
        expect(page.locator(f"{WIDGET} .pw-done")).to_have_text(
            "kept 2 cells as widget.circuit", timeout=ACTION_TIMEOUT
        )
        page.locator(f"{WIDGET} .pw-joint").click()
        expect(page.locator(f"{WIDGET} .pw-joint-table")).to_have_count(1, timeout=ACTION_TIMEOUT)
    except BaseException:
        page.screenshot(path=str(ui_output / "failure-copy.png"), full_page=True, timeout=10_000)
        raise
    assert not page.errors, "JavaScript errors in the page:\n" + "\n".join(page.errors)


# Every click path the README and the workshops describe: (how to get there from the first grid, the grid
# clicked, row, column, the breadcrumb's last label after it). Each is performed by mouse and by keyboard.
GRID = f"{WIDGET} .pw-grid[role=grid]"
CLICK_PATHS = [
    ([], "resid_pre", 3, 13, "L3 heads"),  # a layer's cell opens its heads at that token
    ([("resid_pre", 3, 13)], "Heads of layer 3", 1, 13, "L3 H1"),  # a head opens its breakdown
    ([("resid_pre", 3, 13), ("Heads of layer 3", 1, 13)], "L3 H1: query", 0, 13, "what feeds L3 H1"),  # q: path
    ([("resid_pre", 3, 13), ("Heads of layer 3", 1, 13)], "L3 H1: query", 3, 13, "direct to logits"),  # out
    (
        [("resid_pre", 3, 13), ("Heads of layer 3", 1, 13), ("L3 H1: query", 0, 13)],
        "Path patching: senders into the value",
        1,
        0,
        "L1 H0",  # a sender opens its own breakdown: the circuit followed upstream
    ),
    ([("site:mlp_out", 0, 0)], "mlp_out", 0, 9, "L0 neurons at 'John'"),  # an MLP cell opens its top neurons
    ([("site:lens", 0, 0)], "Direct logit attribution", 3, 1, "L3 H1"),  # a head that writes the answer
]


def _open(page, grid: str, row: int, col: int, how: str) -> None:
    """Open (row, col) of the grid whose label starts with ``grid``, by mouse or by keyboard."""
    if grid.startswith("site:"):
        page.locator(f"{WIDGET} .pw-site-tab[data-site={grid[5:]}]").click()
        return
    cell = page.locator(f'{GRID}[aria-label^="{grid}"] .pw-cell[data-row="{row}"][data-col="{col}"]')
    expect_count(cell, 1)
    if how == "mouse":
        cell.click()
    else:
        cell.focus()
        page.keyboard.press("Enter")


def expect_count(locator, n: int) -> None:
    from playwright.sync_api import expect

    expect(locator).to_have_count(n, timeout=ACTION_TIMEOUT)


def test_every_documented_click_path_by_mouse_and_by_keyboard(lab_server, page, ui_output):
    """Issue 39, 'how it is proven': each click path of CLICK_PATHS, from the first grid, by mouse and by Enter,
    opens the level it names; Escape and the breadcrumb come back."""
    from playwright.sync_api import expect

    notebook = write_notebook(lab_server.root, "paths.ipynb")
    try:
        open_widget(page, lab_server, notebook.name, n_cells=3)
        for setup, grid, row, col, opens in CLICK_PATHS:
            for how in ("mouse", "keyboard"):
                # From the first grid: its site tab from another start view, its breadcrumb from below it.
                if page.locator(CRUMBS).first.text_content() != "resid_pre":
                    page.locator(f"{WIDGET} .pw-site-tab[data-site=resid_pre]").click()
                elif page.locator(CRUMBS).count() > 1:
                    page.locator(f"{CRUMBS}[data-level='0']").click()
                expect(page.locator(CRUMBS)).to_have_text(["resid_pre"], timeout=ACTION_TIMEOUT)
                wait_settled(page)
                for step in setup:
                    n = page.locator(CRUMBS).count()
                    _open(page, *step, how="mouse")
                    if step[0].startswith("site:"):  # a start view: its own breadcrumb
                        expect(page.locator(CRUMBS)).to_have_text([step[0][5:]], timeout=ACTION_TIMEOUT)
                    else:
                        expect(page.locator(CRUMBS)).to_have_count(n + 1, timeout=ACTION_TIMEOUT)
                    wait_settled(page)
                before = page.locator(CRUMBS).all_text_contents()
                depth = len(before)
                _open(page, grid, row, col, how)
                expect(page.locator(CRUMBS)).to_have_text([*before, opens], timeout=ACTION_TIMEOUT)
                wait_settled(page)
                if how == "keyboard":  # Escape comes back one level
                    page.locator(f"{GRID} .pw-cell").first.focus()
                    page.keyboard.press("Escape")
                else:  # the breadcrumb comes back
                    page.locator(f"{CRUMBS}[data-level='{depth - 1}']").click()
                expect(page.locator(CRUMBS)).to_have_count(depth, timeout=ACTION_TIMEOUT)
                wait_settled(page)
    except BaseException:
        page.screenshot(path=str(ui_output / "failure-paths.png"), full_page=True, timeout=10_000)
        raise
    assert not page.errors, "JavaScript errors in the page:\n" + "\n".join(page.errors)


def test_show_switches_between_normalised_and_raw_without_computing(lab_server, page, ui_output):
    """Issue 38, item 3 (README, the widget's controls): *Show* is a display setting. Choosing "raw metric" in the
    page redraws the same grid in logit differences (the one default metric), with the range of the values and
    no new computation in the kernel; back to normalised, clean 1, the range ±1 again."""
    import numpy as np
    from playwright.sync_api import expect

    import patchwidget as pw

    raw = pw.patch(pw.load_model(), CLEAN, CORRUPT, answer="Mary", wrong="John").values  # (layer, pos)
    notebook = write_notebook(lab_server.root, "scale.ipynb")
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[1] = nbformat.v4.new_code_cell("print('CACHE', len(w.session.cache), w.result.settings['metric'])")
    nbformat.write(nb, notebook)
    title, note = page.locator(f"{WIDGET} .pw-title"), page.locator(f"{WIDGET} .pw-range-note")
    cell = page.locator(f'{TOP_GRID} .pw-cell[data-row="2"][data-col="9"]')
    output = page.locator(".jp-Notebook .jp-CodeCell").nth(1).locator(".jp-OutputArea-output")
    try:
        open_widget(page, lab_server, notebook.name, n_cells=3)
        expect(title).to_have_text("denoise · logit_diff · normalised (clean 1, corrupted 0)")
        expect(note).to_contain_text("±1, fixed: the values are normalised")
        run_cell(page, 1)
        expect(output).to_have_text("CACHE 1 logit_diff (normalized)", timeout=ACTION_TIMEOUT)
        page.locator(f"{WIDGET} .pw-scale").select_option("raw")
        expect(title).to_have_text("denoise · logit_diff", timeout=ACTION_TIMEOUT)
        expect(note).to_contain_text("the largest |value| along this drill-down")
        shown = float(cell.get_attribute("aria-label").rsplit(": ", 1)[1])
        assert shown == np.round(raw[2, 9], 3), (shown, raw[2, 9])
        run_cell(page, 1)  # the same one cached level: drawn again, not computed again
        expect(output).to_have_text("CACHE 1 logit_diff", timeout=ACTION_TIMEOUT)
        page.locator(f"{WIDGET} .pw-scale").select_option("normalized")
        expect(note).to_contain_text("±1, fixed: the values are normalised", timeout=ACTION_TIMEOUT)
    except BaseException:
        try:
            page.screenshot(path=str(ui_output / "failure-scale.png"), full_page=True, timeout=10_000)
        except Exception:
            pass
        raise
    assert not page.errors, "JavaScript errors in the page:\n" + "\n".join(page.errors)


def test_what_the_model_says_and_the_answers_tokens(lab_server, page, ui_output):
    """Issue 30, parts 2b and 3: L3 H1 selected at the last token of the heads grid, *What does it say?* draws the
    clean, corrupted and patched continuations, the patched one as ``pw.generate`` gives it; hovering the answer
    (three tokens here) in the header shows its tokens, in the notebook and in the saved page."""
    from playwright.sync_api import expect

    import patchwidget as pw
    from patchwidget.ui.session import SAYS_TOKENS

    cell = pw.Cell("head_out", 3, head=1, pos=len(TOKENS) - 1)
    model = pw.load_model()
    want = pw.generate(model, CLEAN, CORRUPT, cells=[cell], max_new_tokens=SAYS_TOKENS)
    assert want.patched != want.corrupt  # the head moves what the model says, so the test has power
    found = pw.find_circuit(model, CLEAN, CORRUPT, answer="Mary went to", wrong="John")
    alone = pw.generate(model, CLEAN, CORRUPT, circuit=found, alone=True, max_new_tokens=SAYS_TOKENS)
    code_notebook(
        lab_server.root / "says.ipynb",
        "import patchwidget as pw\n"
        f"w = pw.explore(pw.load_model(), {CLEAN!r}, {CORRUPT!r}, answer='Mary went to', wrong='John')\n"
        "w",
        SAVE,
    )
    tip = page.locator(f"{WIDGET} .pw-tooltip")
    try:
        open_widget(page, lab_server, "says.ipynb", n_cells=2)
        page.locator(f"{WIDGET} .pw-answer-answer").hover()
        expect(tip).to_be_visible()
        expect(tip.locator("div")).to_have_text(["answer: 3 tokens", '"Mary" · "went" · "to"'])
        page.mouse.move(0, 0)
        expect(tip).to_be_hidden()

        page.locator(f'{TOP_GRID} .pw-cell[data-row="3"][data-col="{cell.pos}"]').click()
        heads = page.locator(f'{GRID}[aria-label^="Heads of layer 3"]')
        expect(heads).to_have_count(1, timeout=ACTION_TIMEOUT)
        wait_settled(page)
        heads.locator(f'.pw-cell[data-row="1"][data-col="{cell.pos}"]').click(modifiers=["Shift"])
        expect(page.locator(f"{WIDGET} .pw-selection-count")).to_have_text("1 cell selected")
        page.locator(f"{WIDGET} .pw-says").click()
        box = page.locator(f"{WIDGET} .pw-says-result")
        expect(box).to_have_count(1, timeout=ACTION_TIMEOUT)
        wait_settled(page)
        expect(box.locator(".pw-says-summary")).to_contain_text(f"{cell.label} takes the clean run's values")
        expect(box.locator(".pw-says-line")).to_have_text(
            [f"clean: {want.clean[0]}", f"corrupted: {want.corrupt[0]}", f"patched: {want.patched[0]}"]
        )
        assert box.locator(".pw-says-patched .pw-says-text").text_content() == want.patched[0]
        expect(page.locator(CRUMBS)).to_have_text(["resid_pre", "L3 heads"])  # the drill-down path stays
        screenshot(page, ui_output / "widget-says.png")

        # The circuit Find circuit found says what it says on its own (MIB's m(C)): pw.generate(alone=True).
        page.locator(f"{WIDGET} .pw-circuit-button").click()
        circuit = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Circuit of"]')
        expect(circuit).to_have_count(1, timeout=KERNEL_TIMEOUT)
        wait_settled(page)
        page.locator(f"{WIDGET} .pw-says-circuit").click()
        expect(box.locator(".pw-says-summary")).to_contain_text(
            "What the circuit says on its own", timeout=ACTION_TIMEOUT
        )
        wait_settled(page)
        expect(box.locator(".pw-says-line")).to_have_text(
            [f"clean: {alone.clean[0]}", f"corrupted: {alone.corrupt[0]}", f"patched: {alone.patched[0]}"]
        )

        run_cell(page, 1)
        saved = page.locator(".jp-Notebook .jp-CodeCell").nth(1).locator(".jp-OutputArea-output")
        expect(saved).to_contain_text("SAVED saved.html", timeout=ACTION_TIMEOUT)
        page.goto((lab_server.root / "saved.html").as_uri(), wait_until="load")
        page.locator(f"{WIDGET} .pw-answer-answer").hover()
        expect(tip.locator("div")).to_have_text(["answer: 3 tokens", '"Mary" · "went" · "to"'])
    except BaseException:
        try:
            page.screenshot(path=str(ui_output / "failure-says.png"), full_page=True, timeout=10_000)
        except Exception:
            pass
        raise
    assert not page.errors, "JavaScript errors in the page:\n" + "\n".join(page.errors)


def test_what_generate_refuses_is_said_on_the_button_and_the_grid_works_on(lab_server, page, ui_output):
    """A noise() corruption has no corrupted prompt to continue: with a cell selected, *What does it say?* says so
    in ``pw.generate``'s own words, beside it, as its tooltip, and as its description when Tab reaches it; a click
    or Enter on it asks the kernel nothing, and the grid works on (the cell patched alone, a drill-down)."""
    from playwright.sync_api import expect

    import patchwidget as pw

    with pytest.raises(pw.PromptError) as refused:
        pw.generate(pw.load_model(), CLEAN, pw.noise("Mary"), cells=[pw.Cell("resid_pre", 3, pos=13)])
    why = str(refused.value)
    code_notebook(
        lab_server.root / "refused.ipynb",
        "import patchwidget as pw\n"
        f"w = pw.explore(pw.load_model(), {CLEAN!r}, pw.noise('Mary'), answer='Mary', wrong='John')\n"
        "w",
        "print('PROBE', w.session.latest, w.status['state'], len(w.breadcrumb))",
    )
    button, reason = page.locator(f"{WIDGET} .pw-says"), page.locator(f"{WIDGET} .pw-says-refused")
    try:
        open_widget(page, lab_server, "refused.ipynb", n_cells=2)
        page.locator(f'{TOP_GRID} .pw-cell[data-row="3"][data-col="13"]').click(modifiers=["Shift"])
        expect(page.locator(f"{WIDGET} .pw-selection-count")).to_have_text("1 cell selected")
        expect(button).to_be_disabled()  # aria-disabled: still reached by Tab
        expect(button).to_have_attribute("title", why)
        expect(reason).to_have_text(why)
        expect(reason).to_be_visible()
        screenshot(page, ui_output / "widget-says-refused.png")
        page.locator(f"{WIDGET} .pw-keep").focus()
        page.keyboard.press("Tab")
        expect(button).to_be_focused()
        expect(button).to_have_accessible_description(why)
        page.keyboard.press("Enter")
        button.click(force=True)  # as a user may click it anyway
        run_cell(page, 1)  # nothing was asked of the kernel, and nothing failed
        probe = page.locator(".jp-Notebook .jp-CodeCell").nth(1).locator(".jp-OutputArea-output")
        expect(probe).to_have_text("PROBE 0 idle 1", timeout=ACTION_TIMEOUT)
        expect(page.locator(f"{WIDGET} .pw-error")).to_have_count(0)
        expect(page.locator(f"{WIDGET} .pw-says-result")).to_have_count(0)

        page.locator(f"{WIDGET} .pw-joint").click()  # the grid works on: the cell patched alone
        expect(page.locator(f"{WIDGET} .pw-joint-table")).to_have_count(1, timeout=ACTION_TIMEOUT)
        wait_settled(page)
        page.locator(f'{TOP_GRID} .pw-cell[data-row="3"][data-col="13"]').click()
        expect(page.locator(f'{GRID}[aria-label^="Heads of layer 3"]')).to_have_count(1, timeout=ACTION_TIMEOUT)
        expect(page.locator(CRUMBS)).to_have_text(["resid_pre", "L3 heads"])
        wait_settled(page)
        expect(reason).to_have_text(why)  # on every level
    except BaseException:
        try:
            page.screenshot(path=str(ui_output / "failure-says-refused.png"), full_page=True, timeout=10_000)
        except Exception:
            pass
        raise
    assert not page.errors, "JavaScript errors in the page:\n" + "\n".join(page.errors)


# A point on an edge's line where the pointer reaches that edge (not a node, nor another edge crossing it): the
# middle of the line, or the nearest point along it that is the edge's own.
EDGE_POINT = """g => {
  const line = g.querySelector('.pw-edge-line');
  const box = g.ownerSVGElement.getBoundingClientRect();
  const total = line.getTotalLength();
  for (const t of [0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8]) {
    const p = line.getPointAtLength(t * total);
    const [x, y] = [box.left + p.x, box.top + p.y];
    if (document.elementFromPoint(x, y)?.closest('.pw-edge') === g) return [x, y];
  }
  return null;
}"""


def test_find_circuit_of_edges_draws_them_and_an_edge_opens_its_exact_score(lab_server, page, ui_output):
    """Issue 29, part 5: on the bundled model's IOI pairs (pw.demo_data), *Find circuit* with "of edges" chosen
    draws the circuit's edges over its diagram, one line per edge (L3 H1 -> logits among them); hovering that edge
    says its ranking score and method, a click opens its exact score (pw.edge_scores') and path patching into the
    logits; the SVG download and the saved page keep the edges, and Enter opens the edge there."""
    from playwright.sync_api import expect

    import patchwidget as pw

    model = pw.load_model()
    prompts = pw.demo_data.as_prompts(pw.demo_data.ioi_pairs(8))
    found = pw.find_circuit(model, **prompts, level="edges", method="exact")  # the widget's method: exact
    edge = pw.Edge(pw.Cell("head_out", 3, head=1), "logits")
    assert edge in found.edges
    ranking = found.edge_values[found.edges.index(edge)]
    exact = pw.edge_scores(model, **prompts, method="exact").score(edge)
    code_notebook(
        lab_server.root / "edges.ipynb",
        "import patchwidget as pw\n"
        "prompts = pw.demo_data.as_prompts(pw.demo_data.ioi_pairs(8))\n"
        "w = pw.explore(pw.load_model(), **prompts)\n"
        "w",
        SAVE,
    )
    n = len(found.edges)
    circuit = page.locator(f'{WIDGET} .pw-grid[role=grid][aria-label^="Circuit of {n} edges: on their own"]')
    lines = page.locator(f"{WIDGET} svg.pw-edges .pw-edge")
    target = page.locator(f'{WIDGET} .pw-edge[aria-label^="{edge.label},"]')
    tip = page.locator(f"{WIDGET} .pw-tooltip")
    try:
        open_widget(page, lab_server, "edges.ipynb", n_cells=2)
        expect(page.locator(f"{WIDGET} .pw-circuit-level")).to_have_value("nodes")  # nodes unless edges are chosen
        page.locator(f"{WIDGET} .pw-circuit-level").select_option("edges")
        page.locator(f"{WIDGET} .pw-circuit-button").click()
        expect(circuit).to_have_count(1, timeout=KERNEL_TIMEOUT)
        wait_settled(page)
        expect(page.locator(CRUMBS)).to_have_text(["resid_pre", "find circuit of edges (target 0.9)"])
        expect(circuit.locator("th[role=rowheader]")).to_have_text(["logits", "L3", "L2", "L1", "L0", "embed"])
        expect(lines).to_have_count(n)
        drawn = lines.locator(".pw-edge-line").evaluate_all("ls => ls.map(l => l.getAttribute('d') || '')")
        assert all(d.startswith("M") for d in drawn), drawn  # laid out between their nodes
        expect(page.locator(f"{WIDGET} svg.pw-curve")).to_have_count(1)
        expect(page.locator(f"{WIDGET} .pw-panel-curve .pw-panel-title")).to_contain_text("top-ranked edges")
        page.mouse.move(0, 0)  # the diagram alone, for the docs (make screenshot)
        page.locator(f'{WIDGET} section[data-panel="circuit"]').screenshot(path=str(ui_output / "widget-edges.png"))

        # Hover: sender -> receiver, the ranking score and its method, what a click opens.
        expect(target).to_have_count(1)
        point = target.evaluate(EDGE_POINT)
        assert point is not None, "no point of the L3 H1 -> logits line reaches it"
        page.mouse.move(*point)
        expect(tip).to_be_visible()
        texts = tip.locator("div").all_text_contents()
        assert texts[0] == edge.label and texts[-1].endswith("path patching into the logits"), texts
        assert abs(float(texts[1].removeprefix("ranking score (exact): ")) - ranking) < 1e-3, texts
        page.mouse.click(*point)
        expect(page.locator(CRUMBS).last).to_have_text(f"edge {edge.label}", timeout=ACTION_TIMEOUT)
        wait_settled(page)
        check_edge_level(page, edge, exact)
        screenshot(page, ui_output / "widget-edge.png")

        # Back on the circuit: the SVG download keeps the edges.
        page.locator(f"{CRUMBS}[data-level='1']").click()
        expect(lines).to_have_count(n, timeout=ACTION_TIMEOUT)
        wait_settled(page)
        with page.expect_download() as download:
            page.locator(f'{WIDGET} section[data-panel="circuit"] .pw-download-svg').click()
        svg = Path(download.value.path()).read_text()
        assert svg.count('<path class="pw-edge"') == n and f"<title>{edge.label}: " in svg.replace("&#62;", ">")

        run_cell(page, 1)
        saved = page.locator(".jp-Notebook .jp-CodeCell").nth(1).locator(".jp-OutputArea-output")
        expect(saved).to_contain_text("SAVED saved.html", timeout=ACTION_TIMEOUT)
        follow_saved_edges(page, lab_server.root / "saved.html", n, edge, exact)
    except BaseException:
        try:
            page.screenshot(path=str(ui_output / "failure-edges.png"), full_page=True, timeout=10_000)
        except Exception:
            pass
        raise
    assert not page.errors, "JavaScript errors in the page:\n" + "\n".join(page.errors)


def check_edge_level(page, edge, exact: float) -> None:
    """The level an edge opens: its exact score (the table's last row) and path patching into the logits, its
    sender outlined."""
    from playwright.sync_api import expect

    table = page.locator(f'{WIDGET} section[data-panel="edge"]')
    expect(table.locator(".pw-panel-title")).to_have_text(f"Edge {edge.label}: exact score {exact:.3f} (logit_diff)")
    shown = float(table.locator("tbody tr").last.locator("td").text_content())
    assert abs(shown - exact) < 1e-3, (shown, exact)
    grid = page.locator(f'{GRID}[aria-label^="Path patching: each head\'s direct path to the logits"]')
    expect(grid).to_have_count(1)
    expect(grid.locator(".pw-marked-cell")).to_have_attribute("data-row", "3")
    expect(grid.locator(".pw-marked-cell")).to_have_attribute("data-col", "1")


def follow_saved_edges(page, path: Path, n: int, edge, exact: float) -> None:
    """The offline page: Find circuit of edges opens the saved circuit with its edges drawn, and Enter on the
    opened edge replays its level."""
    from playwright.sync_api import expect

    page.goto(path.as_uri(), wait_until="load")
    expect(page.locator(TOP_GRID)).to_have_count(1, timeout=ACTION_TIMEOUT)
    page.locator(f"{WIDGET} .pw-circuit-level").select_option("edges")
    page.locator(f"{WIDGET} .pw-circuit-button").click()
    expect(page.locator(f"{WIDGET} svg.pw-edges .pw-edge")).to_have_count(n, timeout=ACTION_TIMEOUT)
    drawn = page.locator(f"{WIDGET} .pw-edge-line").evaluate_all("ls => ls.map(l => l.getAttribute('d') || '')")
    assert all(d.startswith("M") for d in drawn), drawn
    page.locator(f'{WIDGET} .pw-edge[aria-label^="{edge.label},"]').focus()
    expect(page.locator(f"{WIDGET} .pw-tooltip")).to_contain_text(edge.label)
    page.keyboard.press("Enter")
    expect(page.locator(CRUMBS).last).to_have_text(f"edge {edge.label}", timeout=ACTION_TIMEOUT)
    check_edge_level(page, edge, exact)
    expect(page.locator(f"{WIDGET} .pw-error")).to_have_count(0)
