"""Every patching path under nnsight's remote="local" simulation of remote
execution gives the numbers of a plain local run."""

from __future__ import annotations

import numpy as np
import pytest

import patchwidget as pw
from patchwidget import demo_data

PAIRS = demo_data.ioi_pairs(2, seed=6)
TEXTS = dict(clean=[p.clean for p in PAIRS], corrupt=[p.corrupt for p in PAIRS],
             answer=[p.answer for p in PAIRS], wrong=[p.wrong for p in PAIRS])  # fmt: skip


def both(fn, **kwargs):
    local, remote = fn(remote=False, **kwargs), fn(remote="local", **kwargs)
    return local, remote


@pytest.mark.parametrize("site", list(pw.SITES))
@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_every_site_and_method_under_remote_local(demo, site, method):
    kwargs = {"neurons": [1, 2, 3]} if site == "mlp_neuron" else {}
    for direction in ("denoise", "noise"):
        local, remote = both(lambda d=direction, **kw: pw.patch(demo, **TEXTS, site=site, method=method, direction=d,
                                                   layers=[1, 3], **kwargs, **kw))  # fmt: skip
        np.testing.assert_allclose(remote.per_pair, local.per_pair, atol=1e-5)
        np.testing.assert_allclose(remote.clean_baseline, local.clean_baseline, atol=1e-5)


def test_noise_joint_and_pattern_under_remote_local(demo):
    noise = pw.noise("France", samples=2)
    local, remote = both(lambda **kw: pw.patch(demo, "The capital of France is", noise, answer="Paris",
                                               wrong="Tokyo", **kw))  # fmt: skip
    np.testing.assert_allclose(remote.values, local.values, atol=1e-5)
    cells = [pw.Cell("head_out", 0, head=2), pw.Cell("attn_pattern", 1, head=1), pw.Cell("mlp_out", 2, pos=-1)]
    local, remote = both(lambda **kw: pw.patch_sites(demo, **TEXTS, cells=cells, **kw))
    np.testing.assert_allclose(remote.per_pair_singles, local.per_pair_singles, atol=1e-5)
    assert remote.joint == pytest.approx(local.joint, abs=1e-5)
    from patchwidget.engine import attention_pattern

    local, remote = both(lambda **kw: attention_pattern(demo, PAIRS[0].clean, 1, 2, **kw))
    np.testing.assert_allclose(remote, local, atol=1e-6)


def test_widget_session_under_remote_local(demo):
    w = pw.explore(demo, **TEXTS, remote="local", preview=False)
    local = pw.patch(demo, **TEXTS, metric="logit_diff_norm")
    np.testing.assert_allclose(w.result.values, local.values, atol=1e-5)
    w.close()
