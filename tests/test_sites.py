"""The site table and what it may assume about transformers' internals.

Whether a decoder block returns a tensor or a ``(hidden_states, ...)`` tuple is
an internal of transformers that changed between releases (GPT-J's blocks
returned tuples before 5.24 and tensors since). Patchwidget must observe it,
never declare it: here every block of every architecture is made to return the
other form, and the numbers must not change.
"""

from __future__ import annotations

import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.core.sites import attention_weights, hidden_states, output_form

from .close import assert_close
from .conftest import TINY

SITES = ["resid_pre", "resid_post", "attn_out", "mlp_out", "head_out"]


def _unwrap_tuple_input(module, args, kwargs):
    """A pre-hook: the next module receives the hidden states, whichever form the block before returned."""
    if args and isinstance(args[0], tuple):
        return (args[0][0], *args[1:]), kwargs
    if isinstance(kwargs.get("hidden_states"), tuple):
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"][0]}
    return None


def other_form(hf):
    """Make every block of ``hf`` return the other form than its own: tensor <-> ``(tensor, None)``."""
    blocks = hf.get_decoder().layers if hasattr(hf.get_decoder(), "layers") else hf.get_decoder().h
    flipped = []
    for block in blocks:
        forward = block.forward

        def flip(*args, forward=forward, **kwargs):
            out = forward(*args, **kwargs)
            flipped.append(type(out))
            return out[0] if isinstance(out, tuple) else (out, None)

        block.forward = flip
        block.register_forward_pre_hook(_unwrap_tuple_input, with_kwargs=True)
    hf.get_decoder().get_submodule(_final_norm(hf)).register_forward_pre_hook(_unwrap_tuple_input, with_kwargs=True)
    return flipped


def _final_norm(hf):
    names = [n for n in ("norm", "ln_f", "final_layer_norm") if hasattr(hf.get_decoder(), n)]
    return names[0]


def _patch(model, pairs, **kwargs):
    return pw.patch(model, **demo_data.as_prompts(pairs), **kwargs)


@pytest.mark.parametrize("name", list(TINY))
def test_blocks_returning_the_other_form_give_the_same_numbers(tokenizer, name):
    plain = pw.load_model(TINY[name](tokenizer), tokenizer=tokenizer)
    hf = TINY[name](tokenizer)
    flipped = other_form(hf)
    wrapped = pw.load_model(hf, tokenizer=tokenizer)
    pairs = demo_data.ioi_pairs(2, seed=3)
    for site in SITES:
        for method in ("exact", "attribution"):
            # batch_size=3: most batches start above layer 0, so the blocks below are skipped
            kwargs = dict(site=site, method=method, batch_size=3, direction="denoise")
            want = _patch(plain, pairs, **kwargs).per_pair
            got = _patch(wrapped, pairs, **kwargs).per_pair
            assert_close(got, want, 1e-5, err_msg=f"{name} {site} {method}")
    assert flipped, "the wrapped blocks never ran"
    assert _block_form(wrapped) != _block_form(plain)


def _block_form(model):
    """How the first block returns its output, as a trace sees it."""
    import nnsight

    layers = model._module.get_decoder()
    path = "layers" if hasattr(layers, "layers") else "h"
    with torch.no_grad(), model.trace(torch.tensor([[1, 2, 3]])):
        block = getattr(pw.core.sites.module(model, model._module.base_model_prefix), path)[0]
        form = nnsight.save([output_form(block.output)])
    return form[0]


def test_output_readers():
    x = torch.ones(2, 3)
    assert hidden_states(x) is x
    assert hidden_states((x, None)) is x
    assert output_form(x) == 0
    assert output_form((x, None, None)) == 3
    weights = torch.zeros(1, 2, 3, 3)
    assert attention_weights((x, weights)) is weights
    with pytest.raises(pw.UnsupportedModelError, match="attention weights"):
        attention_weights(x)
    with pytest.raises(pw.UnsupportedModelError, match="eager"):
        attention_weights((x, None))
