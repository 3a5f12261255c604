"""Path patching against its plain twin in tests/reference.py, and the invariants users rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data

from .close import assert_close
from .reference import reference_path_patch

MODELS = ["gpt2-demo", "gpt_neox", "qwen2-gqa"]


def _texts(pairs):
    return dict(
        clean=[p.clean for p in pairs],
        corrupt=[p.corrupt for p in pairs],
        answer=[p.answer for p in pairs],
        wrong=[p.wrong for p in pairs],
    )


def _reference(model, pairs, direction, senders_list, receivers):
    """Logit difference per pair and sender set, one plain run (or two) per sender set."""
    tok = model.tokenizer
    out = np.empty((len(pairs), len(senders_list)))
    for i, p in enumerate(pairs):
        clean, corrupt = torch.tensor(tok(p.clean)["input_ids"]), torch.tensor(tok(p.corrupt)["input_ids"])
        source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
        a = tok(p.answer, add_special_tokens=False)["input_ids"][0]
        w = tok(p.wrong, add_special_tokens=False)["input_ids"][0]
        for j, senders in enumerate(senders_list):
            logits = reference_path_patch(model._module, source, target, senders, receivers)
            out[i, j] = float(logits[a] - logits[w])
    return out


def _receivers(model):
    """Receivers on the last layer: a query, and a key with a value (key-value heads under GQA)."""
    last = model.config.num_hidden_layers - 1
    return [
        [pw.Cell("head_q", last, head=1)],
        [pw.Cell("head_k", last, head=0), pw.Cell("head_v", last, head=1 % _kv(model))],
    ]


def _kv(model):
    return getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_sender_sweep_matches_the_plain_twin(tiny_models, model_name, direction):
    model = tiny_models[model_name]
    pairs = demo_data.ioi_pairs(2, seed=5)
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    every = [[(layer, head)] for layer in range(n_layers) for head in range(n_heads)]
    for receivers in ["logits", *_receivers(model)]:
        result = pw.path_patch(model, **_texts(pairs), receivers=receivers, direction=direction, batch_size=7)
        assert result.dims == ("layer", "head")
        plain = [(c.site, c.layer, c.head) for c in receivers] if receivers != "logits" else "logits"
        top = n_layers if receivers == "logits" else n_layers - 1
        want = _reference(model, pairs, direction, [s for s in every if s[0][0] < top], plain)
        got = result.per_pair.reshape(len(pairs), -1)
        reachable = np.array([s[0][0] < top for s in every])
        assert np.isnan(got[:, ~reachable]).all()  # no path from at or above the receivers' layer
        assert_close(got[:, reachable], want, 1e-4, err_msg=f"{receivers}")
        # The comparison has power: some paths move the metric.
        base = (result.corrupt_baseline if direction == "denoise" else result.clean_baseline)[:, None]
        assert np.nanmax(np.abs(got - base)) > 1e-3


@pytest.mark.parametrize("model_name", MODELS)
def test_a_sender_set_patched_together_matches_the_plain_twin(tiny_models, model_name):
    model = tiny_models[model_name]
    p = demo_data.ioi_pairs(1, seed=8)
    senders = [(0, 1), (0, 3), (1, 2)]
    for receivers in ["logits", *_receivers(model)]:
        got = pw.path_patch(model, **_texts(p), receivers=receivers, senders=senders)
        assert got.dims == () and got.per_pair.shape == (1,)
        plain = [(c.site, c.layer, c.head) for c in receivers] if receivers != "logits" else "logits"
        assert_close(got.per_pair, _reference(model, p, "denoise", [senders], plain)[:, 0], 1e-4)


def test_last_layer_senders_to_the_logits_are_head_patching(demo):
    """With nothing after them to freeze, path patching to the logits is patching the head's output."""
    pairs = demo_data.ioi_pairs(3, seed=2)
    path = pw.path_patch(demo, **_texts(pairs), metric="logit_diff_norm")
    heads = pw.patch(demo, **_texts(pairs), site="head_out", by_position=False, layers=[3], metric="logit_diff_norm")
    assert_close(path.per_pair[:, 3], heads.per_pair[:, 0], 1e-5)


def test_no_sender_gives_the_target_metric(demo):
    pairs = demo_data.ioi_pairs(2, seed=2)
    for receivers in ["logits", [pw.Cell("head_q", 2, head=0)]]:
        none = pw.path_patch(demo, **_texts(pairs), senders=[], receivers=receivers)
        assert_close(none.per_pair, none.corrupt_baseline, 1e-6)


def test_the_widget_and_a_runs_cache_share_the_runs(demo):
    pairs = demo_data.ioi_pairs(2, seed=2)
    cache: dict = {}
    first = pw.path_patch(demo, **_texts(pairs), runs_cache=cache)
    again = pw.path_patch(demo, **_texts(pairs), runs_cache=cache)
    assert len(cache) == 1
    np.testing.assert_array_equal(first.per_pair, again.per_pair)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(receivers="loggits"), r"receivers must be 'logits' or a list"),
        (
            dict(receivers=[pw.Cell("head_out", 2, head=0)]),
            r"a receiver must be a Cell of site head_q, head_k or head_v",
        ),
        (dict(receivers=[pw.Cell("head_q", 2)]), r"a receiver must be a Cell .* with a head"),
        (dict(receivers=[pw.Cell("head_q", 7, head=0)]), r"layer index 7 is out of range"),
        (dict(receivers=[pw.Cell("head_q", 2, head=9)]), r"head index 9 is out of range"),
        (dict(senders=[(5, 0)]), r"sender layer index 5 is out of range"),
        (dict(senders=[(0, 0, 1)]), r"senders must be \(layer, head\) pairs"),
        (dict(senders=[(2, 0), (3, 1)], receivers=[pw.Cell("head_q", 2, head=0)]), r"no sender .* has a path"),
    ],
)
def test_bad_path_requests_are_refused_before_compute(demo, monkeypatch, kwargs, message):
    monkeypatch.setattr(demo, "trace", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a forward pass ran")))
    p = demo_data.ioi_pairs(1)[0]
    with pytest.raises(pw.PatchwidgetError, match=message):
        pw.path_patch(demo, p.clean, p.corrupt, answer=p.answer, wrong=p.wrong, **kwargs)


def test_path_patching_runs_remotely_as_locally(demo):
    """Under nnsight's remote="local" simulation: only saved values come back, as from NDIF."""
    pairs = demo_data.ioi_pairs(2, seed=2)
    receivers = [pw.Cell("head_q", 3, head=0)]
    here = pw.path_patch(demo, **_texts(pairs), receivers=receivers)
    there = pw.path_patch(demo, **_texts(pairs), receivers=receivers, remote="local")
    assert_close(there.per_pair, here.per_pair, 1e-5)
