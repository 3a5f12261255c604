"""Edge faithfulness (issue 29, part 2): MIB's f(C) for a circuit of edges, each receiver given its own input.

Against the plain twin (``reference_edge_faithfulness``: the receivers' inputs summed edge by edge with hooks,
one run per pair and set), against node faithfulness where an edge set is a node set in disguise (every edge
out of the nodes kept), and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.circuits import faithfulness as F
from patchwidget.circuits.edges import edge_graph
from patchwidget.core.sites import model_info

from .close import near

MODELS = ["gpt2-demo", "gpt_neox", "qwen2-gqa", "gemma-gqa", "llama"]


def _graph(model):
    info = model_info(model)
    return edge_graph(info.n_layers, info.n_heads, info.n_kv_heads, info.parallel_residual)


def _prompts(n=3, seed=13):
    return demo_data.as_prompts(demo_data.ioi_pairs(n, seed=seed))


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("ablation", ["patch", "mean"])
def test_the_edges_out_of_a_node_set_are_that_node_circuit(tiny_models, model_name, ablation):
    """Keeping every edge out of the nodes S is keeping S: what the others send is corrupted wherever it goes.
    So edge f equals node f (itself checked against its twin in test_faithfulness), on sets that do something."""
    model, prompts = tiny_models[model_name], _prompts()
    info, graph = model_info(model), _graph(model)
    nodes = pw.faithfulness_nodes(info.n_layers, info.n_heads)
    rng = np.random.default_rng(3)
    seen = []
    for _ in range(3):
        chosen = [nodes[0]] + [
            nodes[i] for i in sorted(rng.choice(np.arange(1, len(nodes)), len(nodes) // 2, replace=False))
        ]
        edges = [e for e in graph if e.sender in chosen]
        got = pw.faithfulness(model, **prompts, circuit=edges, ablation=ablation, batch_size=4)
        want = pw.faithfulness(model, **prompts, circuit=chosen, ablation=ablation)
        assert got == near(want, 1e-4), [c.label for c in chosen]
        seen.append(want)
    assert max(abs(f) for f in seen) > 0.02  # the sets do something: a broken pass could not pass by giving 0
    assert pw.faithfulness(model, **prompts, circuit=graph, ablation=ablation) == near(1.0, 1e-4)


def test_refused_before_compute(tiny_models, monkeypatch):
    model, prompts = tiny_models["gpt2-demo"], _prompts()
    ran = []
    monkeypatch.setattr(F, "cached_runs", lambda *a, **k: ran.append(1))
    head = pw.Cell("head_out", 0, head=1)
    cases = [
        ([pw.Edge(head, pw.Cell("head_q", 9, head=0))], "this model has 4 layers of 4 heads"),
        ([pw.Edge(head, pw.Cell("head_k", 2, head=7))], "not one of its components"),
        ([pw.Edge(head, "logits"), head], "not both"),
    ]
    for circuit, message in cases:
        with pytest.raises(pw.SettingsError, match=message):
            pw.faithfulness(model, **prompts, circuit=circuit)
    neox = tiny_models["gpt_neox"]
    with pytest.raises(pw.SettingsError, match="in parallel"):
        pw.faithfulness(neox, **prompts, circuit=[pw.Edge(head, pw.Cell("mlp_in", 0))])
    with pytest.raises(pw.SettingsError, match="not for this 'gptj' model"):
        pw.faithfulness(tiny_models["gptj"], **prompts, circuit=[pw.Edge(head, "logits")])
    several = {**prompts, "answer": [a + " and" for a in prompts["answer"]]}
    with pytest.raises(pw.SettingsError, match="one-token answers"):
        pw.faithfulness(model, **several, circuit=[pw.Edge(head, "logits")])
    assert not ran


def test_a_residual_that_is_not_the_senders_sum_is_refused(tiny_models, monkeypatch):
    """Every edge corrupted must give the corrupted run; where the senders' outputs are not what the residual
    sums (here: scaled by 1.01), faithfulness refuses instead of reporting a number."""
    model, prompts = tiny_models["gpt2-demo"], _prompts()
    real = F.sender_outputs
    monkeypatch.setattr(F, "sender_outputs", lambda *a: real(*a) * 1.01)
    with pytest.raises(pw.SettingsError, match="not the sum of the outputs edges carry"):
        pw.faithfulness(model, **prompts, circuit=_graph(model)[:10])
