"""The view model: what the offline page is given (``view.computed_states``).

Levels link back to each other (a head opens what feeds it, whose sender cells open heads;
the direct path to the logits opens the same head again), so the page's states are a graph:
each computed level is stored once, and clicks point to it by id.
"""

from __future__ import annotations

import threading

import patchwidget as pw
from patchwidget.ui.view import computed_states

CLEAN = "When Mary and John went to the store , John gave a drink to"
CORRUPT = "When Mary and John went to the store , Mary gave a drink to"


def _compute(widget, *levels):
    for level in levels:
        widget.session.cache[(level, widget.explorer.settings)] = widget.session.compute(
            level, widget.explorer.settings
        )


def _walk(result, timeout=60):
    """``computed_states`` in a thread, so that a walk that never ends fails here instead of hanging."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(value=computed_states(*result)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert "value" in out, f"computed_states did not return within {timeout} s"
    return out["value"]


def test_levels_that_link_back_are_stored_once(demo):
    widget = pw.explore(demo, CLEAN, CORRUPT, answer="Mary", wrong="John", preview=False)
    try:
        top = widget.explorer.levels[0]
        heads = widget.session.drill(top, "resid_pre", 3, 13)
        head = widget.session.drill(heads, "head_out", 1, 13)  # L3 H1
        feeds = widget.session.drill(head, "components", 0, 13)
        direct = widget.session.drill(head, "components", 3, 13)
        sender = widget.session.drill(feeds, "head_q", 1, 0)  # L1 H0, which feeds L3 H1
        assert (feeds.kind, direct.kind, sender.kind) == ("feeds", "direct", "head")
        _compute(widget, heads, head, feeds, direct, sender)
        states, edges = _walk((widget.session, top, widget.explorer.settings, "mean"))
    finally:
        widget.close()

    labels = [s["crumb"]["label"] for s in states]
    assert len(labels) == len(set(labels)) == 6, labels  # top, heads, L3 H1, feeds, direct, L1 H0: once each
    index = {label: i for i, label in enumerate(labels)}
    assert edges[f"{index['L3 heads']}|head_out|1|13"] == index["L3 H1"]
    assert edges[f"{index['L3 H1']}|components|0|13"] == index["what feeds L3 H1"]
    assert edges[f"{index['L3 H1']}|components|3|13"] == index["direct to logits"]
    # Both cycles close by id: direct to logits -> L3 H1 -> direct, and feeds -> L1 H0.
    assert edges[f"{index['direct to logits']}|logits|3|1"] == index["L3 H1"]
    assert edges[f"{index['what feeds L3 H1']}|head_q|1|0"] == index["L1 H0"]
    assert all(0 <= target < len(states) for target in edges.values())


def test_a_circuit_of_edges_and_its_opened_edges_are_saved(demo):
    """The saved page keeps a circuit of edges under its own key (beside one of nodes with the same target), and
    its edges panel offers the edges opened in the notebook, by row, and says why the others open nothing."""
    from patchwidget.ui.levels import Level
    from patchwidget.ui.view import NOT_SAVED

    widget = pw.explore(demo, CLEAN, CORRUPT, answer="Mary", wrong="John", preview=False)
    try:
        top = widget.explorer.levels[0]
        found = Level("circuit", target=0.9, edges=True)
        _compute(widget, found, Level("circuit", target=0.9))
        edges = widget.session.cache[(found, widget.explorer.settings)].circuit.edges[0]  # the first ranked
        opened = Level("edge", cells=(edges.sender, edges.receiver))
        _compute(widget, opened)
        states, keys = _walk((widget.session, top, widget.explorer.settings, "mean"))
    finally:
        widget.close()

    labels = [s["crumb"]["label"] for s in states]
    circuit = labels.index("find circuit of edges (target 0.9)")
    assert keys["0|circuit|0.9|edges"] == circuit and keys["0|circuit|0.9|nodes"] == labels.index(
        "find circuit (target 0.9)"
    )
    assert keys[f"{circuit}|edges|0|0"] == labels.index(f"edge {edges.label}")
    panel = next(p for p in states[circuit]["view"]["panels"] if p["id"] == "edges")
    assert [row[0] for row in panel["opens"]] == [True] + [False] * (len(panel["rows"]) - 1)
    assert panel["closed"] == NOT_SAVED and len(panel["rows"]) > 1
