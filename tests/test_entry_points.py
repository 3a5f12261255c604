"""Every public entry point, called with the model by position and by keyword, gives the same
eval-mode numbers and puts the model's mode back; anything but a wrapped model is refused,
saying how to wrap it (issue 25: ``patch(model=m, ...)`` skipped eval mode, and a plain
Hugging Face model failed deep inside with a missing attribute)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.core.engine import attention_pattern

TEXTS = demo_data.as_prompts(demo_data.ioi_pairs(2, seed=3))
CELLS = [pw.Cell("head_out", 1, head=0), pw.Cell("mlp_out", 0, pos=-1)]
CIRCUIT = pw.Circuit(CELLS)

# Each entry point as f(model, by_keyword) -> an array of its numbers.
CALLS = {
    "patch": lambda m, kw: _call(pw.patch, m, kw, **TEXTS, site="head_out").per_pair,
    "patch attribution": lambda m, kw: _call(pw.patch, m, kw, **TEXTS, method="attribution").per_pair,
    "patch_sites": lambda m, kw: _call(pw.patch_sites, m, kw, **TEXTS, cells=CELLS).per_pair_joint,
    "path_patch": lambda m, kw: _call(pw.path_patch, m, kw, **TEXTS, receivers="logits").per_pair,
    "find_circuit": lambda m, kw: np.array([_call(pw.find_circuit, m, kw, **TEXTS, target=0.5).faithfulness]),
    "Circuit.knockout": lambda m, kw: _call(CIRCUIT.knockout, m, kw, prompts=TEXTS["clean"], mode="mean").numpy(),
    "Circuit.evaluate": lambda m, kw: _call(CIRCUIT.evaluate, m, kw, **TEXTS).per_pair_joint,
    "Circuit.sources": lambda m, kw: _call(CIRCUIT.sources, m, kw, source_prompt=TEXTS["clean"][0])[
        (1, "head_out")
    ].numpy(),
    "attention_pattern": lambda m, kw: _call(attention_pattern, m, kw, prompt=TEXTS["clean"][0], layer=1, head=2),
    "generate": lambda m, kw: _tokens(
        _call(pw.generate, m, kw, clean=TEXTS["clean"], corrupt=TEXTS["corrupt"], cells=CELLS, max_new_tokens=3)
    ),
    "explore": lambda m, kw: _widget_values(_call(pw.explore, m, kw, **TEXTS, preview=False)),
}


def _call(fn, model, by_keyword, **kwargs):
    return fn(model=model, **kwargs) if by_keyword else fn(model, **kwargs)


def _tokens(generation):
    return np.array(sum(generation.clean_ids + generation.corrupt_ids + generation.patched_ids, []))


def _widget_values(widget):
    values = widget.result.per_pair
    widget.close()
    return values


@pytest.fixture(scope="module")
def dropout_model(tokenizer):
    """A GPT-2 with dropout 0.3 everywhere: in train() mode no two runs agree."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tokenizer), attn_implementation="eager")
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.3
    return pw.load_model(GPT2LMHeadModel(config), tokenizer=tokenizer)


@pytest.mark.parametrize("name", list(CALLS))
def test_by_keyword_and_by_position_give_the_eval_numbers(dropout_model, name):
    call = CALLS[name]
    hf = dropout_model._module
    hf.eval()
    want = call(dropout_model, False)
    for by_keyword in (False, True):
        hf.train()
        got = call(dropout_model, by_keyword)
        np.testing.assert_array_equal(got, want, err_msg=f"by keyword: {by_keyword}")
        assert all(m.training for m in hf.modules()), "the model's own mode is put back"
    hf.eval()


def test_the_dropout_model_does_differ_in_train_mode(dropout_model):
    """Without eval mode the numbers move (else the test above would prove nothing)."""
    hf = dropout_model._module
    ids = torch.tensor([dropout_model.tokenizer(TEXTS["clean"][0])["input_ids"]])
    hf.train()
    with torch.no_grad():
        assert not torch.equal(hf(ids).logits, hf(ids).logits)
    hf.eval()


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize(
    "bad,message",
    [
        (None, r"model is None, not a loaded model: load it first with model = pw.load_model\(\)"),
        ("openai-community/gpt2", r"load it first with model = pw.load_model\('openai-community/gpt2'\)"),
        ("plain", r"plain GPT2LMHeadModel.*pw.load_model\(hf_model, tokenizer=tokenizer\)"),
        (3, r"object of type 'int', not a model from pw.load_model"),
    ],
)
def test_anything_but_a_wrapped_model_is_refused_saying_how_to_wrap_it(dropout_model, name, bad, message):
    model = dropout_model._module if bad == "plain" else bad
    for by_keyword in (False, True):
        with pytest.raises(pw.ModelLoadError, match=message):
            CALLS[name](model, by_keyword)


def test_circuit_write_refuses_a_plain_model(dropout_model):
    with pytest.raises(pw.ModelLoadError, match="plain GPT2LMHeadModel"):
        CIRCUIT.write(dropout_model._module, {})
