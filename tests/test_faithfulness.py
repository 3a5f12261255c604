"""Faithfulness as MIB defines it (issue 27), against its plain twin in tests/reference.py, and the
node circuits find_circuit returns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.circuits import faithfulness as F

from .close import assert_close, near
from .reference import reference_areas, reference_faithfulness

MODELS = ["gpt2-demo", "gpt_neox", "qwen2-gqa"]


def _plain(model, pairs):
    tok = model.tokenizer
    out = []
    for p in pairs:
        a, w = tok(p.answer)["input_ids"][0], tok(p.wrong)["input_ids"][0]
        out.append((torch.tensor(tok(str(p.clean))["input_ids"]), torch.tensor(tok(str(p.corrupt))["input_ids"]), a, w))
    return out


def _key(cell):
    return ("embed", 0, 0) if cell.site == "embed" else (cell.site, cell.layer, cell.head or 0)


def _kept(cells, n_pos=None):
    kept = {}
    for c in cells:
        if c.pos is None:
            kept[_key(c)] = None
        elif kept.get(_key(c), set()) is not None:
            kept[_key(c)] = kept.get(_key(c), set()) | {c.pos}
    return kept


def _random_sets(model, rng, n):
    cfg = model.config
    nodes = pw.faithfulness_nodes(cfg.num_hidden_layers, cfg.num_attention_heads)
    sets = [[], nodes]
    for _ in range(n):
        size = int(rng.integers(1, len(nodes)))
        sets.append([nodes[i] for i in sorted(rng.choice(len(nodes), size, replace=False))])
    return sets


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("ablation", ["patch", "mean"])
def test_faithfulness_matches_the_plain_twin_on_random_node_sets(tiny_models, model_name, ablation):
    model = tiny_models[model_name]
    pairs = demo_data.ioi_pairs(3, seed=13)
    plain = _plain(model, pairs)
    for cells in _random_sets(model, np.random.default_rng(0), 4):
        got = pw.faithfulness(model, **demo_data.as_prompts(pairs), circuit=cells, ablation=ablation, batch_size=7)
        want = reference_faithfulness(model._module, plain, _kept(cells), ablation)
        assert got == near(want, 1e-4), [c.label for c in cells]
    assert pw.faithfulness(model, **demo_data.as_prompts(pairs), circuit=[], ablation=ablation) == 0.0


@pytest.mark.parametrize("model_name", ["gpt_neox", "qwen2-gqa"])
@pytest.mark.parametrize("ablation", ["patch", "mean"])
def test_a_normalised_metric_gives_the_normalised_f(tiny_models, model_name, ablation):
    """metric='logit_diff_norm': each pair's metric rescaled (clean 1, corrupted 0), then MIB's ratio of
    means; once silently the raw logit difference's f, a different number (issue 37, item 2)."""
    model = tiny_models[model_name]
    pairs = demo_data.ioi_pairs(3, seed=13)
    plain, prompts = _plain(model, pairs), demo_data.as_prompts(pairs)
    apart = 0.0
    for cells in _random_sets(model, np.random.default_rng(1), 3)[2:]:
        got = pw.faithfulness(model, **prompts, circuit=cells, ablation=ablation, metric="logit_diff_norm")
        want = reference_faithfulness(model._module, plain, _kept(cells), ablation, metric="logit_diff_norm")
        raw = reference_faithfulness(model._module, plain, _kept(cells), ablation)
        assert got == near(want, 1e-4), [c.label for c in cells]
        apart = max(apart, abs(want - raw))
    assert apart > 1e-3, "the sets chosen do not tell the two metrics apart"


def test_find_circuit_under_a_normalised_metric_stops_on_that_metric(tiny_models):
    model = tiny_models["gpt_neox"]
    pairs = demo_data.ioi_pairs(3, seed=13)
    plain = _plain(model, pairs)
    found = pw.find_circuit(model, **demo_data.as_prompts(pairs), target=0.9, metric="logit_diff_norm")
    assert found.provenance["metric"] == "logit_diff_norm"
    for k, f in zip(found.curve["size"], found.curve["faithfulness"]):
        kept = _kept(found.curve["ranked"][:k])
        assert f == near(reference_faithfulness(model._module, plain, kept, metric="logit_diff_norm"), 1e-4), k
    want = reference_faithfulness(model._module, plain, _kept(found.cells), metric="logit_diff_norm")
    assert found.faithfulness == near(want, 1e-4)
    raw = reference_faithfulness(model._module, plain, _kept(found.cells))
    assert abs(want - raw) > 1e-3, "this circuit does not tell the two metrics apart"


