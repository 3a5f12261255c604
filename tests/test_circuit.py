"""Circuits taken elsewhere: from a grid's top cells, to held-out pairs, knockouts, your own trace, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data

from .close import assert_close, near
from .reference import Sizes, site_hooks


def _texts(pairs):
    return dict(
        clean=[p.clean for p in pairs],
        corrupt=[p.corrupt for p in pairs],
        answer=[p.answer for p in pairs],
        wrong=[p.wrong for p in pairs],
    )


TRAIN, HELD_OUT = demo_data.ioi_pairs(6, seed=1), demo_data.ioi_pairs(6, seed=2)


@pytest.fixture(scope="module")
def grid(demo):
    return pw.patch(demo, **_texts(TRAIN), site="head_out", by_position=False, metric="logit_diff_norm")


def test_top_sites_are_the_largest_effects_with_where_they_came_from(grid):
    circuit = grid.top_sites(3)
    flat = np.abs(grid.values).reshape(-1)
    assert [abs(v) for v in circuit.values] == sorted(flat, reverse=True)[:3]
    for cell, value in zip(circuit.cells, circuit.values):
        assert cell.site == "head_out" and cell.pos is None
        assert grid.values[cell.layer, cell.head] == pytest.approx(value)
    assert circuit.provenance["metric"] == "logit_diff_norm" and circuit.provenance["shape"]["n_heads"] == 4
    assert circuit.provenance["clean"] == [p.clean for p in TRAIN]
    by_position = pw.patch(pw.load_model(), **_texts(TRAIN[:1]), site="mlp_out", layers=[1, 2])
    cells = by_position.top_sites(2).cells
    assert all(c.site == "mlp_out" and c.layer in (1, 2) and c.pos is not None for c in cells)


@pytest.mark.parametrize("k", [0, 17, 2.0, True])
def test_top_sites_refuses_a_k_the_grid_cannot_give(grid, k):
    with pytest.raises(pw.SettingsError, match=r"k must be an integer from 1 to 16"):
        grid.top_sites(k)


def test_evaluate_is_the_joint_patch_on_held_out_pairs(demo, grid):
    circuit = grid.top_sites(4)
    held = circuit.evaluate(demo, **_texts(HELD_OUT))
    direct = pw.patch_sites(demo, **_texts(HELD_OUT), cells=circuit.cells)
    assert_close(held.per_pair_joint, direct.per_pair_joint, 1e-6)
    assert held.joint > 0.5  # the heads found on some names carry the behaviour on others


def _reference_knockout(model, ids, cells, values):
    """Plain hooks: each cell's activation replaced by ``values[i]`` (pos, width) at every position."""
    hf, sizes, handles = model._module, Sizes(model._module.config), []
    for cell, value in zip(cells, values):

        def put(act, cell=cell, value=value):
            act[:, cell.head] = value

        handles.append(site_hooks(hf, cell.site, cell.layer, sizes, put))
    try:
        with torch.no_grad():
            return torch.stack([hf(row[None]).logits[0, -1] for row in ids])
    finally:
        for h in handles:
            h.remove()


def test_knockout_matches_plain_hooks(demo, grid):
    circuit = grid.top_sites(3)
    prompts = [p.clean for p in HELD_OUT]
    ids = torch.tensor([demo.tokenizer(p)["input_ids"] for p in prompts])
    zero = circuit.knockout(demo, prompts, mode="zero")
    dh = demo.config.n_embd // demo.config.n_head
    want = _reference_knockout(demo, ids, circuit.cells, [torch.zeros(ids.shape[1], dh)] * 3)
    assert_close(zero, want, 1e-4)
    # mean over other prompts, position by position
    reference = [p.corrupt for p in HELD_OUT]
    mean = circuit.knockout(demo, prompts, mode="mean", reference=reference)
    ref_ids = torch.tensor([demo.tokenizer(p)["input_ids"] for p in reference])
    means = []
    for cell in circuit.cells:
        acts = []
        for row in ref_ids:
            handle = site_hooks(demo._module, cell.site, cell.layer, Sizes(demo._module.config), acts.append)
            with torch.no_grad():
                demo._module(row[None])
            handle.remove()
        means.append(torch.stack([a[:, cell.head].clone() for a in acts]).mean(0))
    assert_close(mean, _reference_knockout(demo, ids, circuit.cells, means), 1e-4)
    # knocking out the circuit hurts the answer more than knocking out as many other heads
    answer = torch.tensor([demo.tokenizer(p.answer)["input_ids"][0] for p in HELD_OUT])
    wrong = torch.tensor([demo.tokenizer(p.wrong)["input_ids"][0] for p in HELD_OUT])
    diff = lambda logits: (logits[range(len(answer)), answer] - logits[range(len(answer)), wrong]).mean()
    others = pw.Circuit([c for c in (pw.Cell("head_out", 0, head=h) for h in range(4)) if c not in circuit.cells][:3])
    assert diff(circuit.knockout(demo, prompts, mode="mean")) < diff(others.knockout(demo, prompts, mode="mean"))


def test_write_inside_your_own_trace_is_the_joint_patch(demo, grid):
    circuit = grid.top_sites(3)
    p = HELD_OUT[0]
    circuit.sources(demo, p.clean)
    with torch.no_grad(), demo.trace(p.corrupt):
        circuit.write(demo, p.clean)
        logits = demo.lm_head.output[0, -1].save()
    a, w = demo.tokenizer(p.answer)["input_ids"][0], demo.tokenizer(p.wrong)["input_ids"][0]
    joint = pw.patch_sites(
        demo, p.clean, p.corrupt, answer=p.answer, wrong=p.wrong, cells=circuit.cells, metric="logit_diff"
    )
    assert float(logits[a] - logits[w]) == near(joint.joint, 1e-4)
    with pytest.raises(pw.SettingsError, match="call circuit.sources"):
        circuit.write(demo, "When Anna and John went to the store , John gave a drink to")


def test_save_and_load_round_trip_and_damaged_files(grid, tmp_path):
    circuit = grid.top_sites(3)
    path = circuit.save(tmp_path / "c.json")
    again = pw.Circuit.load(path)
    assert again.cells == circuit.cells and again.values == circuit.values and again.provenance == circuit.provenance
    data = json.loads(path.read_text())
    for broken, message in [
        ("{", "could not read"),
        (json.dumps({**data, "format": "x"}), "not a patchwidget circuit"),
        (json.dumps({**data, "version": 9}), "unsupported circuit format version 9"),
        (json.dumps({**data, "cells": [{"site": "head_out", "layer": "0"}]}), "malformed"),
        (json.dumps({**data, "cells": []}), "malformed"),
        (json.dumps({**data, "cells": [{"site": "head_out", "layer": 0, "evil": 1}]}), "malformed"),
    ]:
        (tmp_path / "bad.json").write_text(broken)
        with pytest.raises(pw.ResultFileError, match=message):
            pw.Circuit.load(tmp_path / "bad.json")


def test_a_circuit_refuses_a_model_of_another_shape(tiny_models, grid):
    circuit = grid.top_sites(2)
    other = tiny_models["llama"]
    with pytest.raises(pw.SettingsError, match="found on a model of shape"):
        circuit.evaluate(other, **_texts(HELD_OUT[:1]))
    with pytest.raises(pw.SettingsError, match="found on a model of shape"):
        circuit.knockout(other, HELD_OUT[0].clean)
