"""The logit lens (issue 40, item 1) against its plain twin in tests/reference.py."""

from __future__ import annotations

import pytest
import torch

import patchwidget as pw
from patchwidget.data import demo_data

from .close import assert_close, near
from .reference import reference_logit_lens
from .test_logit_transforms import transformed  # noqa: F401 (a fixture: Granite, Gemma 2 and Cohere)

PAIRS = demo_data.ioi_pairs(3, seed=4)
PROMPTS = [p.clean for p in PAIRS]
ANSWERS = dict(answer=[p.answer for p in PAIRS], wrong=[p.wrong for p in PAIRS])


def _ids(model, text):
    return torch.tensor(model.tokenizer(text)["input_ids"])


def _plain(model, prompts, answer, wrong):
    tok = model.tokenizer
    return torch.stack(
        [
            reference_logit_lens(model._module, _ids(model, t), tok(a)["input_ids"][0], tok(w)["input_ids"][0])
            for t, a, w in zip(prompts, answer, wrong)
        ]
    )  # (prompt, layer, pos)


@pytest.mark.parametrize("name", ["gpt2-demo", "gpt_neox", "llama", "qwen2-gqa", "mistral-gqa", "gptj", "gemma-gqa"])
def test_the_lens_matches_the_plain_twin(tiny_models, name):
    model = tiny_models[name]
    lens = pw.logit_lens(model, PROMPTS, **ANSWERS)
    plain = _plain(model, PROMPTS, **ANSWERS)
    assert lens.dims == ("layer", "pos") and lens.per_pair.shape == tuple(plain.shape)
    assert_close(lens.per_pair, plain.numpy(), 1e-4)
    assert_close(lens.values, plain.mean(0).numpy(), 1e-4)


def test_the_last_layer_at_the_last_token_is_the_models_logit_difference(demo):
    lens = pw.logit_lens(demo, PROMPTS, **ANSWERS)
    tok = demo.tokenizer
    for i, (text, a, w) in enumerate(zip(PROMPTS, *ANSWERS.values())):
        with torch.no_grad():
            logits = demo._module(_ids(demo, text)[None]).logits[0, -1]
        own = float(logits[tok(a)["input_ids"][0]] - logits[tok(w)["input_ids"][0]])
        assert lens.per_pair[i, -1, -1] == near(own, 1e-4) and lens.clean_baseline[i] == near(own, 1e-4)
    assert "where the answer is readable, not what causes it" in lens.settings["note"].lower()


def test_a_lens_that_skips_the_final_norm_is_caught(demo, monkeypatch):
    """The check that the last layer ends at the model's own logits: a lens without the final norm fails it."""
    from patchwidget.grids import lens as L

    real = L.module
    monkeypatch.setattr(
        L, "module", lambda model, path: torch.nn.Identity() if path.endswith("ln_f") else real(model, path)
    )
    with pytest.raises(pw.SettingsError, match="does not end at its own logits"):
        pw.logit_lens(demo, PROMPTS, **ANSWERS)


def test_bad_prompts_are_refused_before_compute(demo):
    with pytest.raises(pw.PromptError, match=r"have \[\d+, \d+\] tokens"):
        pw.logit_lens(demo, [PROMPTS[0], "When Mary went to the store"], answer="Mary", wrong="John")
    with pytest.raises(pw.PromptError, match="answer 'Mary Mary' must be exactly one token"):
        pw.logit_lens(demo, PROMPTS[0], answer="Mary Mary", wrong="John")
    with pytest.raises(pw.PromptError, match="prompts must be a non-empty prompt"):
        pw.logit_lens(demo, [], answer="Mary", wrong="John")


def test_models_that_transform_their_logits_read_through_the_transform(transformed):  # noqa: F811
    """Soft-capping (Gemma 2) and the scales of Granite and Cohere apply to every layer's lens as to the logits."""
    lens = pw.logit_lens(transformed, PROMPTS, **ANSWERS)
    assert_close(lens.per_pair, _plain(transformed, PROMPTS, **ANSWERS).numpy(), 1e-4)
    assert "after the unembedding, as the model does" in lens.settings["note"]


def test_prompts_from_a_template_read_by_span(demo):
    """Issue 40, item 1: template prompts of different lengths give a grid by span, each span read at its last
    token, equal to each prompt's own lens there; direct logit attribution reads each at its own last token."""
    t = pw.Template("When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to")
    prompts = [
        t.fill(IO="Mary", S1="John", PLACE="store", S2="John"),
        t.fill(IO="Anna", S1="Tom", PLACE="silver castle", S2="Tom"),
    ]
    answers = dict(answer=["Mary", "Anna"], wrong=["John", "Tom"])
    lens = pw.logit_lens(demo, prompts, **answers)
    assert lens.dims == ("layer", "span") and lens.coords["span"] == [s.label for s in prompts[0].spans(demo.tokenizer)]
    for i, prompt in enumerate(prompts):
        alone = pw.logit_lens(demo, str(prompt), answer=answers["answer"][i], wrong=answers["wrong"][i])
        last = [s.positions[-1] for s in prompt.spans(demo.tokenizer)]
        assert_close(lens.per_pair[i], alone.per_pair[0][:, last], 1e-5)
    dla = pw.direct_logit_attribution(demo, prompts, **answers)
    for i, prompt in enumerate(prompts):
        alone = pw.direct_logit_attribution(demo, str(prompt), answer=answers["answer"][i], wrong=answers["wrong"][i])
        assert_close(dla.per_pair[i], alone.per_pair[0], 1e-5)
        assert dla.clean_baseline[i] == near(float(alone.clean_baseline[0]), 1e-5)