def test_nodes_kept_at_some_positions_only(demo):
    pairs = demo_data.ioi_pairs(3, seed=2)
    cells = [
        pw.Cell("embed", pos=9),
        pw.Cell("head_out", 0, head=3, pos=9),
        pw.Cell("head_out", 1, head=0, pos=10),
        pw.Cell("head_out", 1, head=0, pos=9),
        pw.Cell("head_out", 3, head=1, pos=-1),
        *[pw.Cell("mlp_out", layer) for layer in range(4)],
    ]
    got = pw.faithfulness(demo, **demo_data.as_prompts(pairs), circuit=cells)
    want = reference_faithfulness(demo._module, _plain(demo, pairs), _kept(cells))
    assert got == near(want, 1e-4) and 0.05 < abs(got) < 10  # a number with power, not 0 or 1


def test_prompts_of_different_lengths_across_pairs(demo):
    """Three sentence shapes (14 and 16 tokens) in one request; a node kept at a span is kept at each pair's own
    positions of it."""
    t = pw.Template("{START} {IO} and {S1} {EVENT} the {PLACE} , {S2} gave a drink to")
    fills = [("When", "went to"), ("After", "arrived at"), ("Then", "had fun at")]
    prompts = dict(clean=[], corrupt=[], answer=[], wrong=[])
    for (start, event), (io, s1) in zip(fills, [("Mary", "John"), ("Anna", "Tom"), ("Kate", "Paul")]):
        fill = dict(START=start, IO=io, S1=s1, EVENT=event, PLACE="store")
        prompts["clean"].append(t.fill(S2=s1, **fill))
        prompts["corrupt"].append(t.fill(S2=io, **fill))
        prompts["answer"].append(io)
        prompts["wrong"].append(s1)
    lengths = {len(demo.tokenizer(str(p))["input_ids"]) for p in prompts["clean"]}
    assert len(lengths) > 1
    tok = demo.tokenizer
    plain = [
        (
            torch.tensor(tok(str(c))["input_ids"]),
            torch.tensor(tok(str(x))["input_ids"]),
            tok(a)["input_ids"][0],
            tok(w)["input_ids"][0],
        )
        for c, x, a, w in zip(*prompts.values())
    ]
    for cells in (
        [pw.Cell("embed"), pw.Cell("head_out", 3, head=1), pw.Cell("mlp_out", 2)],
        pw.faithfulness_nodes(4, 4)[:9],
    ):
        got = pw.faithfulness(demo, **prompts, circuit=cells)
        assert got == near(reference_faithfulness(demo._module, plain, _kept(cells)), 1e-4)
    spans = [pw.Cell("embed", pos="S2"), pw.Cell("head_out", 0, head=3, pos="S2"), *pw.faithfulness_nodes(4, 4)[5:]]
    got = pw.faithfulness(demo, **prompts, circuit=spans)
    # S2 is one token, at each pair's own position: the plain twin keeps each pair's own position
    per_pair = [
        {**_kept(spans[2:]), ("embed", 0, 0): {len(r[0]) - 5}, ("head_out", 0, 3): {len(r[0]) - 5}} for r in plain
    ]
    assert got == near(reference_faithfulness(demo._module, plain, per_pair), 1e-4)
    assert got != near(reference_faithfulness(demo._module, plain, _kept(spans[2:])), 1e-3)  # the span matters


def test_a_component_of_the_complement_left_unpatched_is_caught(demo, monkeypatch):
    pairs = demo_data.ioi_pairs(3, seed=2)
    cells = [pw.Cell("embed"), pw.Cell("head_out", 0, head=3), pw.Cell("head_out", 3, head=1), pw.Cell("mlp_out", 0)]
    want = reference_faithfulness(demo._module, _plain(demo, pairs), _kept(cells))
    original = F.complement
    monkeypatch.setattr(F, "complement", lambda *a: original(*a)[:-1])  # the last layer's MLP stays clean
    assert pw.faithfulness(demo, **demo_data.as_prompts(pairs), circuit=cells) != near(want, 1e-2)


