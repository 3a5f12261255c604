"""Direct logit attribution (issue 40, item 2) against its plain twin, and its parts summing to the logit difference."""

from __future__ import annotations

import pytest
import torch

import patchwidget as pw

from .close import assert_close, near
from .reference import reference_dla
from .test_lens import ANSWERS, PROMPTS, _ids
from .test_logit_transforms import transformed  # noqa: F401 (a fixture: Granite, Gemma 2 and Cohere)


def _own(model, text, a, w):
    tok = model.tokenizer
    with torch.no_grad():
        logits = model._module(_ids(model, text)[None]).logits[0, -1]
    return float(logits[tok(a)["input_ids"][0]] - logits[tok(w)["input_ids"][0]])


@pytest.mark.parametrize("name", ["gpt2-demo", "gpt_neox", "llama", "qwen2-gqa", "mistral-gqa", "gptj", "gemma-gqa"])
def test_dla_matches_the_plain_twin_and_sums_to_the_logit_difference(tiny_models, name):
    model = tiny_models[name]
    dla = pw.direct_logit_attribution(model, PROMPTS, **ANSWERS)
    tok = model.tokenizer
    assert dla.dims == ("layer", "head")
    for i, (text, a, w) in enumerate(zip(PROMPTS, *ANSWERS.values())):
        heads, rest = reference_dla(model._module, _ids(model, text), tok(a)["input_ids"][0], tok(w)["input_ids"][0])
        assert_close(dla.per_pair[i], heads.numpy(), 1e-4)
        s = dla.settings
        others = s["embed"][i] + sum(s["mlp"][i]) + sum(s["attn_bias"][i]) + s["norm_bias"][i]
        assert others == near(rest, 1e-4)
        own = _own(model, text, a, w)  # the parts add up to the model's logit difference
        assert float(dla.per_pair[i].sum()) + others == near(own, 1e-4)
        assert dla.clean_baseline[i] == near(own, 1e-4)
    assert "not whether the model needs it" in dla.settings["note"]


def test_a_dla_that_drops_a_component_is_caught(demo, monkeypatch):
    from patchwidget.grids import dla as D

    real = D._components
    monkeypatch.setattr(D, "_components", lambda *a: {**real(*a), "mlp": real(*a)["mlp"] * 0})
    with pytest.raises(pw.SettingsError, match="is not the sum of its embeddings"):
        pw.direct_logit_attribution(demo, PROMPTS, **ANSWERS)


def test_models_that_are_not_a_plain_sum_are_refused_and_transforms_said(transformed):  # noqa: F811
    """Gemma 2 norms its attention and MLP branches: its residual stream is not the plain sum, and DLA says so
    instead of giving a wrong number. Granite (multipliers of 1 here) and Cohere are; their notes say that the
    logits are scaled after what is attributed."""
    if transformed.config.model_type == "gemma2":
        with pytest.raises(pw.SettingsError, match="is not the sum of its embeddings"):
            pw.direct_logit_attribution(transformed, PROMPTS, **ANSWERS)
        return
    dla = pw.direct_logit_attribution(transformed, PROMPTS, **ANSWERS)
    assert "attributes the logits before that" in dla.settings["note"]
