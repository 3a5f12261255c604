"""The plain twin of edge faithfulness in tests/reference.py, checked on its own: the empty and full edge sets are
the corrupted and clean runs, a circuit of all of some nodes' edges is that node circuit under the node twin, a
receiver whose every edge is dropped is that receiver patched under the patching twin, and routing a dropped
edge's delta to every receiver (a node patch) is caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchwidget import demo_data
from patchwidget.circuits.edges import edge_graph

from . import reference as R
from .close import assert_close, near

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

MODELS = ["gpt2-demo", "gpt_neox", "llama", "qwen2-gqa", "gemma-gqa"]


def _pairs(model, n=3, seed=13, several=False):
    """(clean_ids, corrupt_ids, answer, wrong), prompts of one length; ``several``: answers of two tokens."""
    tok = model.tokenizer
    out = []
    for p in demo_data.ioi_pairs(n, seed=seed):
        a, w = tok(p.answer)["input_ids"][0], tok(p.wrong)["input_ids"][0]
        if several:
            a, w = [a, w], [w, a]
        out.append((torch.tensor(tok(p.clean)["input_ids"]), torch.tensor(tok(p.corrupt)["input_ids"]), a, w))
    return out


def _nodes(hf):
    cfg = hf.config
    heads = [("head_out", layer, h) for layer in range(cfg.num_hidden_layers) for h in range(cfg.num_attention_heads)]
    return [R.EMBED, *heads, *[("mlp_out", layer, 0) for layer in range(cfg.num_hidden_layers)]]


def _node_sets(hf, rng, n):
    nodes = _nodes(hf)
    sizes = [int(rng.integers(1, len(nodes))) for _ in range(n)]
    return [{nodes[i] for i in rng.choice(len(nodes), size, replace=False)} for size in sizes]


def _edges_of(graph, senders):
    """Every edge out of ``senders``: the edge circuit that is the node circuit ``senders``."""
    return {(u, r) for u, r in graph if u in senders}


@pytest.mark.parametrize("model_name", MODELS)
def test_the_empty_and_full_edge_sets_are_the_corrupted_and_clean_runs(tiny_models, model_name):
    hf = tiny_models[model_name]._module
    graph = R.reference_edge_graph(hf)
    for clean, corrupt, a, w in _pairs(tiny_models[model_name], 2):
        values = R.reference_sender_outputs(hf, corrupt)
        empty = R.reference_edge_metric(hf, clean, values, set(), a, w)
        full = R.reference_edge_metric(hf, clean, values, graph, a, w)
        assert_close(empty, R._plain_diff(hf, corrupt, a, w), 1e-5)
        assert_close(full, R._plain_diff(hf, clean, a, w), 1e-5)
    clean, corrupt, a, w = _pairs(tiny_models[model_name], 1, several=True)[0]  # the full set, several tokens
    full = R.reference_edge_metric(hf, clean, R.reference_sender_outputs(hf, corrupt), graph, a, w)
    assert_close(full, R.continuation_diff(hf, clean, a, w), 1e-5)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("ablation", ["patch", "mean"])
def test_all_edges_out_of_some_nodes_are_that_node_circuit(tiny_models, model_name, ablation):
    hf = tiny_models[model_name]._module
    pairs, graph = _pairs(tiny_models[model_name]), R.reference_edge_graph(hf)
    for nodes in _node_sets(hf, np.random.default_rng(0), 2):
        got = R.reference_edge_faithfulness(hf, pairs, _edges_of(graph, nodes), ablation)
        want = R.reference_faithfulness(hf, pairs, {u: None for u in nodes}, ablation)
        assert got == near(want, 1e-4), sorted(nodes)


@pytest.mark.parametrize("model_name", ["gpt_neox", "qwen2-gqa"])
def test_node_equivalence_also_normalised_and_with_answers_of_several_tokens(tiny_models, model_name):
    hf = tiny_models[model_name]._module
    graph = R.reference_edge_graph(hf)
    (nodes,) = _node_sets(hf, np.random.default_rng(1), 1)
    kept = {u: None for u in nodes}
    pairs = _pairs(tiny_models[model_name])
    got = R.reference_edge_faithfulness(hf, pairs, _edges_of(graph, nodes), "mean", metric="logit_diff_norm")
    assert got == near(R.reference_faithfulness(hf, pairs, kept, "mean", metric="logit_diff_norm"), 1e-4)
    several = _pairs(tiny_models[model_name], 2, several=True)  # the continuation's positions are left unedited
    got = R.reference_edge_faithfulness(hf, several, _edges_of(graph, nodes))
    assert got == near(R.reference_faithfulness(hf, several, kept), 1e-4)


# Receivers at layer 1 (every tiny model has 3 layers or more), each with every edge into it dropped: its input is
# then the corrupted run's, so it is that receiver patched from the corrupted prompt.
# Head 3's query reads key-value head 1 under qwen2-gqa's two. The demo model's heads L1H1-L1H3 are dead (an output
# of 1e-9), so only head 0's receivers and the MLP's are asked to move the metric.
RECEIVERS = [("head_q", 1, 0), ("head_k", 1, 0), ("head_v", 1, 0), ("mlp_in", 1, 0)]
MORE_RECEIVERS = [("head_q", 1, 3), ("head_k", 1, 1), ("head_v", 1, 1)]


@pytest.mark.parametrize("model_name", MODELS)
def test_a_receiver_with_every_edge_dropped_is_that_receiver_patched(tiny_models, model_name):
    """Ties the receivers' indexing (fused [q | k | v] of GPT-2, per-head [q | k | v] of GPT-NeoX, key-value heads
    under grouped-query attention) to ``reference_patch``'s ``site_hooks``."""
    hf = tiny_models[model_name]._module
    sizes, graph = R.Sizes(hf.config), R.reference_edge_graph(hf)
    clean, corrupt, a, w = _pairs(tiny_models[model_name], 1)[0]
    values = R.reference_sender_outputs(hf, corrupt)
    seen = []
    for site, layer, unit in RECEIVERS + MORE_RECEIVERS:
        if site in ("head_k", "head_v") and unit >= sizes.kv:
            continue
        edges = {(u, r) for u, r in graph if r != (site, layer, unit)}
        got = R.reference_edge_metric(hf, clean, values, edges, a, w)
        patched_site, patched_unit = ("mlp_out", 0) if site == "mlp_in" else (site, unit)
        logits = R.reference_patch(hf, corrupt, clean, patched_site, [layer], [patched_unit], range(len(clean)), False)
        want = float(logits[0, 0, 0, a] - logits[0, 0, 0, w])
        assert got == near(want, 1e-5), (site, layer, unit)
        seen.append(got)
    full = R._plain_diff(hf, clean, a, w)
    assert all(abs(v - full) > 1e-4 for v in seen[: len(RECEIVERS)]), "a receiver whose dropped edges change nothing"


