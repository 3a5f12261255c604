"""find_circuit(level="edges") (issue 29, part 4): the smallest top-ranked set of edges whose exact edge
faithfulness reaches the target, its curve at MIB's sizes, and circuits of edges in files."""

from __future__ import annotations

import json

import pytest

import patchwidget as pw
from patchwidget import demo_data

from .close import near
from .reference import reference_areas, reference_edge_faithfulness
from .test_edge_faithfulness import _plain_pairs, _tuple

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

L3H1_LOGITS = pw.Edge(pw.Cell("head_out", 3, head=1), "logits")


@pytest.fixture(scope="module")
def found(demo):
    train = demo_data.as_prompts(demo_data.ioi_pairs(8, seed=1))
    return {m: pw.find_circuit(demo, **train, level="edges", target=0.9, method=m) for m in ("attribution", "exact")}


@pytest.mark.parametrize("method", ["attribution", "exact"])
def test_the_bundled_models_ioi_edge_circuit(demo, found, method):
    """At target 0.9: at most 10 % of the edges, L3H1 -> logits among them, 0.9 on held-out pairs too."""
    circuit = found[method]
    graph = pw.edge_graph(demo)
    assert circuit.reached and circuit.faithfulness >= 0.9
    assert len(circuit.edges) <= 0.1 * len(graph), len(circuit.edges)
    assert L3H1_LOGITS in circuit.edges
    held_out = demo_data.as_prompts(demo_data.ioi_pairs(8, seed=2))
    assert circuit.faithfulness_on(demo, **held_out) >= 0.9
    assert circuit.provenance["search"] == {"target": 0.9, "level": "edges"}
    assert circuit.provenance["method"] == ("eap-ig" if method == "attribution" else "exact")


def test_the_circuit_is_the_smallest_on_the_way_and_its_number_is_the_twins(demo, found):
    """Its f is edge faithfulness of its edges (and the plain twin's); one edge fewer falls short."""
    circuit = found["attribution"]
    pairs = demo_data.ioi_pairs(8, seed=1)
    prompts = demo_data.as_prompts(pairs)
    assert pw.faithfulness(demo, **prompts, circuit=circuit) == near(circuit.faithfulness, 1e-6)
    kept = {(_tuple(e.sender), _tuple(e.receiver)) for e in circuit.edges}
    assert reference_edge_faithfulness(demo._module, _plain_pairs(demo, pairs), kept) == near(
        circuit.faithfulness, 1e-4
    )
    fewer = circuit.curve["ranked"][: len(circuit.edges) - 1]
    assert pw.faithfulness(demo, **prompts, circuit=fewer) < 0.9
    assert circuit.curve["ranked"][: len(circuit.edges)] == circuit.edges


def test_the_curve_is_f_at_mibs_sizes_with_cpr_and_cmd(demo, found):
    circuit = found["exact"]
    prompts = demo_data.as_prompts(demo_data.ioi_pairs(8, seed=1))
    c = circuit.curve
    assert c["kind"] == "faithfulness" and len(c["ranked"]) == len(pw.edge_graph(demo))
    for k, f in list(zip(c["size"], c["faithfulness"]))[4:7]:
        assert pw.faithfulness(demo, **prompts, circuit=c["ranked"][:k]) == near(f, 1e-5), k
    cpr, cmd = reference_areas(c["percent"], c["faithfulness"])
    assert (c["cpr"], c["cmd"]) == (near(cpr, 1e-9), near(cmd, 1e-9))


def test_an_edge_circuit_saves_loads_and_refuses_node_methods(demo, found, tmp_path):
    circuit = found["attribution"]
    path = circuit.save(tmp_path / "edges.json")
    assert json.loads(path.read_text())["version"] == 3  # a reader of version 2 refuses it, as it should
    again = pw.Circuit.load(path)
    assert again.edges == circuit.edges and again.edge_values == pytest.approx(circuit.edge_values)
    assert again.curve["ranked"] == circuit.curve["ranked"] and again.faithfulness == circuit.faithfulness
    assert again.cells == circuit.cells == list(dict.fromkeys(e.sender for e in circuit.edges))
    held_out = demo_data.as_prompts(demo_data.ioi_pairs(4, seed=3))
    assert again.faithfulness_on(demo, **held_out) == near(circuit.faithfulness_on(demo, **held_out), 1e-9)
    for call in (
        lambda: again.evaluate(demo, **held_out),
        lambda: again.knockout(demo, held_out["clean"]),
        lambda: again.sources(demo, held_out["clean"][0]),
    ):
        with pytest.raises(pw.SettingsError, match="this is a circuit of edges"):
            call()
    nodes = pw.Circuit([pw.Cell("head_out", 3, head=1)])
    assert json.loads(nodes.save(tmp_path / "nodes.json").read_text())["version"] == 2


def test_refused_before_compute(demo, monkeypatch):
    from patchwidget.circuits import faithfulness as F

    monkeypatch.setattr(F, "cached_runs", lambda *a, **k: pytest.fail("ran"))
    prompts = demo_data.as_prompts(demo_data.ioi_pairs(2, seed=1))
    with pytest.raises(pw.SettingsError, match="method"):
        pw.find_circuit(demo, **prompts, level="edges", method="acdc")
    with pytest.raises(pw.SettingsError, match="level"):
        pw.find_circuit(demo, **prompts, level="paths")


def test_the_diagram_draws_every_edge(found):
    """circuit.plot() of a circuit of edges: one line per edge, as wide as its score is large, red where
    corrupting it lowers the metric."""
    from matplotlib.collections import LineCollection

    circuit = found["attribution"]
    fig = circuit.plot(show=False)
    (lines,) = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    assert len(lines.get_segments()) == len(circuit.edges)
    widths = lines.get_linewidths()
    biggest = max(range(len(circuit.edges)), key=lambda i: abs(circuit.edge_values[i]))
    assert widths[biggest] == max(widths)
    assert f"{len(circuit.edges)} edges" in fig.axes[0].get_title()


def test_generate_refuses_a_circuit_of_edges(demo, found):
    """pw.generate patches nodes; a circuit of edges' cells are its senders, so generating under them would be
    another circuit's continuation: refused, in the words the widget shows beside its button."""
    from patchwidget.circuits.generate import EDGES_REFUSED
    from patchwidget.ui.levels import EDGE_CIRCUIT_SAYS

    prompts = demo_data.as_prompts(demo_data.ioi_pairs(2, seed=3))
    with pytest.raises(pw.SettingsError, match="this circuit is of edges"):
        pw.generate(demo, prompts["clean"], prompts["corrupt"], circuit=found["attribution"])
    assert EDGE_CIRCUIT_SAYS == EDGES_REFUSED
