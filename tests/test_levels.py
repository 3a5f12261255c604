"""The table of drill-down levels: every entry labels, computes, draws and opens as it says."""

from __future__ import annotations

import numpy as np
import pytest

from patchwidget.core.cells import Cell
from patchwidget.ui.levels import LEVELS, N_TOP_NEURONS, Display, Level
from patchwidget.ui.session import Session, Settings

from .close import assert_close, near
from .test_widget import PAIRS, TEXTS

TOKENS_OF_PAIR_0 = PAIRS[0].clean.split()


@pytest.fixture(scope="module")
def session(demo):
    s = Session(demo, **TEXTS, preview=False)
    yield s
    s.close()


def test_every_kind_is_one_entry(session):
    assert set(LEVELS) == {
        "top",
        "span",
        "heads",
        "head",
        "feeds",
        "direct",
        "neurons",
        "search",
        "circuit",
        "edge",
        "joint",
        "says",
        "lens",
    }
    for kind, entry in LEVELS.items():
        assert callable(entry.label) and callable(entry.compute) and callable(entry.panels), kind


@pytest.mark.parametrize(
    "level,label,panel_shapes",
    [
        (Level("top", site="resid_pre"), "resid_pre", [("resid_pre", 4, 14)]),
        (Level("top", site="head_out"), "head_out", [("head_out", 4, 4)]),
        (Level("heads", layer=2, pos=9), "L2 heads", [("head_out", 4, 14)]),
        (Level("head", layer=1, head=2), "L1 H2", [("components", 4, 14), ("pattern", 14, 14)]),
        (Level("neurons", layer=0, pos=9), f"L0 neurons at {TOKENS_OF_PAIR_0[9]!r}", [("neurons", N_TOP_NEURONS, 1)]),
        (Level("feeds", layer=2, head=1), "what feeds L2 H1", [("head_q", 4, 4), ("head_k", 4, 4), ("head_v", 4, 4)]),
        (Level("direct", layer=2, head=1), "direct to logits", [("logits", 4, 4)]),
        (Level("circuit", target=0.9), "find circuit (target 0.9)", [("circuit", 5, 5), ("curve", 1, 10)]),
    ],
)
def test_each_level_computes_and_draws_its_panels(session, level, label, panel_shapes):
    tokens = session.prompts.tokens
    assert level.label(tokens) == label
    computed = LEVELS[level.kind].compute(level, _patcher(session))
    panels = LEVELS[level.kind].panels(computed, Display(tokens, "mean"))
    assert [(p["id"], len(p["rows"]), len(p["cols"])) for p in panels] == panel_shapes
    for p in panels:
        assert np.array(p["values"], dtype=float).shape == (len(p["rows"]), len(p["cols"]))


def test_clicks_open_the_narrower_level(session):
    opens = lambda level, panel, row, col: LEVELS[level.kind].opens(level, {"id": panel}, row, col, session.info)
    assert opens(Level("top", "resid_pre"), "resid_pre", 2, 9) == Level("heads", "resid_pre", layer=2, pos=9)
    assert opens(Level("top", "mlp_out"), "mlp_out", 1, 3) == Level("neurons", "mlp_out", layer=1, pos=3)
    assert opens(Level("top", "head_out"), "head_out", 3, 1) == Level("head", "head_out", layer=3, head=1)
    assert opens(Level("heads", layer=2, pos=9), "head_out", 1, 4) == Level("head", layer=2, head=1)
    assert opens(Level("head", layer=1, head=2), "components", 0, 0) == Level("feeds", layer=1, head=2)  # q
    assert opens(Level("head", layer=1, head=2), "components", 3, 5) == Level("direct", layer=1, head=2)  # out
    assert opens(Level("head", layer=1, head=2), "pattern", 0, 0) is None
    assert opens(Level("feeds", layer=2, head=1), "head_k", 0, 3) == Level("head", layer=0, head=3)  # upstream
    assert opens(Level("neurons", layer=0, pos=9), "neurons", 0, 0) is None
    # The circuit diagram: the last layer on top, heads then the MLP, the embeddings in the last row.
    found = Level("circuit", target=0.9)
    assert opens(found, "circuit", 0, 1) == Level("head", layer=3, head=1)
    assert opens(found, "circuit", 3, 4) == Level("top", site="mlp_out")
    assert opens(found, "circuit", 4, 0) is None and opens(found, "curve", 0, 3) is None
    # A circuit of edges adds the logits on top: the rows move down one, and the logits open the direct path.
    edges = Level("circuit", target=0.9, edges=True)
    assert opens(edges, "circuit", 0, 0) == Level("direct")
    assert opens(edges, "circuit", 1, 1) == Level("head", layer=3, head=1)
    assert opens(edges, "circuit", 4, 4) == Level("top", site="mlp_out")
    assert opens(edges, "circuit", 5, 0) is None  # the embeddings


