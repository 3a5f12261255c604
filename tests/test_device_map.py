"""Models placed by accelerate with a device map patch like a model in one piece.

``device_map="auto"`` across GPUs and offloading to CPU or disk both work by
accelerate's hooks, which move each block's weights to where it runs. This
machine has no GPU, so the test offloads every other block to disk: the same
hooks, the same meta-device parameters in the module tree.
"""

from __future__ import annotations

import pytest

import patchwidget as pw
from patchwidget import demo_data

from .close import assert_close, near

PAIRS = demo_data.ioi_pairs(2, seed=6)
TEXTS = dict(
    clean=[p.clean for p in PAIRS],
    corrupt=[p.corrupt for p in PAIRS],
    answer=[p.answer for p in PAIRS],
    wrong=[p.wrong for p in PAIRS],
)


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    device_map = {
        "transformer.wte": "cpu",
        "transformer.wpe": "cpu",
        "transformer.h.0": "cpu",
        "transformer.h.1": "disk",
        "transformer.h.2": "cpu",
        "transformer.h.3": "disk",
        "transformer.ln_f": "cpu",
        "lm_head": "cpu",
    }
    model = pw.load_model(pw.DEMO_MODEL_DIR, device_map=device_map, offload_folder=tmp_path_factory.mktemp("off"))
    assert type(model._module.transformer.h[1]._hf_hook).__name__ == "AlignDevicesHook"
    assert next(model._module.transformer.h[1].parameters()).device.type == "meta"
    return model


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "head_out", "head_v", "mlp_neuron", "attn_pattern"])
@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_offloaded_model_gives_the_plain_models_numbers(demo, offloaded, site, method):
    kw = {"neurons": [1, 2]} if site == "mlp_neuron" else {}
    plain = pw.patch(demo, **TEXTS, site=site, method=method, **kw)
    placed = pw.patch(offloaded, **TEXTS, site=site, method=method, **kw)
    assert_close(placed.per_pair, plain.per_pair, 1e-5)


def test_offloaded_model_with_noise_and_joint_patching(demo, offloaded):
    noise = pw.noise("France", samples=2)
    plain = pw.patch(demo, "The capital of France is", noise, answer="Paris", wrong="Tokyo")
    placed = pw.patch(offloaded, "The capital of France is", noise, answer="Paris", wrong="Tokyo")
    assert_close(placed.per_pair, plain.per_pair, 1e-5)
    cells = [pw.Cell("head_out", 1, head=0), pw.Cell("mlp_out", 3, pos=-1)]
    assert pw.patch_sites(offloaded, **TEXTS, cells=cells).joint == near(
        pw.patch_sites(demo, **TEXTS, cells=cells).joint, 1e-5
    )
