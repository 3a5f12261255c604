"""Edge faithfulness (issue 29, part 2): MIB's f(C) for a circuit of edges, each receiver given its own input.

Against the plain twin (``reference_edge_faithfulness``: the receivers' inputs summed edge by edge with hooks,
one run per pair and set), against node faithfulness where an edge set is a node set in disguise (every edge
out of the nodes kept), and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.circuits import faithfulness as F
from patchwidget.circuits.edges import edge_graph
from patchwidget.core.sites import model_info

from .close import near
from .reference import reference_edge_faithfulness

MODELS = ["gpt2-demo", "gpt_neox", "qwen2-gqa", "gemma-gqa", "llama"]


def _graph(model):
    return edge_graph(model)


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
    assert not ran


def _several(pairs, tok):
    """The pairs' answers as two or three tokens, the wrong answers as one or two: continuations of other
    lengths per side and per pair."""
    answers = [p.answer + (" and" if i % 2 else " and the") for i, p in enumerate(pairs)]
    wrongs = [p.wrong + (" and" if i % 2 == 0 else "") for i, p in enumerate(pairs)]
    ids = [[tok(a)["input_ids"], tok(w)["input_ids"]] for a, w in zip(answers, wrongs)]
    return answers, wrongs, ids


@pytest.mark.parametrize("model_name", ["gpt2-demo", "qwen2-gqa"])
@pytest.mark.parametrize("ablation", ["patch", "mean"])
def test_answers_of_several_tokens_match_the_twin(tiny_models, model_name, ablation):
    """Edges are corrupted at the prompt's positions; each continuation is scored whole in the patched run (the
    twin: each continuation appended, one hooked run each, the appended positions unedited)."""
    model = tiny_models[model_name]
    pairs = demo_data.ioi_pairs(3, seed=13)
    answers, wrongs, ids = _several(pairs, model.tokenizer)
    prompts = {**demo_data.as_prompts(pairs), "answer": answers, "wrong": wrongs}
    plain = [(c, k, a, w) for (c, k, _, _), (a, w) in zip(_plain_pairs(model, pairs), ids)]
    for edges in _random_edge_sets(_graph(model), np.random.default_rng(11), 2):
        got = pw.faithfulness(model, **prompts, circuit=edges, ablation=ablation, batch_size=4)
        kept = {(_tuple(e.sender), _tuple(e.receiver)) for e in edges}
        assert got == near(reference_edge_faithfulness(model._module, plain, kept, ablation), 1e-4)


def test_a_residual_that_is_not_the_senders_sum_is_refused(tiny_models, monkeypatch):
    """Every edge corrupted must give the corrupted run; where the senders' outputs are not what the residual
    sums (here: scaled by 1.01), faithfulness refuses instead of reporting a number."""
    model, prompts = tiny_models["gpt2-demo"], _prompts()
    real = F.sender_outputs
    monkeypatch.setattr(F, "sender_outputs", lambda *a: real(*a) * 1.01)
    with pytest.raises(pw.SettingsError, match="not the sum of the outputs edges carry"):
        pw.faithfulness(model, **prompts, circuit=_graph(model)[:10])


def _plain_pairs(model, pairs):
    tok = model.tokenizer
    return [
        (
            torch.tensor(tok(p.clean)["input_ids"]),
            torch.tensor(tok(p.corrupt)["input_ids"]),
            tok(p.answer)["input_ids"][0],
            tok(p.wrong)["input_ids"][0],
        )
        for p in pairs
    ]


def _tuple(cell):
    return (cell.site, cell.layer or 0, cell.head or 0)


def _random_edge_sets(graph, rng, n):
    """Random sets of kept edges, from a few edges to most of the graph: each receiver gets another mix."""
    sizes = [int(len(graph) * share) for share in rng.uniform(0.05, 0.95, n)]
    return [[graph[i] for i in sorted(rng.choice(len(graph), size, replace=False))] for size in sizes]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("ablation", ["patch", "mean"])
def test_edge_faithfulness_matches_the_plain_twin(tiny_models, model_name, ablation):
    """Random edge sets, so that receivers of one layer get different inputs, equal to the twin that sums each
    receiver's input edge by edge with hooks (one run per pair and set)."""
    model = tiny_models[model_name]
    pairs = demo_data.ioi_pairs(3, seed=13)
    plain, graph = _plain_pairs(model, pairs), _graph(model)
    for edges in _random_edge_sets(graph, np.random.default_rng(7), 3):
        got = pw.faithfulness(model, **demo_data.as_prompts(pairs), circuit=edges, ablation=ablation, batch_size=4)
        kept = {(_tuple(e.sender), _tuple(e.receiver)) for e in edges}
        want = reference_edge_faithfulness(model._module, plain, kept, ablation)
        assert got == near(want, 1e-4), len(edges)


