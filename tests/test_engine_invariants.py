"""Exact invariants of patching that hold for any model, and what the bundled
model's IOI circuit looks like."""

from __future__ import annotations

import numpy as np
import pytest

import patchwidget as pw
from patchwidget import demo_data

from .close import assert_close, near

MODELS = ["gpt2-demo", "gpt_neox", "llama", "qwen2-gqa", "mistral-gqa", "gemma-gqa", "gptj"]


def _differing_position(model, pair):
    clean = model.tokenizer(pair.clean)["input_ids"]
    corrupt = model.tokenizer(pair.corrupt)["input_ids"]
    diff = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
    assert len(diff) == 1
    return diff[0], len(clean)


@pytest.mark.parametrize("model_name", MODELS)
def test_layer0_resid_pre_restores_exactly_at_the_differing_token(tiny_models, model_name):
    model = tiny_models[model_name]
    pair = demo_data.ioi_pairs(1, seed=4)[0]
    pos, n = _differing_position(model, pair)
    r = pw.patch(
        model, pair.clean, pair.corrupt, answer=pair.answer, wrong=pair.wrong, metric="logit_diff_norm", layers=[0]
    )
    expected = np.zeros(n)
    expected[pos] = 1.0
    assert_close(r.values[0], expected, 1e-4)


@pytest.mark.parametrize("model_name", MODELS)
def test_last_layer_resid_post_at_last_position_restores_exactly(tiny_models, model_name):
    model = tiny_models[model_name]
    pair = demo_data.fact_pairs(1, seed=1)[0]
    last = model.config.num_hidden_layers - 1
    for direction in ("denoise", "noise"):
        r = pw.patch(
            model,
            pair.clean,
            pair.corrupt,
            answer=pair.answer,
            wrong=pair.wrong,
            metric="logit_diff_norm",
            site="resid_post",
            layers=[last],
            positions=[-1],
            direction=direction,
        )
        # Denoising restores the clean run (1); noising reproduces the corrupted run (0).
        assert r.values.shape == (1, 1)
        assert r.values[0, 0] == near(1.0 if direction == "denoise" else 0.0, 1e-4)


def test_baselines_and_normalisation(demo):
    pairs = demo_data.ioi_pairs(3, seed=2)
    args = ([p.clean for p in pairs], [p.corrupt for p in pairs])
    kw = dict(answer=[p.answer for p in pairs], wrong=[p.wrong for p in pairs], layers=[1, 2])
    raw = pw.patch(demo, *args, **kw)
    norm = pw.patch(demo, *args, metric="logit_diff_norm", **kw)
    assert np.all(raw.clean_baseline > 0) and np.all(raw.corrupt_baseline < 0)
    assert_close(raw.normalized().per_pair, norm.per_pair, 1e-5)
    assert_close(norm.values, norm.per_pair.mean(0), 1e-6)
    assert norm.per_pair.shape == (3, 2, raw.values.shape[1])


def test_ioi_resid_stream_moves_from_second_subject_to_final_token(demo):
    pairs = demo_data.ioi_pairs(8, seed=7)
    answers = dict(answer=[p.answer for p in pairs], wrong=[p.wrong for p in pairs])
    r = pw.patch(demo, [p.clean for p in pairs], [p.corrupt for p in pairs], metric="logit_diff_norm", **answers)
    s2 = r.tokens.index(",") + 1  # the second subject follows the comma in the template
    end = len(r.tokens) - 1
    assert r.values[0].argmax() == s2 and r.values[0, s2] == near(1.0, 1e-4)
    assert not r.values[:, :s2].any()  # causal: nothing before the only token that differs
    # In between, the information is carried by S2 and the token after it (the bundled model passes it through
    # the verb, where layer 3 reads it from the last token), and by nothing else.
    verb = s2 + 1
    others = np.delete(r.values, [s2, verb], axis=1)
    assert np.abs(others).max() < 0.1 and r.values[:, end].max() < 0.1
    assert np.all(np.diff(r.values[:, s2]) < 0.01) and r.values[-1, s2] < 0.5  # fades with depth
    assert np.all(np.diff(r.values[:, verb]) > -0.01) and r.values[0, verb] < 0.1 < 0.9 < r.values[-1, verb]  # grows


def test_ioi_head_grid_finds_a_few_heads(demo):
    pairs = demo_data.ioi_pairs(8, seed=7)
    r = pw.patch(
        demo,
        **demo_data.as_prompts(pairs),
        metric="logit_diff_norm",
        site="head_out",
        by_position=False,
    )
    effects = np.sort(np.abs(r.values).ravel())[::-1]  # 16 heads
    assert r.values.shape == (4, 4)
    assert effects[:3].sum() > 0.7 * effects.sum()  # the bundled model's IOI runs on three heads
    assert effects[0] > 0.2 and (effects < 0.01).sum() >= 5


def test_grouped_query_keys_and_values_are_indexed_by_kv_head(tiny_models):
    model = tiny_models["qwen2-gqa"]  # 4 query heads share 2 key-value heads
    pair = demo_data.fact_pairs(1)[0]
    for site, dim, n in (("head_k", "kv_head", 2), ("head_v", "kv_head", 2), ("head_q", "head", 4)):
        r = pw.patch(model, pair.clean, pair.corrupt, answer=pair.answer, wrong=pair.wrong, site=site, layers=[0])
        assert r.dims == ("layer", dim, "pos") and r.coords[dim] == list(range(n))
    with pytest.raises(pw.PatchwidgetError, match="out of range: the model has 2 key-value heads"):
        pw.patch(model, pair.clean, pair.corrupt, answer=pair.answer, wrong=pair.wrong, site="head_k", heads=[3])


def test_attribution_leaves_the_model_without_gradients_and_splits_exactly(demo):
    pairs = demo_data.ioi_pairs(3, seed=2)
    kw = dict(
        clean=[p.clean for p in pairs],
        corrupt=[p.corrupt for p in pairs],
        answer=[p.answer for p in pairs],
        wrong=[p.wrong for p in pairs],
        site="head_out",
        method="attribution",
    )
    seen = []
    whole = pw.patch(demo, **kw)
    split = pw.patch(demo, **kw, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert_close(split.per_pair, whole.per_pair, 1e-5)
    assert seen == [(2, 3), (3, 3)]
    assert all(p.grad is None for p in demo._module.parameters())
