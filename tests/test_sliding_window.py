"""Sliding-window attention: every entry point agrees with the plain hooks reference.

A sliding-window layer's key-value cache keeps only its last ``window - 1`` positions, so
prefix reuse (which reads "the first positions" of a run's cache) once read the wrong keys:
patching the only changed token at layer 0 gave -0.46 instead of -1.01 (issue 25). Windows
narrower than, equal to and wider than the 14-token prompts, on the architectures that have
them (Mistral's ``sliding_window``; Qwen2's ``use_sliding_window``, which mixes full and
local layers), eager and SDPA attention.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

import patchwidget as pw
from patchwidget import demo_data

from .close import assert_close, near
from .reference import reference_faithfulness
from .test_circuits import reference_joint
from .test_engine_reference import reference_values
from .test_path import _reference as reference_path

PAIRS = demo_data.ioi_pairs(2, seed=11)  # 14 tokens each
TEXTS = demo_data.as_prompts(PAIRS)
N_POS = 14
WINDOWS = {"narrower": 4, "equal": N_POS, "wider": N_POS + 8}


def _windowed(tokenizer, family: str, window: int, attention: str):
    torch.manual_seed(0)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.15,
        attn_implementation=attention,
        sliding_window=window,
    )
    if family == "mistral":
        hf = MistralForCausalLM(MistralConfig(**common))
    else:  # layer 0 full attention, layers 1 and 2 local
        hf = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True, max_window_layers=1))
    return pw.load_model(hf.eval(), tokenizer=tokenizer)


CASES = [
    (family, width, attention)
    for family in ("mistral", "qwen2")
    for width in WINDOWS
    for attention in ("eager", "sdpa")
]


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def windowed(request, tokenizer):
    family, width, attention = request.param
    return _windowed(tokenizer, family, WINDOWS[width], attention)


def test_the_windows_are_what_the_test_says(windowed):
    """The narrower and equal windows do cut the cache short (else the test would prove nothing)."""
    window = windowed.config.sliding_window
    ids = torch.tensor([windowed.tokenizer(PAIRS[0].clean)["input_ids"]])
    assert ids.shape[1] == N_POS
    with torch.no_grad():
        cache = windowed._module(ids, use_cache=True).past_key_values
    held = {layer.keys.shape[-2] for layer in cache.layers}
    assert (min(held) < N_POS) == (window <= N_POS)


@pytest.mark.parametrize("site", ["resid_pre", "head_out", "head_v", "mlp_out"])
def test_patch_matches_the_plain_reference(windowed, site):
    for direction in ("denoise", "noise"):
        result = pw.patch(windowed, **TEXTS, site=site, direction=direction, batch_size=9)
        expected = reference_values(windowed, PAIRS, site, direction, {}, True)
        assert_close(result.per_pair, expected, 1e-4, err_msg=f"{site} {direction}")


def test_patch_sites_and_path_patch_match_the_plain_reference(windowed):
    cells = [pw.Cell("head_out", 1, head=2), pw.Cell("mlp_out", 0, pos=9), pw.Cell("resid_pre", 2, pos=-1)]
    joint = pw.patch_sites(windowed, **TEXTS, cells=cells, metric="logit_diff")
    tok = windowed.tokenizer
    for i, p in enumerate(PAIRS):
        clean, corrupt = (torch.tensor(tok(t)["input_ids"]) for t in (p.clean, p.corrupt))
        a, w = tok(p.answer)["input_ids"][0], tok(p.wrong)["input_ids"][0]
        want = reference_joint(windowed._module, clean, corrupt, cells, a, w)
        assert_close(joint.per_pair_joint[i], want, 1e-4)
    path = pw.path_patch(windowed, **TEXTS, receivers="logits")
    every = [[(layer, head)] for layer in range(3) for head in range(4)]
    assert_close(
        path.per_pair.reshape(len(PAIRS), -1), reference_path(windowed, PAIRS, "denoise", every, "logits"), 1e-4
    )


def test_find_bottleneck_matches_the_plain_reference(windowed):
    """The found set's restore is its joint patch, normalised per pair, as plain hooks compute it."""
    found = pw.find_bottleneck(windowed, **TEXTS, target=0.8)
    tok, hf = windowed.tokenizer, windowed._module
    restored = []
    for p in PAIRS:
        clean, corrupt = (torch.tensor(tok(t)["input_ids"]) for t in (p.clean, p.corrupt))
        a, w = tok(p.answer)["input_ids"][0], tok(p.wrong)["input_ids"][0]
        with torch.no_grad():
            high, low = (
                float(hf(ids[None]).logits[0, -1, a] - hf(ids[None]).logits[0, -1, w]) for ids in (clean, corrupt)
            )
        restored.append((reference_joint(hf, clean, corrupt, found.cells, a, w) - low) / (high - low))
    assert_close(found.restore, np.mean(restored), 1e-4)


def test_faithfulness_and_find_circuit_match_the_plain_reference(windowed):
    found = pw.find_circuit(windowed, **TEXTS, target=0.8)
    nodes = pw.faithfulness_nodes(3, 4)
    plain = [
        (
            *(torch.tensor(windowed.tokenizer(t)["input_ids"]) for t in (p.clean, p.corrupt)),
            windowed.tokenizer(p.answer)["input_ids"][0],
            windowed.tokenizer(p.wrong)["input_ids"][0],
        )
        for p in PAIRS
    ]
    for cells in (found.cells, nodes[::2], [nodes[0], *nodes[5:]]):
        kept = {("embed", 0, 0) if c.site == "embed" else (c.site, c.layer, c.head or 0): None for c in cells}
        want = reference_faithfulness(windowed._module, plain, kept)
        assert pw.faithfulness(windowed, **TEXTS, circuit=cells) == near(want, 1e-4)