def test_the_cell_under_a_click_comes_from_indices_not_labels(session):
    level = Level("neurons", layer=0, pos=9)
    computed = LEVELS["neurons"].compute(level, _patcher(session))
    (panel,) = LEVELS["neurons"].panels(computed, Display(session.prompts.tokens))
    panel = {**panel, "rows": ["not a label" for _ in panel["rows"]]}  # labels are never read back
    effects = np.abs(computed.results["mlp_neuron"].values[0])
    cell = session.cell(level, panel, 0, 0)
    assert cell == Cell("mlp_neuron", 0, neuron=int(np.argmax(effects)), pos=9)
    assert session.cell(Level("head", layer=1, head=2), {"id": "pattern"}, 0, 0) is None
    assert session.cell(Level("heads", layer=2), {"id": "head_out"}, 3, 5) == Cell("head_out", 2, head=3, pos=5)


def _patcher(session):
    from patchwidget.ui.session import _Patcher

    return _Patcher(session, Settings(), lambda done, total: None)


def test_what_feeds_a_head_is_path_patching_into_its_query_key_and_value(session, demo):
    import patchwidget as pw

    # L3H1 reads the IOI name through its value (examples/ioi_workshop.ipynb): a receiver with something to show.
    computed = LEVELS["feeds"].compute(Level("feeds", layer=3, head=1), _patcher(session))
    direct = pw.path_patch(
        demo, **TEXTS, receivers=[Cell("head_v", 3, head=1)]
    )  # the session computes in the one default metric
    assert_close(computed.results["head_v"].per_pair, direct.per_pair, 1e-6)
    assert np.nanmax(np.abs(direct.values)) > 0.1
    assert np.isnan(computed.results["head_q"].values[3:]).all()  # no path from at or above layer 3


# --- a circuit of edges, and one edge of it ---------------------------------------------------------------


def place(cell: Cell) -> tuple[int, int]:
    """Where the diagram of the demo model's circuit of edges puts a node (4 layers of 4 heads): the logits on
    top, then L3 ... L0, each layer's heads then its MLP, the embeddings last; a head's q/k/v at that head."""
    if cell.site == "logits":
        return (0, 0)
    if cell.site == "embed":
        return (5, 0)
    return (4 - cell.layer, 4 if cell.site in ("mlp_out", "mlp_in") else cell.head)


def test_a_circuit_of_edges_is_its_nodes_and_its_edges_as_lines_between_them(session, demo):
    import patchwidget as pw

    level = Level("circuit", target=0.9, edges=True)
    assert level.label([]) == "find circuit of edges (target 0.9)"
    computed = LEVELS["circuit"].compute(level, _patcher(session))
    direct = pw.find_circuit(demo, **TEXTS, target=0.9, level="edges", method="exact")  # the widget's method
    assert computed.circuit.edges == direct.edges and len(direct.edges) > 3
    nodes, edges, curve = LEVELS["circuit"].panels(computed, Display(session.prompts.tokens))
    assert nodes["title"].startswith(f"Circuit of {len(direct.edges)} edges: on their own")
    assert nodes["rows"] == ["logits", "L3", "L2", "L1", "L0", "embed"] and nodes["kind"] == "nodes"
    assert nodes["absent"][0] == nodes["absent"][-1] == [False, True, True, True, True]
    assert all(v is None for row in nodes["values"] for v in row)  # the scores are the edges'
    joined = {place(c) for e in direct.edges for c in (e.sender, e.receiver)}
    assert {(r, c) for r, row in enumerate(nodes["kept"]) for c, kept in enumerate(row) if kept} == joined
    assert edges["kind"] == "edges" and edges["on"] == "circuit" and edges["clickable"]
    assert edges["rows"] == [e.label for e in direct.edges]
    assert edges["cols"] == ["ranking score (exact)"]
    assert_close(np.array(edges["values"], dtype=float)[:, 0], np.array(direct.edge_values), 1e-5)
    assert edges["ends"] == [[list(place(e.sender)), list(place(e.receiver))] for e in direct.edges]
    assert edges["receivers"] == [e.receiver.site for e in direct.edges]
    assert curve["title"] == "Faithfulness of the top-ranked edges, at MIB's circuit sizes"
    assert curve["cols"][-1].endswith(" edges)")
    # Every edge opens its own level: the click carries the row, the edge comes from the panel's fields.
    for row, edge in enumerate(direct.edges):
        assert session.drill(level, edges, row, 0) == Level("edge", cells=(edge.sender, edge.receiver))


