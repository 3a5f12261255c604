"""Copy code (issue 39, item 6): the code a level gives reproduces, run as it is, the values the widget shows."""

from __future__ import annotations

import numpy as np
import pytest

import patchwidget as pw
from patchwidget.ui.levels import Level

from .close import assert_close, near
from .test_widget import PAIRS, TEXTS, send, wait_idle


def run(code: str) -> dict:
    """Run the copied code in a fresh namespace, as a notebook cell would."""
    namespace: dict = {}
    exec(compile(code, "<copied code>", "exec"), namespace)  # the code the page offers, run as it is
    return namespace


@pytest.fixture(scope="module")
def widget():
    w = pw.explore(pw.load_model(), **TEXTS, preview=False)
    yield w
    w.close()


def show(widget, request_id, level):
    """Put ``level`` on show, as clicks would, and return the view."""
    widget.explorer.pending[request_id] = ([widget.explorer.levels[0], level], widget.explorer.settings)
    widget.session.submit(request_id, level, widget.explorer.settings)
    assert wait_idle(widget, request_id, timeout=120)["state"] == "idle", widget.status
    return widget.view


def values(panel) -> np.ndarray:
    return np.array(panel["values"], dtype=float)


def test_the_first_grid(widget):
    code = widget.view["code"]
    assert code.startswith("import patchwidget as pw") and "model = pw.load_model()" in code
    got = run(code)["resid_pre"]
    assert_close(got.values, values(widget.view["panels"][0]), 1e-5)


@pytest.mark.parametrize(
    "level, names",
    [
        (Level("heads", layer=3, pos=13), {"head_out": "head_out"}),
        (Level("head", layer=3, head=1), {"components": None}),
        (Level("feeds", layer=3, head=1), {"head_q": "head_q", "head_k": "head_k", "head_v": "head_v"}),
        (Level("direct", layer=3, head=1), {"logits": "logits"}),
    ],
)
def test_each_grid_level(widget, level, names):
    view = show(widget, 10 + list(pw.ui.levels.LEVELS).index(level.kind), level)
    got = run(view["code"])
    panels = {p["id"]: p for p in view["panels"]}
    if level.kind == "head":  # the breakdown's rows are the q, k, v and out grids at the layer and head
        rows = np.stack([got[s].values[0, 0] for s in ("head_q", "head_k", "head_v", "head_out")])
        assert_close(rows, values(panels["components"]), 1e-5)
        assert_close(got["patterns"][0], values(panels["pattern"]), 1e-5)
        return
    for panel, name in names.items():
        shown = values(panels[panel])
        assert_close(got[name].values.reshape(shown.shape), shown, 1e-5)  # one layer: the panel drops its axis


def test_the_lens(widget):
    view = show(widget, 25, Level("lens", site="lens"))
    got = run(view["code"])
    lens, dla = got["logit_lens"], got["dla"]
    own = lens.clean_baseline
    assert_close((lens.per_pair / own[:, None, None]).mean(0), values(view["panels"][0]), 1e-5)
    assert_close((dla.per_pair / own[:, None, None]).mean(0), values(view["panels"][1])[:, :-1], 1e-5)


def test_the_searches(widget):
    view = show(widget, 30, Level("circuit", target=0.9))
    circuit = run(view["code"])["circuit"]
    assert circuit.cells == widget.circuit.cells
    assert circuit.faithfulness == near(widget.circuit.faithfulness, 1e-6)
    view = show(widget, 31, Level("search", target=0.8))
    bottleneck = run(view["code"])["bottleneck"]
    assert bottleneck.cells == widget.circuit.cells and bottleneck.restore == near(widget.circuit.restore, 1e-6)


def test_prompts_from_a_template_are_written_as_the_template(demo):
    t = pw.Template("When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to")
    clean = [t.fill(IO="Mary", S1="John", PLACE="store", S2="John")]
    corrupt = [t.fill(IO="Mary", S1="John", PLACE="silver castle", S2="Anna")]
    w = pw.explore(demo, clean, corrupt, answer="Mary", wrong="John", preview=False)
    try:
        code = w.view["code"]
        assert "pw.Template('When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to').fill(" in code
        assert_close(run(code)["resid_pre"].values, values(w.view["panels"][0]), 1e-5)
    finally:
        w.close()


def test_the_code_holds_every_pair(widget):
    assert f"{PAIRS[1].clean!r}" in widget.view["code"]
    send(widget, type="set", request_id=50, key="pair", value=1)
    wait_idle(widget, 50)
    assert "prompts = dict(" in widget.view["code"]  # all pairs: the mean and each pair come from one run


def test_a_circuit_of_edges_and_one_edge_of_it(widget):
    """The circuit of edges is find_circuit(level='edges'); an edge's level, pw.edge_scores' exact score of it
    (the table's last row) and the path patching into its receiver (the grid)."""
    send(widget, type="set", request_id=60, key="pair", value="mean")  # the module's widget: as the first grid
    wait_idle(widget, 60)
    view = show(widget, 61, Level("circuit", target=0.9, edges=True))
    assert "level='edges'" in view["code"]
    circuit = run(view["code"])["circuit"]
    assert circuit.edges == widget.circuit.edges and circuit.faithfulness == near(widget.circuit.faithfulness, 1e-6)
    edge = pw.Edge(pw.Cell("mlp_out", 2), pw.Cell("head_v", 3, head=1))
    view = show(widget, 62, Level("edge", cells=(edge.sender, edge.receiver)))
    got = run(view["code"])
    table, grid = view["panels"]
    assert got["edge_score"] == near(table["values"][2][0], 1e-5)
    assert_close(got["head_v"].values, values(grid), 1e-5)  # normalised in the code, as the widget shows it