def test_a_normalised_metric_matches_the_twin(tiny_models):
    """metric='logit_diff_norm' rescales each pair before the ratio, as node faithfulness does."""
    model = tiny_models["qwen2-gqa"]
    pairs = demo_data.ioi_pairs(3, seed=13)
    plain, graph = _plain_pairs(model, pairs), _graph(model)
    edges = _random_edge_sets(graph, np.random.default_rng(2), 1)[0]
    got = pw.faithfulness(model, **demo_data.as_prompts(pairs), circuit=edges, metric="logit_diff_norm")
    kept = {(_tuple(e.sender), _tuple(e.receiver)) for e in edges}
    assert got == near(reference_edge_faithfulness(model._module, plain, kept, metric="logit_diff_norm"), 1e-4)


def test_noise_corruption_gives_each_sample_its_own_row(tiny_models):
    """Corrupting by noise, each noise sample is a row of its own: edges out of a node set still equal that node
    circuit, and with every edge corrupted each row gives its noised run (checked inside, or refused)."""
    model = tiny_models["gpt2-demo"]
    prompts = _prompts()
    noised = {**prompts, "corrupt": pw.noise(positions=[0, 1, 2], samples=3)}
    info, graph = model_info(model), _graph(model)
    chosen = pw.faithfulness_nodes(info.n_layers, info.n_heads)[::2]
    got = pw.faithfulness(model, **noised, circuit=[e for e in graph if e.sender in chosen], batch_size=5)
    assert got == near(pw.faithfulness(model, **noised, circuit=chosen), 1e-4)
    assert abs(got) > 0.02


def test_one_edges_value_sent_to_every_receiver_is_caught(tiny_models, monkeypatch):
    """The comparison can fail: an engine that sends a dropped edge's corrupted value to every receiver of its
    sender (a node patch) disagrees with the twin."""
    model = tiny_models["gpt2-demo"]
    pairs = demo_data.ioi_pairs(3, seed=13)
    plain, graph = _plain_pairs(model, pairs), _graph(model)
    edges = [e for e in graph if e != pw.Edge(pw.Cell("head_out", 1, head=0), pw.Cell("head_q", 3, head=1))]
    kept = {(_tuple(e.sender), _tuple(e.receiver)) for e in edges}
    want = reference_edge_faithfulness(model._module, plain, kept)
    assert pw.faithfulness(model, **demo_data.as_prompts(pairs), circuit=edges) == near(want, 1e-4)
    real = F.outside_masks

    def everywhere(sets, index):
        out = real(sets, index)
        return out | (out.any(2, keepdim=True) & index.exists)  # a dropped edge's sender corrupted everywhere

    monkeypatch.setattr(F, "outside_masks", everywhere)
    assert pw.faithfulness(model, **demo_data.as_prompts(pairs), circuit=edges) != near(want, 1e-3)


def test_remote_local_gives_the_same_number(tiny_models):
    """remote='local' (nnsight's serialisation of a remote request, run here) computes the same edge passes."""
    model, prompts = tiny_models["gpt2-demo"], _prompts()
    edges = _random_edge_sets(_graph(model), np.random.default_rng(4), 1)[0]
    here = pw.faithfulness(model, **prompts, circuit=edges)
    assert pw.faithfulness(model, **prompts, circuit=edges, remote="local") == near(here, 1e-5)
