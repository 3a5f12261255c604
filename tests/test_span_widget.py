"""The widget with prompts made from a template: a grid by span, a click on a span opens its positions,
and every number it draws is the one ``pw.patch`` gives for the same request."""

from __future__ import annotations

import numpy as np
import pytest

import patchwidget as pw
from patchwidget.core.cells import Cell
from patchwidget.ui.levels import LEVELS, Level
from patchwidget.ui.view import computed_states

from .close import assert_close, near
from .test_spans import UNEQUAL, args
from .test_widget import send, wait_idle

KW = args(UNEQUAL)


@pytest.fixture
def widget(demo):
    w = pw.explore(demo, **KW, preview=False)
    yield w
    w.close()


def test_the_first_grid_is_by_span(widget, demo):
    (panel,) = widget.view["panels"]
    columns = [s.label for s in UNEQUAL[0][0].spans(demo.tokenizer)]
    assert panel["col_dim"] == "span" and panel["cols"] == columns
    want = pw.patch(demo, **KW, metric="logit_diff_norm")
    assert_close(np.array(panel["values"], dtype=float), want.values, 1e-5)
    assert widget.breadcrumb == [{"label": "resid_pre"}]


def test_a_span_cell_opens_its_positions_then_the_heads_there(widget, demo):
    place = widget.view["panels"][0]["cols"].index("PLACE")
    send(widget, type="drill", request_id=1, panel="resid_pre", row=1, col=place)
    assert wait_idle(widget, 1)["state"] == "idle"
    (panel,) = widget.view["panels"]
    want = pw.patch(demo, **KW, metric="logit_diff_norm", within="PLACE")
    assert panel["cols"] == want.coords["span"] == ["PLACE[0]"]  # "store"/"park" have one token: one position
    assert_close(np.array(panel["values"], dtype=float), want.values, 1e-5)
    assert [c["label"] for c in widget.breadcrumb] == ["resid_pre", "PLACE by position"]
    spread = want.spread()
    assert_close(np.array(panel["spread"], dtype=float), spread, 1e-5)  # two pairs: spread shown
    send(widget, type="drill", request_id=2, panel="resid_pre", row=2, col=0)
    wait_idle(widget, 2)
    heads = pw.patch(demo, **KW, metric="logit_diff_norm", site="head_out", layers=[2], within="PLACE")
    assert_close(np.array(widget.view["panels"][0]["values"], dtype=float), heads.values[0], 1e-5)
    assert [p["kind"] for p in widget.path] == ["top", "span", "heads"]
    # The head's breakdown is by span; its pattern is the first clean prompt's, by token, and is not
    # patched (the pairs' PLACE spans differ in length, so key positions do not pair up).
    send(widget, type="drill", request_id=3, panel="head_out", row=0, col=0)
    wait_idle(widget, 3)
    components, pattern = widget.view["panels"]
    assert components["col_dim"] == "span" and "PLACE" in components["cols"]
    assert len(pattern["cols"]) == len(demo.tokenizer(str(UNEQUAL[0][0]))["input_ids"])
    assert "not patched" in pattern["title"]


def test_mlp_span_opens_neurons_at_a_position(widget, demo):
    send(widget, type="set", request_id=1, key="site", value="mlp_out")
    wait_idle(widget, 1)
    s2 = widget.view["panels"][0]["cols"].index("S2")
    send(widget, type="drill", request_id=2, panel="mlp_out", row=0, col=s2)
    wait_idle(widget, 2)
    send(widget, type="drill", request_id=3, panel="mlp_out", row=0, col=0)
    wait_idle(widget, 3)
    assert widget.breadcrumb[-1]["label"] == "L0 neurons at 'S2[0]'"
    full = pw.patch(demo, **KW, metric="logit_diff_norm", site="mlp_neuron", layers=[0], within="S2")
    values = np.abs(np.array(widget.view["panels"][0]["values"], dtype=float)[:, 0])
    assert values[0] == near(np.abs(full.values).max(), 1e-5)


def test_cells_of_a_span_session_are_span_cells(demo):
    session = pw.ui.session.Session(demo, **KW, preview=False)
    try:
        top = session.top("resid_pre")
        assert top.spans
        computed = session.compute(top, pw.ui.session.Settings())
        (panel,) = LEVELS["top"].panels(computed, pw.ui.levels.Display(session.labels))
        place = panel["cols"].index("PLACE")
        assert session.drill(top, "resid_pre", 1, place) == Level("span", "resid_pre", layer=1, spans=True, span=place)
        assert session.cell(top, panel, 1, place) == Cell("resid_pre", 1, pos="PLACE")
        head = Level("head", layer=2, head=1, spans=True)  # cells come from column indices, never from labels
        assert session.cell(head, {"id": "components", "cols": ["not a label"]}, 0, place) == Cell(
            "head_q", 2, head=1, pos="PLACE"
        )
        # A position within a span is no Cell: a Cell's pos is a token index or a whole span.
        heads = Level("heads", "resid_pre", layer=1, pos=0, spans=True, span=place)
        assert session.cell(heads, {"id": "head_out", "cols": ["PLACE[0]"]}, 0, 0) is None
        # Path patching of a span session: what feeds a head, on pairs of different lengths.
        feeds = session.compute(Level("feeds", layer=3, head=1, spans=True), pw.ui.session.Settings())
        direct = pw.path_patch(
            demo, **KW, receivers=[Cell("head_v", 3, head=1)]
        )  # the session computes in the one default metric
        assert_close(feeds.results["head_v"].per_pair, direct.per_pair, 1e-6)
    finally:
        session.close()


def test_offline_states_of_a_span_session(widget):
    place = widget.view["panels"][0]["cols"].index("PLACE")
    send(widget, type="drill", request_id=1, panel="resid_pre", row=1, col=place)
    wait_idle(widget, 1)
    states, edges = computed_states(widget.session, widget.session.top("resid_pre"), widget.explorer.settings, "mean")
    assert len(states) == 2 and edges == {f"0|resid_pre|1|{place}": 1}
    assert states[1]["crumb"]["label"] == "PLACE by position"


def test_the_lens_of_template_prompts_is_by_span(widget):
    send(widget, type="set", request_id=5, key="site", value="lens")
    assert wait_idle(widget, 5)["state"] == "idle", widget.status
    lens_panel, dla_panel = widget.view["panels"]
    assert lens_panel["col_dim"] == "span" and lens_panel["cols"] == widget.session.labels
    assert dla_panel["cols"][-1] == "MLP"