def test_the_empty_circuit_is_the_corrupted_run_under_patching(demo):
    pairs = demo_data.ioi_pairs(4, seed=5)
    runs = F.circuit_runs(
        demo,
        **demo_data.as_prompts(pairs),
        ablation="patch",
        metric="logit_diff",
        batch_size=64,
        memory_budget=None,
        progress=None,
        remote=False,
    )
    empty, full = runs.measure([[], pw.faithfulness_nodes(4, 4)])
    grid = pw.patch(demo, **demo_data.as_prompts(pairs), layers=[0], positions=[0])
    assert_close(empty, grid.corrupt_baseline, 1e-5)
    assert_close(full, grid.clean_baseline, 1e-5)


def test_the_bottleneck_does_nothing_on_its_own(demo):
    """The issue's numbers: L3H1 restores everything when copied, does 0.000 alone; with the embeddings, L0H3
    and L1H0 still under 0.01; only with the four MLPs the whole task."""
    prompts = demo_data.as_prompts(demo_data.ioi_pairs(8))
    bottleneck = pw.find_bottleneck(demo, **prompts, target=0.8)
    assert bottleneck.cells == [pw.Cell("head_out", 3, head=1, pos=13)] and bottleneck.restore > 1.0
    assert pw.faithfulness(demo, **prompts, circuit=bottleneck) == near(0.0, 1e-6)
    heads = [
        pw.Cell("embed"),
        pw.Cell("head_out", 0, head=3),
        pw.Cell("head_out", 1, head=0),
        pw.Cell("head_out", 3, head=1),
    ]
    assert abs(pw.faithfulness(demo, **prompts, circuit=heads)) < 0.01
    mlps = [pw.Cell("mlp_out", layer) for layer in range(4)]
    assert pw.faithfulness(demo, **prompts, circuit=heads + mlps) == near(1.0, 1e-3)


@pytest.mark.parametrize("method", ["attribution", "exact"])
def test_find_circuit_on_ioi_reaches_the_target_also_on_held_out_pairs(demo, method):
    found = pw.find_circuit(demo, **demo_data.as_prompts(demo_data.ioi_pairs(8)), target=0.9, method=method)
    assert found.reached and found.faithfulness >= 0.9
    assert {pw.Cell("head_out", 0, head=3), pw.Cell("head_out", 1, head=0), pw.Cell("head_out", 3, head=1)} <= set(
        found.cells
    )
    held = demo_data.as_prompts(demo_data.ioi_pairs(8, seed=99))
    assert found.faithfulness_on(demo, **held) >= 0.9
    # the reported f is an independent evaluation of the set
    assert found.faithfulness == near(
        pw.faithfulness(demo, **demo_data.as_prompts(demo_data.ioi_pairs(8)), circuit=found.cells), 1e-6
    )


def test_find_circuit_on_induction_keeps_the_previous_token_and_induction_heads(demo):
    found = pw.find_circuit(demo, **demo_data.as_prompts(demo_data.induction_pairs(8, seed=7)), target=0.9)
    assert found.reached and {pw.Cell("head_out", 0, head=3), pw.Cell("head_out", 1, head=0)} <= set(found.cells)


def test_the_curve_is_mibs(demo):
    prompts = demo_data.as_prompts(demo_data.ioi_pairs(6, seed=3))
    found = pw.find_circuit(demo, **prompts, target=0.9)
    curve = found.curve
    n = len(curve["ranked"])
    assert n == 21 and curve["size"] == [int(p / 100 * n) for p in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)]
    for k, f in zip(curve["size"], curve["faithfulness"]):  # each point an independent evaluation of the prefix
        assert f == near(pw.faithfulness(demo, **prompts, circuit=curve["ranked"][:k]), 1e-5)
    cpr, cmd = reference_areas(curve["percent"], curve["faithfulness"])
    assert curve["cpr"] == near(cpr, 1e-9) and curve["cmd"] == near(cmd, 1e-9)
    for i, (pc, pm) in enumerate(zip(curve["per_pair_cpr"], curve["per_pair_cmd"])):
        assert (pc, pm) == pytest.approx(reference_areas(curve["percent"], np.array(curve["per_pair"])[:, i]))
    assert curve["faithfulness"][-1] == near(1.0, 1e-5) and curve["faithfulness"][0] == 0.0


