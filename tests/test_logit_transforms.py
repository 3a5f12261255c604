"""Models that transform their logits after the unembedding (issue 25.3): Granite divides by
``logits_scaling``, Gemma 2 soft-caps with ``final_logit_softcapping``, Cohere multiplies by
``logit_scale``. patchwidget once read the unembedding's output, so ``prob``, ``kl`` and
``logit_diff`` were not the model's (clean probability 0.0225 against the model's 0.0175).
Registered as users register them, checked against the model's own output and the plain reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
)

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.core import engine, sites

from .close import assert_close
from .test_engine_reference import reference_values

PAIRS = demo_data.ioi_pairs(2, seed=4)
TEXTS = demo_data.as_prompts(PAIRS)
LLAMA = sites.ARCHITECTURES["llama"]
FAMILIES = {
    "granite": (GraniteConfig, GraniteForCausalLM, dict(logits_scaling=4.0), LLAMA),
    "gemma2": (
        Gemma2Config,
        Gemma2ForCausalLM,
        dict(final_logit_softcapping=2.0, head_dim=16),
        dataclasses.replace(LLAMA, ln_mid="pre_feedforward_layernorm"),
    ),
    "cohere": (CohereConfig, CohereForCausalLM, dict(logit_scale=3.0), dataclasses.replace(LLAMA, ln_mid=None)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def transformed(request, tokenizer):
    config_cls, model_cls, extra, arch = FAMILIES[request.param]
    pw.register_architecture(request.param, arch)
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.5,
        attn_implementation="eager",
        **extra,
    )
    yield pw.load_model(model_cls(config).eval(), tokenizer=tokenizer)
    del sites.ARCHITECTURES[request.param]


def _own_logits(model, text):
    with torch.no_grad():
        return model._module(torch.tensor([model.tokenizer(text)["input_ids"]])).logits[0, -1]


def _ids(model, p):
    tok = model.tokenizer
    return tok(p.answer)["input_ids"][0], tok(p.wrong)["input_ids"][0]


def test_the_model_does_transform_its_logits(transformed):
    """The unembedding's output is not the model's logits (else the tests here would prove nothing)."""
    hf = transformed._module
    ids = torch.tensor([transformed.tokenizer(PAIRS[0].clean)["input_ids"]])
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        unembedded = hf.lm_head(out.hidden_states[-1])
    assert not torch.allclose(unembedded, out.logits, rtol=1e-2)


def test_baselines_are_the_models_own_probability_kl_and_logit_difference(transformed):
    for metric in ("prob", "logit_diff", "kl"):
        r = pw.patch(transformed, **TEXTS, metric=metric, layers=[0])
        for i, p in enumerate(PAIRS):
            a, w = _ids(transformed, p)
            clean, corrupt = _own_logits(transformed, p.clean), _own_logits(transformed, p.corrupt)
            want = {
                "prob": (clean.softmax(-1)[a], corrupt.softmax(-1)[a]),
                "logit_diff": (clean[a] - clean[w], corrupt[a] - corrupt[w]),
                "kl": (0.0, (clean.softmax(-1) * (clean.log_softmax(-1) - corrupt.log_softmax(-1))).sum()),
            }[metric]
            assert_close([r.clean_baseline[i], r.corrupt_baseline[i]], [float(v) for v in want], 1e-5, err_msg=metric)


@pytest.mark.parametrize("site", ["resid_pre", "head_out"])
@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_patching_matches_the_plain_reference(transformed, site, method):
    r = pw.patch(transformed, **TEXTS, site=site, method=method, metric="logit_diff")
    want = reference_values(transformed, PAIRS, site, "denoise", {}, True)
    if method == "exact":
        assert_close(r.per_pair, want, 1e-4)
    else:  # the estimate is not exact, but its baselines and its scale are the model's own logits
        ends = []
        for p in PAIRS:
            (a, w), logits = _ids(transformed, p), _own_logits(transformed, p.corrupt)
            ends.append(float(logits[a] - logits[w]))
        assert_close(r.corrupt_baseline, ends, 1e-5)


def test_joint_patching_and_knockout_read_the_models_logits(transformed):
    cells = [pw.Cell("head_out", 1, head=0), pw.Cell("resid_pre", 1, pos=-1)]
    joint = pw.patch_sites(transformed, **TEXTS, cells=cells, metric="logit_diff")
    single = pw.patch(transformed, **TEXTS, site="resid_pre", layers=[1], positions=[-1], metric="logit_diff")
    assert_close(joint.per_pair_singles[:, 1], single.per_pair[:, 0, 0], 1e-5)
    circuit = pw.Circuit([pw.Cell("head_out", 1, head=0)])
    logits = circuit.knockout(transformed, PAIRS[0].clean, mode="zero")
    assert np.isfinite(logits.numpy()).all()
    if transformed.config.model_type == "gemma2":  # soft-capped: no logit beyond the cap
        assert float(logits.abs().max()) <= transformed.config.final_logit_softcapping


def test_the_two_column_shortcut_is_used_only_where_the_logits_are_the_unembeddings(transformed, demo, monkeypatch):
    calls = []
    original = engine.answer_logits
    monkeypatch.setattr(engine, "answer_logits", lambda *a: calls.append(1) or original(*a))
    pw.patch(transformed, **TEXTS, metric="logit_diff", layers=[0])
    assert not calls  # observed: these logits are transformed after the unembedding
    pw.patch(demo, **TEXTS, metric="logit_diff", layers=[0])
    assert calls


def test_answers_of_several_tokens_read_the_models_logits(transformed, demo, monkeypatch):
    """A continuation's log-probabilities come from the model's own (transformed) logits at every read, and
    the shortcut that unembeds only the reads is taken only where the logits are the unembedding's."""
    from .test_sequences import ANSWERS, CLEAN, CORRUPT, WRONGS, expected_grid

    calls = []
    original = engine.final_hidden
    monkeypatch.setattr(engine, "final_hidden", lambda *a: calls.append(1) or original(*a))
    r = pw.patch(transformed, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS, site="resid_pre")
    assert_close(r.per_pair, expected_grid(transformed, "resid_pre", "denoise", {}, True), 1e-4)
    assert not calls
    pw.patch(demo, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS, site="resid_pre", layers=[0])
    assert calls
