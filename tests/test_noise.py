"""Gaussian-noise corruption of subject embeddings (Meng et al. 2022), checked
against the hook-based reference with the same documented noise recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchwidget as pw

from .close import assert_close, near
from .reference import reference_patch, run

PROMPT = "The capital of France is"


def reference_noise(model, samples, scale, seed, positions):
    """The recipe ``pw.noise`` documents: per pair and sample, in order, a
    standard normal draw per noised position, times scale x std(embeddings)."""
    weight = model.get_input_embeddings().weight
    std = weight.detach().float().std() * scale
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(samples):
        noise = torch.zeros(5, weight.shape[1])
        noise[positions] = torch.randn(len(positions), weight.shape[1], generator=gen) * std
        out.append(noise)
    return out


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("site", ["resid_pre", "mlp_out", "head_out"])
def test_noise_corruption_matches_reference(demo, direction, site):
    spec = pw.noise("France", samples=3, seed=5)
    result = pw.patch(demo, PROMPT, spec, answer="Paris", wrong="Tokyo", site=site, direction=direction)
    hf, tok = demo._module, demo.tokenizer
    ids = torch.tensor(tok(PROMPT)["input_ids"])
    a, w = tok("Paris")["input_ids"][0], tok("Tokyo")["input_ids"][0]
    units = list(range(4)) if site == "head_out" else [0]
    values, corrupt = [], []
    for noise in reference_noise(hf, 3, 3.0, 5, [3]):
        kwargs = {"target_noise": noise} if direction == "denoise" else {"source_noise": noise}
        logits = reference_patch(hf, ids, ids, site, [0, 1, 2, 3], units, list(range(5)), True, **kwargs)
        diff = (logits[..., a] - logits[..., w]).numpy()
        values.append(diff[:, 0] if site != "head_out" else diff)
        plain = run(hf, ids, noise=noise)
        corrupt.append((plain[a] - plain[w]).item())
    assert_close(result.values, np.mean(values, 0), 1e-4)
    assert_close(result.corrupt_baseline, [np.mean(corrupt)], 1e-4)


def test_noise_hurts_and_subject_position_restores(demo):
    r = pw.patch(demo, PROMPT, pw.noise("France"), answer="Paris", wrong="Tokyo", metric="prob")
    assert r.clean_baseline[0] > 0.9 and r.corrupt_baseline[0] < 0.5
    assert r.values[0, 3] == near(r.clean_baseline[0], 1e-4)  # layer 0 at the subject: exact


def test_noise_by_position_and_scale_zero(demo):
    clean = pw.patch(demo, PROMPT, pw.noise(positions=[3], scale=0.0, samples=2), answer="Paris", wrong="Tokyo")
    assert_close(clean.values, clean.clean_baseline[0], 1e-5)  # no noise: nothing changes
    by_word = pw.patch(demo, PROMPT, pw.noise("France", samples=2), answer="Paris", wrong="Tokyo", layers=[1])
    by_pos = pw.patch(demo, PROMPT, pw.noise(positions=[-2], samples=2), answer="Paris", wrong="Tokyo", layers=[1])
    assert_close(by_word.values, by_pos.values, 1e-6)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: pw.noise("Japan"), r"noise word 'Japan' does not occur in clean prompt 0"),
        (lambda: pw.noise(positions=[9]), r"noise positions \[9\] are out of range"),
        (lambda: pw.noise(), r"exactly one of tokens"),
        (lambda: pw.noise("France", samples=0), r"samples >= 1"),
    ],
)
def test_bad_noise_settings(demo, make, message):
    with pytest.raises(pw.PatchwidgetError, match=message):
        pw.patch(demo, PROMPT, make(), answer="Paris", wrong="Tokyo")