def test_saved_found_and_old_files_load_as_what_they_were(demo, tmp_path):
    found = pw.find_circuit(demo, **demo_data.as_prompts(demo_data.ioi_pairs(4)), target=0.9)
    again = pw.Circuit.load(found.save(tmp_path / "c.json"))
    assert again.cells == found.cells and again.faithfulness == found.faithfulness and again.curve == found.curve
    assert json.loads((tmp_path / "c.json").read_text())["version"] == 2
    old = {  # a version-1 file of the denoising search: its "faithfulness" was the joint restore
        "format": "patchwidget.Circuit",
        "version": 1,
        "cells": [{"site": "head_out", "layer": 3, "head": 1, "pos": 13}],
        "faithfulness": 1.03,
        "reached": True,
        "trace": [{"level": "layers", "faithfulness": 1.0}],
        "curve": {"percent": [100], "size": [1], "faithfulness": [1.03], "per_pair": [[1.03]], "cpr": 1.0, "cmd": 0.1},
    }
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = pw.Circuit.load(tmp_path / "old.json")
    assert loaded.faithfulness is None and loaded.restore == 1.03
    assert loaded.curve["kind"] == "restore" and loaded.curve["area"] == 1.0 and "cmd" not in loaded.curve
    assert loaded.trace == [{"level": "layers", "restore": 1.0}]


def test_the_diagram_draws_every_node_and_fills_the_circuits(demo):
    found = pw.find_circuit(demo, **demo_data.as_prompts(demo_data.ioi_pairs(4)), target=0.9)
    fig = found.plot(show=False)
    ax = fig.axes[0]
    faces = [tuple(c.get_facecolor()[0]) for c in ax.collections]
    assert len(faces) == 21 + 1  # every node and the logits
    assert sum(f != (1.0, 1.0, 1.0, 1.0) for f in faces[:-1]) == len(found.cells)
    assert "faithfulness" in ax.get_title()
    with pytest.raises(pw.SettingsError, match="shape"):
        pw.Circuit([pw.Cell("embed")]).plot()


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(circuit=[pw.Cell("mlp_neuron", 0, neuron=3)]), "neurons are not nodes"),
        (dict(circuit=[pw.Cell("resid_pre", 1)]), "a circuit's nodes are"),
        (dict(circuit=[pw.Cell("head_out", 0, head=9)]), "head"),
        (dict(circuit=[pw.Cell("head_out", 0)]), "head_out nodes name a head"),
        (dict(circuit=[pw.Cell("embed", 2)]), "'embed' node has no layer"),
        (dict(circuit=[pw.Cell("embed", pos="S2")]), "span label, which needs prompts made from a template"),
        (dict(circuit="embed"), "a pw.Circuit, a list of pw.Cell nodes or one"),
        (dict(circuit=[], ablation="zero"), "ablation"),
        (dict(circuit=[], batch_size=0), "batch_size"),
    ],
)
def test_bad_circuits_are_refused_before_compute(demo, monkeypatch, change, message):
    monkeypatch.setattr(demo, "trace", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a forward pass ran")))
    with pytest.raises(pw.PatchwidgetError, match=message):
        pw.faithfulness(demo, **demo_data.as_prompts(demo_data.ioi_pairs(2)), **{"circuit": [], **change})


def test_find_circuit_refuses_an_unknown_level_before_compute(demo, monkeypatch):
    monkeypatch.setattr(demo, "trace", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a forward pass ran")))
    with pytest.raises(pw.SettingsError, match="level"):
        pw.find_circuit(demo, **demo_data.as_prompts(demo_data.ioi_pairs(2)), level="paths")


def test_faithfulness_under_remote_local_and_in_small_batches_gives_the_local_number(demo):
    prompts = demo_data.as_prompts(demo_data.ioi_pairs(3, seed=4))
    cells = [pw.Cell("embed"), pw.Cell("head_out", 1, head=0), pw.Cell("mlp_out", 0), pw.Cell("mlp_out", 2)]
    local = pw.faithfulness(demo, **prompts, circuit=cells)
    seen = []
    batched = pw.faithfulness(demo, **prompts, circuit=cells, batch_size=1, progress=lambda d, t: seen.append((d, t)))
    assert batched == near(local, 1e-5) and seen and seen[-1][0] == seen[-1][1]
    assert pw.faithfulness(demo, **prompts, circuit=cells, remote="local") == near(local, 1e-5)