@pytest.mark.parametrize("model_name", ["gpt2-demo", "llama", "gemma-gqa"])
def test_a_dropped_edges_delta_sent_to_every_receiver_is_caught(tiny_models, model_name, monkeypatch):
    """The full set less one edge differs from the full set less all of its sender's edges; routing the dropped
    edge's delta to every receiver the sender feeds (what editing the residual stream does) gives the latter."""
    hf = tiny_models[model_name]._module
    pairs, graph = _pairs(tiny_models[model_name]), R.reference_edge_graph(hf)
    sender, receiver = ("head_out", 0, 3), ("mlp_in", 1, 0)  # L0H3: one of the demo model's three live heads
    edges = set(graph) - {(sender, receiver)}
    honest = R.reference_edge_faithfulness(hf, pairs, edges)
    node = R.reference_faithfulness(hf, pairs, {u: None for u in _nodes(hf) if u != sender})
    assert abs(honest - 1.0) > 1e-3 and abs(honest - node) > 1e-3, (honest, node)

    def everywhere(senders, edges, receiver):  # a sender with any edge dropped sends its delta to every receiver
        dropped = {u for u, r in graph if (u, r) not in edges}
        return [u for u in senders if u in dropped]

    monkeypatch.setattr(R, "_missing", everywhere)
    perturbed = R.reference_edge_faithfulness(hf, pairs, edges)
    assert perturbed == near(node, 1e-4) and abs(perturbed - honest) > 1e-3


