"""Per-head weights and norms (``core.weights``) against what the model's own modules compute, in one plain run."""

from __future__ import annotations

import pytest
import torch

from patchwidget.core import sites
from patchwidget.core.weights import apply_norm, norm_parts, out_per_head, qkv_per_head

from .close import assert_close
from .reference import capture

MODELS = ["gpt2-demo", "gpt_neox", "llama", "qwen2-gqa", "gemma-gqa", "gptj"]


def _ids(model):
    return torch.tensor(model.tokenizer("When Mary and John went to the store, John gave")["input_ids"])


@pytest.mark.parametrize("name", MODELS)
def test_heads_queries_keys_and_values_are_the_normed_input_through_each_heads_columns(tiny_models, name):
    model = tiny_models[name]
    info, hf, ids = sites.model_info(model), model._module, _ids(model)
    for layer in range(info.n_layers):
        x = capture(hf, ids, "resid_pre", layer)[:, 0]  # (pos, d_model), the block's input
        norm = sites.module(hf, f"{info.arch.layers}.{layer}.{info.arch.ln_attn}")
        normed = apply_norm(norm_parts(norm), x)
        assert_close(normed, norm(x).detach(), 1e-5)
        for which in "qkv":
            w, b = qkv_per_head(model, info, layer, which)
            got = torch.einsum("pd,ndk->pnk", normed, w.float()) + (0 if b is None else b.float())
            assert_close(got, capture(hf, ids, f"head_{which}", layer), 1e-4, f"{name} L{layer} {which}")


@pytest.mark.parametrize("name", MODELS)
def test_a_layers_head_outputs_sum_to_its_output_projection(tiny_models, name):
    model = tiny_models[name]
    info, hf, ids = sites.model_info(model), model._module, _ids(model)
    for layer in range(info.n_layers):
        z = capture(hf, ids, "head_out", layer)  # (pos, head, d_head)
        per_head = torch.einsum("phk,hkd->phd", z, out_per_head(model, info, layer).float())
        proj = sites.module(hf, f"{info.arch.layers}.{layer}.{info.arch.attn_proj_out}")
        assert_close(
            per_head.sum(1), proj(z.reshape(len(ids), -1)).detach() - (proj.bias if proj.bias is not None else 0), 1e-4
        )


def test_a_wrong_slice_fails(tiny_models):
    """The check above can fail: swapping the query and key columns gives other numbers."""
    model = tiny_models["gpt2-demo"]
    info, hf, ids = sites.model_info(model), model._module, _ids(model)
    x = capture(hf, ids, "resid_pre", 1)[:, 0]
    normed = apply_norm(norm_parts(sites.module(hf, f"{info.arch.layers}.1.{info.arch.ln_attn}")), x)
    w, b = qkv_per_head(model, info, 1, "k")
    got = torch.einsum("pd,ndk->pnk", normed, w.float()) + b.float()
    with pytest.raises(AssertionError):
        assert_close(got, capture(hf, ids, "head_q", 1), 1e-4)
