"""The engine agrees with the plain hook-based reference on every site, both
directions, one and many prompt pairs, and several architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data

from .close import assert_close
from .reference import reference_patch

ALL_SITES = list(pw.SITES)
MODELS = ["gpt2-demo", "gpt_neox", "llama", "qwen2-gqa", "mistral-gqa", "gemma-gqa", "gptj"]


def narrowing(model, site):
    """Keep the per-cell reference affordable: a few neurons, every other site whole."""
    return {"neurons": [0, 7, 100]} if site == "mlp_neuron" else {}


def reference_values(model, prompts, site, direction, grid_kwargs, by_position):
    hf = model._module
    config = hf.config
    units = (
        grid_kwargs.get("neurons")
        or list(
            range(
                (getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
                if site in ("head_k", "head_v")
                else config.num_attention_heads
            )
        )
        if pw.SITES[site].unit
        else [0]
    )
    n_layers = config.num_hidden_layers
    per_pair = []
    for p in prompts:
        clean = torch.tensor(model.tokenizer(p.clean)["input_ids"])
        corrupt = torch.tensor(model.tokenizer(p.corrupt)["input_ids"])
        source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
        a = model.tokenizer(p.answer, add_special_tokens=False)["input_ids"][0]
        w = model.tokenizer(p.wrong, add_special_tokens=False)["input_ids"][0]
        logits = reference_patch(
            hf, source, target, site, list(range(n_layers)), units, list(range(len(clean))), by_position
        )
        diff = (logits[..., a] - logits[..., w]).numpy()  # (layer, unit, group)
        if not pw.SITES[site].unit:
            diff = diff[:, 0]
        if not by_position:
            diff = diff[..., 0]
        per_pair.append(diff)
    return np.stack(per_pair)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("site", ALL_SITES)
def test_engine_matches_reference(tiny_models, model_name, site):
    model = tiny_models[model_name]
    if site == "resid_mid" and model_name in ("gpt_neox", "gptj"):
        with pytest.raises(pw.UnknownSiteError, match="parallel"):
            pw.patch(model, "a", "b", answer="Mary", wrong="John", site=site)
        return
    prompts = demo_data.ioi_pairs(2, seed=11)
    kwargs = narrowing(model, site)
    for direction in ("denoise", "noise"):
        expected = None
        # 37 rows a pass, and 4: with 4, nearly every pass starts above layer 0 and skips the blocks below
        for batch_size in (37, 4):
            result = pw.patch(
                model,
                [p.clean for p in prompts],
                [p.corrupt for p in prompts],
                answer=[p.answer for p in prompts],
                wrong=[p.wrong for p in prompts],
                site=site,
                direction=direction,
                batch_size=batch_size,
                **kwargs,
            )
            if expected is None:
                by_position = result.dims[-1] == "pos"
                expected = reference_values(model, prompts, site, direction, kwargs, by_position)
            assert result.per_pair.shape == expected.shape
            # The comparison must have power: patching has to move the metric somewhere.
            spread = np.abs(expected - result.corrupt_baseline.reshape((-1,) + (1,) * (expected.ndim - 1)))
            if direction == "denoise":
                assert spread.max() > 1e-3
            assert_close(result.per_pair, expected, 1e-4, err_msg=f"batch {batch_size}")
            assert_close(result.values, expected.mean(0), 1e-4)


@pytest.mark.parametrize("model_name", MODELS)
def test_single_pair_and_joint_positions_match_reference(tiny_models, model_name):
    model = tiny_models[model_name]
    p = demo_data.fact_pairs(1, seed=2)[0]
    for site, by_position in (("resid_pre", True), ("head_out", False), ("head_v", False)):
        result = pw.patch(
            model,
            p.clean,
            p.corrupt,
            answer=p.answer,
            wrong=p.wrong,
            site=site,
            by_position=by_position,
            direction="noise",
        )
        expected = reference_values(model, [p], site, "noise", {}, by_position)
        assert_close(result.per_pair, expected, 1e-4)


def test_metrics_match_reference(demo):
    p = demo_data.ioi_pairs(1, seed=5)[0]
    hf, tok = demo._module, demo.tokenizer
    clean = torch.tensor(tok(p.clean)["input_ids"])
    corrupt = torch.tensor(tok(p.corrupt)["input_ids"])
    a = tok(p.answer)["input_ids"][0]
    logits = reference_patch(hf, clean, corrupt, "attn_out", [0, 1, 2, 3], [0], list(range(len(clean))), True)[:, 0]
    clean_logits = hf(clean[None]).logits[0, -1].detach()
    expected = {
        "prob": logits.softmax(-1)[..., a],
        "kl": (clean_logits.softmax(-1) * (clean_logits.log_softmax(-1) - logits.log_softmax(-1))).sum(-1),
        "custom": logits[..., a] * 2,
    }
    for name, want in expected.items():
        metric = (lambda lg: lg[:, a] * 2) if name == "custom" else name
        result = pw.patch(demo, p.clean, p.corrupt, answer=p.answer, wrong=p.wrong, site="attn_out", metric=metric)
        assert_close(result.values, want.numpy(), 1e-4, err_msg=name)


@pytest.mark.parametrize("model_name", ["gpt2-demo", "llama", "qwen2-gqa"])
@pytest.mark.parametrize("site", [s for s in ALL_SITES if s != "attn_pattern"])
def test_attribution_matches_reference(tiny_models, model_name, site):
    """The attribution estimate equals a per-cell directional derivative; attn_pattern's estimate
    (a softmax output) is checked against exact patching only through the benchmark's agreement table."""
    from .reference import reference_attribution

    model = tiny_models[model_name]
    if site == "resid_mid" and model_name in ("gpt_neox", "gptj"):
        return
    p = demo_data.ioi_pairs(1, seed=4)[0]
    clean = torch.tensor(model.tokenizer(p.clean)["input_ids"])
    corrupt = torch.tensor(model.tokenizer(p.corrupt)["input_ids"])
    a = model.tokenizer(p.answer, add_special_tokens=False)["input_ids"][0]
    w = model.tokenizer(p.wrong, add_special_tokens=False)["input_ids"][0]
    layer = 1
    units = [0, 7, 100] if site == "mlp_neuron" else [0, 1] if pw.SITES[site].unit else [0]
    kw = {"neurons": units} if site == "mlp_neuron" else {"heads": units} if pw.SITES[site].unit else {}
    for direction, (source, target) in (("denoise", (clean, corrupt)), ("noise", (corrupt, clean))):
        got = pw.patch(
            model,
            p.clean,
            p.corrupt,
            answer=p.answer,
            wrong=p.wrong,
            site=site,
            direction=direction,
            method="attribution",
            layers=[layer],
            by_position=True,
            **kw,
        ).per_pair[0, 0]
        expected = (
            reference_attribution(model._module, source, target, site, layer, units, list(range(len(clean))), a, w)
            .detach()
            .numpy()
        )
        if not pw.SITES[site].unit:
            expected = expected[0]
        assert_close(got, expected, 1e-4, err_msg=f"{site} {direction}")
