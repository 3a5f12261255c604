"""The edge graph (issue 29, part 1): senders, receivers, and which sender feeds which receiver, as MIB's
circuit track and EAP-IG define it, checked against a plain enumeration of every (sender, receiver) pair."""

from __future__ import annotations

import itertools

import pytest

import patchwidget as pw
from patchwidget.circuits.edges import edge_graph, numbers, outside_masks
from patchwidget.core.edge_pass import EdgeIndex


def plain_graph(n_layers, n_heads, n_kv, parallel=False):
    """Every (sender, receiver) pair kept by the rule, written out: a head's q/k/v input is fed by the
    embeddings and every component of an earlier layer; an MLP's input also by its own layer's heads (not
    where attention and MLP run in parallel); the logits by everything."""
    senders = [("embed", -1, None)]
    senders += [("head_out", la, h) for la in range(n_layers) for h in range(n_heads)]
    senders += [("mlp_out", la, None) for la in range(n_layers)]
    receivers = [("head_q", la, h) for la in range(n_layers) for h in range(n_heads)]
    receivers += [(s, la, h) for s in ("head_k", "head_v") for la in range(n_layers) for h in range(n_kv)]
    receivers += [("mlp_in", la, None) for la in range(n_layers)] + [("logits", n_layers, None)]
    kept = set()
    for (s_site, s_layer, s_head), (r_site, r_layer, r_head) in itertools.product(senders, receivers):
        same = r_site == "mlp_in" and s_site == "head_out" and s_layer == r_layer and not parallel
        feeds = s_layer < r_layer or same
        if feeds:
            kept.add(((s_site, s_layer, s_head), (r_site, r_layer, r_head)))
    return kept


def as_tuples(edges, n_layers):
    """The edges in ``plain_graph``'s terms: (site, layer, head), the embeddings at layer -1, the logits at
    ``n_layers``."""

    def key(cell):
        layer = {"embed": -1, "logits": n_layers}.get(cell.site, cell.layer)
        return (cell.site, layer, cell.head)

    return {(key(e.sender), key(e.receiver)) for e in edges}


SHAPES = [(1, 1, 1), (2, 2, 2), (3, 4, 2), (4, 4, 1), (12, 12, 12)]


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize(("n_layers", "n_heads", "n_kv"), SHAPES)
def test_the_graph_is_every_pair_the_rule_keeps(n_layers, n_heads, n_kv, parallel):
    edges = edge_graph(n_layers, n_heads, n_kv, parallel)
    assert len(edges) == len(set(edges))  # no edge twice
    assert as_tuples(edges, n_layers) == plain_graph(n_layers, n_heads, n_kv, parallel)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize(("n_layers", "n_heads", "n_kv"), SHAPES)
def test_the_engines_numbering_has_the_same_edges(n_layers, n_heads, n_kv, parallel):
    """The engine's (sender, receiver) numbers: each edge of the graph at its own place in ``exists``, once."""
    index = EdgeIndex(n_layers, n_heads, n_kv, parallel)
    edges = edge_graph(n_layers, n_heads, n_kv, parallel)
    places = {numbers(e, index) for e in edges}
    assert len(places) == len(edges)
    exists = index.exists
    assert int(exists.sum()) == len(edges) and all(bool(exists[s, r]) for s, r in places)
    none_kept = outside_masks([[], edges[:5]], index)
    assert bool((none_kept[0] == exists).all()) and int(none_kept[1].sum()) == len(edges) - 5


def test_gpt2_small_has_mibs_count():
    assert len(edge_graph(12, 12)) == 32491  # MIB's count for GPT-2 small


def test_an_edge_names_its_ends():
    e = pw.Edge(pw.Cell("head_out", 0, head=3), "logits")
    assert e.receiver == pw.Cell("logits") and e.label == "head_out L0 H3 -> logits"
    assert pw.Edge(pw.Cell("embed"), pw.Cell("mlp_in", 0)).sender == pw.Cell("embed")


@pytest.mark.parametrize(
    ("sender", "receiver", "message"),
    [
        (pw.Cell("head_q", 0, head=0), pw.Cell("mlp_in", 1), r"sender is one of"),
        (pw.Cell("head_out", 0, head=0), pw.Cell("head_out", 1, head=0), r"receiver is one of"),
        (pw.Cell("head_out", 1, head=0), pw.Cell("head_q", 1, head=2), r"must come before"),
        (pw.Cell("mlp_out", 1), pw.Cell("mlp_in", 1), r"must come before"),
        (pw.Cell("mlp_out", 2), pw.Cell("head_v", 1, head=0), r"must come before"),
        (pw.Cell("head_out", 0), pw.Cell("mlp_in", 1), r"a head for heads"),
        (pw.Cell("head_out", 0, head=1, pos=3), "logits", r"no position"),
        (pw.Cell("mlp_out", 0), pw.Cell("mlp_in"), r"give a layer"),
        ("embed", "logits", r"sender is one of"),
    ],
)
def test_bad_edges_are_refused(sender, receiver, message):
    with pytest.raises(pw.SettingsError, match=message):
        pw.Edge(sender, receiver)


def test_a_model_gives_its_own_graph(tiny_models):
    """edge_graph(model) reads the sizes, the key-value heads and the parallel residual from the model."""
    assert pw.edge_graph(tiny_models["gpt2-demo"]) == edge_graph(4, 4)
    assert pw.edge_graph(tiny_models["qwen2-gqa"]) == edge_graph(3, 4, 2)
    assert pw.edge_graph(tiny_models["gpt_neox"]) == edge_graph(3, 4, 4, parallel=True) != edge_graph(3, 4, 4)
    with pytest.raises(pw.SettingsError, match="n_layers and n_heads"):
        edge_graph(3)
