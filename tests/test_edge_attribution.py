"""First-order edge scores (EAP, EAP-IG): against the plain twin, which takes each edge's score as a directional
derivative (r's own input plus t * delta_u, one backward pass per edge, pair and step), on GPT-2, Qwen2-GQA and
GPT-NeoX (parallel residual); the gradient at the shared residual, or without the norm's Jacobian, gives other
numbers; answers of several tokens (the continuation's log-probabilities differentiated, on the tree rows); EAP's
ranking follows exact single-edge patching; the refusals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.circuits import edge_attribution as EA
from patchwidget.circuits import faithfulness as F
from patchwidget.circuits.edge_attribution import edge_attribution
from patchwidget.circuits.edges import edge_graph, numbers
from patchwidget.core.edge_pass import EdgeIndex, sender_outputs
from patchwidget.core.runs import with_noise
from patchwidget.core.sites import model_info

from .close import assert_close, near, scale
from .reference import reference_edge_attribution, reference_sender_outputs
from .test_edge_faithfulness import _plain_pairs, _several, _tuple

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

STEPS = 3
RECEIVERS = ("head_q", "head_k", "head_v", "mlp_in", "logits")
SENDERS = ("embed", "head_out", "mlp_out")


def _runs(model, prompts, metric="logit_diff"):
    return F.circuit_runs(
        model, **prompts, ablation="patch", metric=metric, batch_size=8, memory_budget=None, progress=None,
        remote=False,
    )  # fmt: skip


def _twin_edges(edges):
    return [(_tuple(e.sender), _tuple(e.receiver)) for e in edges]


def _graph(model):
    info = model_info(model)
    return edge_graph(info.n_layers, info.n_heads, info.n_kv_heads, info.parallel_residual)


def _sample(model, plain, rng):
    """One edge of every (sender kind, receiver kind) the graph has, its sender one whose output differs between
    the clean and corrupted prompts (the bundled model's silent heads score 0 however a method is wrong)."""
    live = set()
    for clean, corrupt, *_ in plain:
        before, after = reference_sender_outputs(model._module, clean), reference_sender_outputs(model._module, corrupt)
        live |= {u for u in before if float((after[u] - before[u]).abs().max()) > 1e-4}
    out = []
    for receiver in RECEIVERS:
        for sender in SENDERS:
            kind = [e for e in _graph(model) if (e.sender.site, e.receiver.site) == (sender, receiver)]
            kind = [e for e in kind if _tuple(e.sender) in live] or kind
            if kind:
                out.append(kind[int(rng.integers(len(kind)))])
    return out


def _scores(model, runs, edges, method, steps=STEPS):
    index = EdgeIndex.of(runs.request.info)
    scores = edge_attribution(runs, method, steps=steps)
    return torch.tensor([float(scores[numbers(e, index)]) for e in edges])


@pytest.mark.parametrize("model_name", ["gpt2-demo", "qwen2-gqa", "gpt_neox"])
def test_eap_and_eap_ig_match_the_plain_twin(tiny_models, model_name):
    """Every receiver kind (q, k, v per key-value head, MLP, logits) from every sender kind, both methods."""
    model = tiny_models[model_name]
    pairs = demo_data.ioi_pairs(2, seed=13)
    plain = _plain_pairs(model, pairs)
    edges = _sample(model, plain, np.random.default_rng(5))
    assert {e.receiver.site for e in edges} == set(RECEIVERS) and {e.sender.site for e in edges} == set(SENDERS)
    runs = _runs(model, demo_data.as_prompts(pairs))
    scores = edge_attribution(runs, "eap")
    index = EdgeIndex.of(runs.request.info)
    assert scores.dtype == torch.float32 and not bool(scores[~index.exists].any())
    for method in ("eap", "eap-ig"):
        got = _scores(model, runs, edges, method)
        want = reference_edge_attribution(model._module, plain, _twin_edges(edges), method, steps=STEPS)
        assert_close(got, want, 1e-4, err_msg=f"{method}: {[e.label for e in edges]}")
        assert int((want.abs() > 1e-3 * scale(want)).sum()) >= 5, want  # the sample has scores to compare


def _noised_rows(model, runs, plain, samples=2):
    """The twin's rows for a noise corruption of ``samples`` samples a pair: each clean prompt as its own
    corrupted one, with the noise the runs drew for that row added to its embeddings."""
    _, noise = with_noise(model, runs.request.info, runs.request.prompts)
    return [
        (clean, clean, a, w, noise[row, : len(clean)].float())
        for row, (clean, _, a, w) in enumerate(p for p in plain for _ in range(samples))
    ]


def test_a_normalised_metric_and_noise_rows_match_the_twin(tiny_models):
    """logit_diff_norm: each pair in its own clean-minus-corrupted units. Noise: each sample a row of its own,
    averaged per pair (the twin, given the same noise, averages its rows)."""
    model = tiny_models["qwen2-gqa"]
    pairs = demo_data.ioi_pairs(2, seed=13)
    plain = _plain_pairs(model, pairs)
    edges = _sample(model, plain, np.random.default_rng(8))
    runs = _runs(model, demo_data.as_prompts(pairs), metric="logit_diff_norm")
    want = reference_edge_attribution(model._module, plain, _twin_edges(edges), "eap", metric="logit_diff_norm")
    assert_close(_scores(model, runs, edges, "eap"), want, 1e-4)
    noised = {**demo_data.as_prompts(pairs), "corrupt": pw.noise(positions=[1, 2, 3], samples=2, seed=3)}
    runs = _runs(model, noised)
    want = reference_edge_attribution(
        model._module, _noised_rows(model, runs, plain), _twin_edges(edges), "eap-ig", steps=STEPS
    )
    assert_close(_scores(model, runs, edges, "eap-ig"), want, 1e-4)


def test_the_split_input_is_what_is_differentiated(tiny_models, monkeypatch):
    """The comparison can fail. The twin's gradient at the shared residual r reads (which every later component
    reads too) is other numbers than at r's own input, on some head receivers; and a package that forgets the
    norm's Jacobian when pulling a gradient back to a receiver's input disagrees with the twin."""
    model = tiny_models["gpt2-demo"]
    pairs = demo_data.ioi_pairs(2, seed=13)
    plain = _plain_pairs(model, pairs)
    edges = [e for e in _sample(model, plain, np.random.default_rng(5)) if e.receiver.site.startswith("head_")]
    runs = _runs(model, demo_data.as_prompts(pairs))
    got = _scores(model, runs, edges, "eap")
    split = reference_edge_attribution(model._module, plain, _twin_edges(edges), "eap")
    shared = reference_edge_attribution(model._module, plain, _twin_edges(edges), "eap", split=False)
    assert_close(got, split, 1e-4)
    assert float((got - shared).abs().max()) > 1e-2 * scale(split), (got, shared)
    monkeypatch.setattr(EA, "norm_vjp", lambda parts, x, v: v)
    assert float((_scores(model, runs, edges, "eap") - split).abs().max()) > 1e-2 * scale(split)


def _several_tokens(model, n=3):
    """IOI pairs with answers of two or three tokens and wrong answers of one or two (``_several``): the package's
    prompts and the twin's pairs (answers as lists of ids)."""
    pairs = demo_data.ioi_pairs(n, seed=13)
    answers, wrongs, ids = _several(pairs, model.tokenizer)
    prompts = {**demo_data.as_prompts(pairs), "answer": answers, "wrong": wrongs}
    return prompts, [(c, k, a, w) for (c, k, _, _), (a, w) in zip(_plain_pairs(model, pairs), ids)]


@pytest.mark.parametrize("model_name", ["gpt2-demo", "qwen2-gqa"])
def test_answers_of_several_tokens_match_the_twin(tiny_models, model_name):
    """The metric is log p(answer | prompt) - log p(wrong | prompt) over the continuations' tokens, its gradient
    taken on the tree rows (one pass per batch) at every receiver's own input at the prompt's positions; the twin
    runs each continuation appended, its own hooked run, and takes the derivative of the difference. EAP-IG
    moves the prompt's embeddings only."""
    model = tiny_models[model_name]
    prompts, plain = _several_tokens(model)
    assert {len(a) for _, _, a, _ in plain} == {2, 3} and {len(w) for _, _, _, w in plain} == {1, 2}
    edges = list(dict.fromkeys(e for seed in (5, 6) for e in _sample(model, plain, np.random.default_rng(seed))))
    assert {e.receiver.site for e in edges} == set(RECEIVERS)
    runs = _runs(model, prompts)
    assert runs.directed.target_ext is not None  # the tree rows, not one-token answers
    for method in ("eap", "eap-ig"):
        got = _scores(model, runs, edges, method)
        want = reference_edge_attribution(model._module, plain, _twin_edges(edges), method, steps=STEPS)
        print(f"{model_name} {method}: max |got - want| / scale = {float((got - want).abs().max()) / scale(want):.2e}")
        assert_close(got, want, 1e-4, err_msg=f"{method}: {[e.label for e in edges]}")
        assert int((want.abs() > 1e-3 * scale(want)).sum()) >= 5, want


def test_several_tokens_with_a_normalised_metric_and_noise_rows(tiny_models):
    """Several-token answers under logit_diff_norm (each pair in its clean-minus-corrupted units of the sequence
    metric) and with noise rows (each sample its own row, the noise on the prompt's embeddings only)."""
    model = tiny_models["gpt2-demo"]
    prompts, plain = _several_tokens(model)
    edges = _sample(model, plain, np.random.default_rng(5))
    runs = _runs(model, prompts, metric="logit_diff_norm")
    want = reference_edge_attribution(model._module, plain, _twin_edges(edges), "eap-ig", STEPS, "logit_diff_norm")
    assert_close(_scores(model, runs, edges, "eap-ig"), want, 1e-4)
    runs = _runs(model, {**prompts, "corrupt": pw.noise(positions=[1, 2, 3], samples=2, seed=3)})
    want = reference_edge_attribution(
        model._module, _noised_rows(model, runs, plain), _twin_edges(edges), "eap-ig", steps=STEPS
    )
    assert_close(_scores(model, runs, edges, "eap-ig"), want, 1e-4)
    assert float(want.abs().max()) > 0.1


def test_the_continuation_is_differentiated(tiny_models):
    """The comparison can fail: the gradient of the last prompt token's logit difference alone (every read of the
    continuations dropped, so the first tokens' log-probabilities, whose normaliser cancels) is the twin's for
    the answers' first tokens, and other numbers than the twin's for the whole answers."""
    model = tiny_models["gpt2-demo"]
    prompts, plain = _several_tokens(model)
    edges = _sample(model, plain, np.random.default_rng(5))
    runs = _runs(model, prompts)
    whole = reference_edge_attribution(model._module, plain, _twin_edges(edges), "eap")
    assert_close(_scores(model, runs, edges, "eap"), whole, 1e-4)
    ext = runs.directed.target_ext
    first = ext.sign * (ext.reads == ext.reads[:, :1])  # only the reads at the prompt's last token
    cut = replace(runs, directed=replace(runs.directed, target_ext=replace(ext, sign=first)))
    got = _scores(model, cut, edges, "eap")
    firsts = [(c, k, a[0], w[0]) for c, k, a, w in plain]
    assert_close(got, reference_edge_attribution(model._module, firsts, _twin_edges(edges), "eap"), 1e-4)
    assert float((got - whole).abs().max()) > 1e-2 * scale(whole), (got, whole)


def test_edge_scores_and_edge_circuits_take_answers_of_several_tokens(tiny_models):
    """pw.edge_scores(method="eap-ig") and find_circuit(level="edges") (ranked by EAP-IG) run with several-token
    answers: the scores are edge_attribution's, the circuit's f is edge faithfulness's of its edges."""
    model = tiny_models["gpt2-demo"]
    prompts, _ = _several_tokens(model)
    got = pw.edge_scores(model, **prompts, method="eap-ig", steps=STEPS)
    table = edge_attribution(_runs(model, prompts), "eap-ig", steps=STEPS)
    index = EdgeIndex.of(model_info(model))
    assert_close(got.values, [float(table[numbers(e, index)]) for e in got.edges], 1e-6)
    assert np.abs(got.values).max() > 0.05
    found = pw.find_circuit(model, **prompts, level="edges", target=0.8)
    assert found.provenance["method"] == "eap-ig" and 0 < len(found.edges) <= len(got.edges)
    assert found.faithfulness == near(pw.faithfulness(model, **prompts, circuit=found.edges), 1e-6)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float) for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def test_eap_ranks_edges_as_exact_patching_does(tiny_models):
    """EAP and EAP-IG against exact single-edge scores (mean over pairs of m(graph without e) - m(graph), from
    measure_edges) on 60 edges from senders whose output the corruption changes. The bundled model is sparse: most of
    them are near 0 in both, where float noise would set the ranks: the rank correlation is taken over
    the edges where either score is above 1e-3 of its largest."""
    model = tiny_models["gpt2-demo"]
    runs = _runs(model, demo_data.as_prompts(demo_data.ioi_pairs(3, seed=13)))
    info, graph = runs.request.info, _graph(model)
    index = EdgeIndex.of(info)
    d = runs.directed
    changed = (sender_outputs(model, info, d.source) - sender_outputs(model, info, d.target)).abs().amax((0, 1, 3))
    candidates = [e for e in graph if float(changed[numbers(e, index)[0]]) > 1e-3]
    edges = [candidates[i] for i in np.random.default_rng(0).choice(len(candidates), 60, replace=False)]
    exact = (runs.measure_edges([[f for f in graph if f != e] for e in edges]) - runs.clean).mean(1).numpy()
    for method in ("eap", "eap-ig"):
        scores = edge_attribution(runs, method, steps=5)
        estimate = np.array([float(scores[numbers(e, index)]) for e in edges])
        big = (np.abs(exact) > 1e-3 * np.abs(exact).max()) | (np.abs(estimate) > 1e-3 * np.abs(estimate).max())
        rho = _spearman(estimate[big], exact[big])
        pearson = float(np.corrcoef(estimate, exact)[0, 1])
        message = f"{method}: Spearman {rho:.3f} over {int(big.sum())} edges, Pearson {pearson:.3f} over all 60"
        print(message)
        assert big.sum() >= 8 and rho > 0.5, message


def test_refused_before_compute(tiny_models, monkeypatch):
    model = tiny_models["gpt2-demo"]
    prompts = demo_data.as_prompts(demo_data.ioi_pairs(2, seed=13))
    runs = _runs(model, prompts)
    ran = []
    monkeypatch.setattr(EA, "_gradients", lambda *a, **k: ran.append(1))
    with pytest.raises(pw.SettingsError, match="unknown method"):
        edge_attribution(runs, "eap_ig")
    with pytest.raises(pw.SettingsError, match="steps must be"):
        edge_attribution(runs, "eap-ig", steps=0)
    with pytest.raises(pw.SettingsError, match="not for this 'gptj' model"):
        edge_attribution(_runs(tiny_models["gptj"], prompts), "eap")
    with torch.inference_mode(), pytest.raises(pw.SettingsError, match="inference_mode"):
        edge_attribution(runs, "eap")
    assert not ran