def test_under_grouped_query_attention_a_key_value_head_is_drawn_at_the_first_head_of_its_group():
    from patchwidget.circuits.circuit import Circuit
    from patchwidget.ui.circuit_view import Layout, circuit_panels, receiver_words

    layout = Layout(n_layers=2, n_heads=4, n_kv_heads=2, logits=True)
    assert layout.place(Cell("head_v", 1, head=1)) == (1, 2) and layout.place(Cell("head_q", 1, head=1)) == (1, 1)
    assert receiver_words(Cell("head_k", 1, head=1), layout) == "the key of key-value head 1 of layer 1"
    edge = pw_edge(Cell("head_out", 0, head=3), Cell("head_k", 1, head=1))
    curve = {"percent": [100], "size": [1], "faithfulness": [1.0], "cpr": 1.0, "cmd": 0.0}
    shape = {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2}
    found = Circuit([], provenance={"shape": shape, "method": "eap-ig"}, faithfulness=1.0, reached=True,
                    curve=curve, edges=[edge], edge_values=[-0.5])  # fmt: skip
    _, edges, _ = circuit_panels(found, 0.9)
    assert edges["ends"] == [[[2, 3], [1, 2]]] and edges["cols"] == ["ranking score (eap-ig)"]
    assert edges["tips"] == [["key-value head 1 of layer 1 serves heads H2-H3: drawn at H2"]]
    assert edges["opens_to"] == ["its exact score, and path patching into the key of key-value head 1 of layer 1"]


def pw_edge(sender: Cell, receiver: Cell):
    from patchwidget.circuits.edges import Edge

    return Edge(sender, receiver)


@pytest.mark.parametrize(
    "sender, receiver, grid",
    [
        (Cell("head_out", 3, head=1), Cell("logits"), "logits"),
        (Cell("mlp_out", 2), Cell("head_v", 3, head=1), "head_v"),
        (Cell("head_out", 1, head=0), Cell("mlp_in", 2), None),
    ],
)
def test_an_edge_opens_its_exact_score_and_path_patching_into_it(session, demo, exact, sender, receiver, grid):
    import patchwidget as pw

    edge = pw_edge(sender, receiver)
    level = Level("edge", cells=(sender, receiver))
    assert level.label([]) == f"edge {edge.label}"
    computed = LEVELS["edge"].compute(level, _patcher(session))
    panels = LEVELS["edge"].panels(computed, Display(session.prompts.tokens))
    table, *grids = panels
    assert table["kind"] == "table" and table["id"] == "edge"
    clean, without, score = (row[0] for row in table["values"])
    assert score == near(exact.score(edge), 1e-4)  # pw.edge_scores(method="exact"), as its note says
    assert score == near(without - clean, 1e-5) and abs(score) > 1e-3
    assert table["title"] == f"Edge {edge.label}: exact score {score:.3f} (logit_diff)"
    if grid is None:  # into an MLP: the score, and why no path patching
        assert grids == [] and "Path patching into an MLP is not offered" in table["note"]
        return
    (shown,) = grids
    direct = pw.path_patch(demo, **TEXTS, receivers="logits" if grid == "logits" else [receiver])
    assert shown["id"] == grid and shown["clickable"]
    assert_close(computed.results[grid].per_pair, direct.per_pair, 1e-6)
    if sender.site == "head_out":  # the sender outlined in the grid
        assert shown["mark_cell"] == [sender.layer, sender.head] and "Outlined" in shown["note"]
    else:
        assert "mark_cell" not in shown and "is not a head" in shown["note"]
    assert session.drill(level, shown, 1, 0) == Level("head", layer=1, head=0)  # a sender opens its breakdown


@pytest.fixture(scope="module")
def exact(demo):
    import patchwidget as pw

    return pw.edge_scores(demo, **TEXTS, method="exact")


def test_a_circuit_that_kept_very_many_edges_draws_its_largest_and_says_so(monkeypatch):
    from patchwidget.circuits.circuit import Circuit
    from patchwidget.circuits.edges import edge_graph
    from patchwidget.ui import circuit_view

    graph = edge_graph(2, 2)  # 46 edges, ranked as find_circuit ranks them: largest |score| first
    curve = {"percent": [100], "size": [46], "faithfulness": [1.0], "cpr": 1.0, "cmd": 0.0}
    about = {"shape": {"n_layers": 2, "n_heads": 2}, "method": "exact"}
    scores = [-1.0 / (i + 1) for i in range(46)]
    found = Circuit([], provenance=about, faithfulness=1.0, reached=False, curve=curve, edges=graph, edge_values=scores)
    monkeypatch.setattr(circuit_view, "MAX_DRAWN_EDGES", 10)
    nodes, edges, _ = circuit_view.circuit_panels(found, 0.9)
    assert edges["rows"] == [e.label for e in graph[:10]] and len(edges["ends"]) == len(edges["edges"]) == 10
    assert "the 10 edges of largest |score| of the circuit's 46" in edges["note"]
    assert nodes["title"].startswith("Circuit of 46 edges") and all(map(any, nodes["kept"]))
