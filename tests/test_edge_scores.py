"""Edge scores (issue 29, part 3): every edge corrupted alone, exactly, against the plain twin; the result type."""

from __future__ import annotations

import numpy as np
import pytest

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.circuits import edge_exact
from patchwidget.circuits import faithfulness as F
from patchwidget.circuits.edge_attribution import edge_attribution
from patchwidget.circuits.edges import numbers
from patchwidget.core.edge_pass import EdgeIndex

from .close import assert_close, near
from .reference import reference_edge_score
from .test_edge_faithfulness import _plain_pairs, _tuple

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

MODELS = ["gpt2-demo", "gpt_neox", "qwen2-gqa", "gemma-gqa", "llama"]


def _sample(graph, rng, per_kind=2):
    """A few edges into each kind of receiver, from each kind of sender where there is one."""
    chosen = []
    for receiver in ("head_q", "head_k", "head_v", "mlp_in", "logits"):
        for sender in ("embed", "head_out", "mlp_out"):
            kind = [e for e in graph if e.receiver.site == receiver and e.sender.site == sender]
            chosen += [kind[i] for i in rng.choice(len(kind), min(per_kind, len(kind)), replace=False)]
    return chosen


@pytest.fixture(scope="module")
def scored(tiny_models):
    """Each model's exact scores on three IOI pairs, both ablations (computed once per module)."""
    pairs = demo_data.ioi_pairs(3, seed=13)
    prompts = demo_data.as_prompts(pairs)
    return {
        (name, ablation): pw.edge_scores(tiny_models[name], **prompts, ablation=ablation, batch_size=16)
        for name in MODELS
        for ablation in ("patch", "mean")
    }


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("ablation", ["patch", "mean"])
def test_exact_scores_match_the_plain_twin(tiny_models, scored, model_name, ablation):
    """Edges into every kind of receiver from every kind of sender: the score is the twin's, one hooked run per
    pair with that edge alone corrupted."""
    model = tiny_models[model_name]
    pairs = demo_data.ioi_pairs(3, seed=13)
    plain, scores = _plain_pairs(model, pairs), scored[(model_name, ablation)]
    assert len(scores) == len(pw.edge_graph(model))
    sample = _sample(scores.edges, np.random.default_rng(1)) + [e for e, _ in scores.top(3)]
    got = [scores.score(e) for e in sample]
    want = [
        reference_edge_score(model._module, plain, (_tuple(e.sender), _tuple(e.receiver)), ablation) for e in sample
    ]
    assert_close(got, want, 1e-4, err_msg=str([e.label for e in sample]))
    assert max(abs(w) for w in want) > 0.05  # edges that matter are among them


def test_every_exact_score_equals_edge_faithfulness_m(tiny_models, scored):
    """All of the demo model's edges: each score equals m(G without it) - m(G) from the edge faithfulness pass
    (``measure_edges``), a second engine path through other code."""
    model = tiny_models["gpt2-demo"]
    prompts = demo_data.as_prompts(demo_data.ioi_pairs(3, seed=13))
    scores = scored[("gpt2-demo", "patch")]
    runs = F.circuit_runs(
        model, **prompts, ablation="patch", metric="logit_diff", batch_size=64, memory_budget=None, progress=None,
        remote=False,
    )  # fmt: skip
    graph = scores.edges
    m = runs.measure_edges([[x for x in graph if x != e] for e in graph])
    assert_close(scores.values, (m.mean(1) - runs.clean.mean()).numpy(), 1e-4)


def test_a_delta_sent_to_the_wrong_head_is_caught(tiny_models, monkeypatch):
    """The comparison can fail: an engine that gives an edge's changed query to the next head disagrees."""
    model = tiny_models["gpt2-demo"]
    pairs = demo_data.ioi_pairs(3, seed=13)
    prompts, plain = demo_data.as_prompts(pairs), _plain_pairs(model, pairs)
    real = edge_exact._receiver_values
    monkeypatch.setattr(edge_exact, "_receiver_values", lambda *a: real(*a).roll(1, dims=3))
    scores = pw.edge_scores(model, **prompts)
    edges = [e for e, _ in scores.top(20) if e.receiver.site in ("head_q", "head_k", "head_v")]
    edge = pw.Edge(pw.Cell("mlp_out", 2), pw.Cell("head_v", 3, head=1))
    want = reference_edge_score(model._module, plain, (_tuple(edge.sender), _tuple(edge.receiver)))
    assert scores.score(edge) != near(want, 1e-2), edges