@pytest.mark.parametrize("model_name", ["qwen2-gqa", "gemma-gqa"])
def test_key_value_receivers_are_one_per_key_value_head(tiny_models, model_name):
    hf = tiny_models[model_name]._module
    sizes, graph = R.Sizes(hf.config), R.reference_edge_graph(hf)
    assert sizes.kv < sizes.h
    for site, count in (("head_q", sizes.h), ("head_k", sizes.kv), ("head_v", sizes.kv)):
        assert {r[2] for _, r in graph if r[:2] == (site, 2)} == set(range(count))
    pairs = _pairs(tiny_models[model_name], 2)
    full = R.reference_edge_faithfulness(hf, pairs, graph)
    values = {}
    for site in ("head_k", "head_v"):
        for kvh in range(sizes.kv):
            edge = (("head_out", 0, 3), (site, 2, kvh))
            values[site, kvh] = R.reference_edge_faithfulness(hf, pairs, set(graph) - {edge})
            assert abs(values[site, kvh] - full) > 1e-4, (site, kvh)
    if sizes.kv > 1:  # each key-value head its own receiver
        assert abs(values["head_k", 0] - values["head_k", 1]) > 1e-4
        assert abs(values["head_v", 0] - values["head_v", 1]) > 1e-4
    with pytest.raises(AssertionError, match="not an edge"):
        R.reference_edge_faithfulness(hf, pairs, {(R.EMBED, ("head_k", 0, sizes.kv))})


def test_the_graph_respects_the_parallel_residual_and_refuses_what_it_cannot_do(tiny_models):
    neox, llama = tiny_models["gpt_neox"]._module, tiny_models["llama"]._module
    assert neox.config.use_parallel_residual
    n_layers, n_heads = neox.config.num_hidden_layers, neox.config.num_attention_heads
    assert len(R.reference_edge_graph(llama)) == len(R.reference_edge_graph(neox)) + n_layers * n_heads
    assert (("head_out", 0, 0), ("mlp_in", 1, 0)) in R.reference_edge_graph(neox)
    pairs = _pairs(tiny_models["gpt_neox"], 1)
    with pytest.raises(AssertionError, match="parallel residual"):
        R.reference_edge_faithfulness(neox, pairs, {(("head_out", 1, 0), ("mlp_in", 1, 0))})
    with pytest.raises(AssertionError, match="shared ln_1"):
        R.reference_edge_graph(tiny_models["gptj"]._module)


def _tuple(cell):
    return (cell.site, cell.layer or 0, cell.head or 0)


@pytest.mark.parametrize("model_name", MODELS)
def test_the_graph_is_the_packages(tiny_models, model_name):
    """The same edges, in the same order, as patchwidget's edge_graph (GPT-2 small's 32,491 as MIB counts them);
    under a parallel residual (GPT-NeoX) without a layer's heads into its own MLP."""
    hf = tiny_models[model_name]._module
    sizes = R.Sizes(hf.config)
    parallel = bool(getattr(hf.config, "use_parallel_residual", False))
    edges = edge_graph(hf.config.num_hidden_layers, sizes.h, sizes.kv, parallel)
    package = [(_tuple(e.sender), _tuple(e.receiver)) for e in edges]
    assert R.reference_edge_graph(hf) == package