def test_the_result_ranks_saves_and_loads(scored, tmp_path):
    scores = scored[("qwen2-gqa", "patch")]
    top = scores.top(5)
    assert [abs(v) for _, v in top] == sorted((abs(v) for _, v in top), reverse=True)
    assert abs(top[0][1]) == max(abs(scores.values))
    frame = scores.to_dataframe()
    assert list(frame.columns) == ["sender", "receiver", "score"] and len(frame) == len(scores)
    again = pw.EdgeScores.load(scores.save(tmp_path / "scores.json"))
    assert again.edges == scores.edges and again.method == "exact"
    assert np.array_equal(again.values, scores.values) and again.provenance["ablation"] == "patch"
    with pytest.raises(pw.SettingsError, match="not an edge of this graph"):
        scores.score(pw.Edge(pw.Cell("head_out", 0, head=0), pw.Cell("head_q", 2, head=7)))
    (tmp_path / "bad.json").write_text('{"format": "patchwidget.edge_scores", "version": 1, "edges": [[{}]]}')
    with pytest.raises(pw.ResultFileError, match="malformed"):
        pw.EdgeScores.load(tmp_path / "bad.json")


def test_refused_before_compute(tiny_models, monkeypatch):
    model = tiny_models["gpt2-demo"]
    prompts = demo_data.as_prompts(demo_data.ioi_pairs(2, seed=1))
    monkeypatch.setattr(F, "cached_runs", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(pw.SettingsError, match="method"):
        pw.edge_scores(model, **prompts, method="acdc")
    with pytest.raises(pw.SettingsError, match="not for this 'gptj' model"):
        pw.edge_scores(tiny_models["gptj"], **prompts)


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_first_order_methods_give_edge_attribution_per_edge(tiny_models, scored, method):
    """method='eap' / 'eap-ig' are edge_attribution's scores (tested against their twin in
    test_edge_attribution), one per edge of the graph, and they follow the exact scores' ranking."""
    model = tiny_models["gpt2-demo"]
    prompts = demo_data.as_prompts(demo_data.ioi_pairs(3, seed=13))
    got = pw.edge_scores(model, **prompts, method=method, steps=3)
    runs = F.circuit_runs(
        model, **prompts, ablation="patch", metric="logit_diff", batch_size=64, memory_budget=None, progress=None,
        remote=False,
    )  # fmt: skip
    table = edge_attribution(runs, method, 3)
    index = EdgeIndex.of(runs.request.info)
    assert_close(got.values, [float(table[numbers(e, index)]) for e in got.edges], 1e-6)
    assert got.method == method and (got.provenance.get("steps") == 3) == (method == "eap-ig")
    exact = scored[("gpt2-demo", "patch")]
    top = {e for e, _ in exact.top(10)}
    assert len(top & {e for e, _ in got.top(20)}) >= 5, (method, [e.label for e, _ in got.top(20)])


def test_steps_refused_before_compute(tiny_models, monkeypatch):
    model = tiny_models["gpt2-demo"]
    monkeypatch.setattr(F, "cached_runs", lambda *a, **k: pytest.fail("ran"))
    prompts = demo_data.as_prompts(demo_data.ioi_pairs(2, seed=1))
    with pytest.raises(pw.SettingsError, match="steps must be an integer of at least 1"):
        pw.edge_scores(model, **prompts, method="eap-ig", steps=0)


@pytest.mark.parametrize("model_name", ["gpt2-demo", "qwen2-gqa"])
def test_exact_scores_of_answers_of_several_tokens_match_the_twin(tiny_models, model_name):
    """Several-token answers: each edge's copy writes at the prompt's positions and its continuations are scored
    in the patched run; the logits' edges go through the edge pass (the continuation reads them too)."""
    from .test_edge_faithfulness import _several

    model = tiny_models[model_name]
    pairs = demo_data.ioi_pairs(3, seed=13)
    answers, wrongs, ids = _several(pairs, model.tokenizer)
    prompts = {**demo_data.as_prompts(pairs), "answer": answers, "wrong": wrongs}
    plain = [(c, k, a, w) for (c, k, _, _), (a, w) in zip(_plain_pairs(model, pairs), ids)]
    scores = pw.edge_scores(model, **prompts, batch_size=16)
    sample = _sample(scores.edges, np.random.default_rng(5), per_kind=1) + [e for e, _ in scores.top(3)]
    want = [reference_edge_score(model._module, plain, (_tuple(e.sender), _tuple(e.receiver))) for e in sample]
    assert_close([scores.score(e) for e in sample], want, 1e-4, err_msg=str([e.label for e in sample]))
    assert max(abs(w) for w in want) > 0.05
