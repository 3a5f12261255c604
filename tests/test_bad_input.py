"""Bad input raises a ValueError subclass naming the input, before any forward pass."""

from __future__ import annotations

import pytest
import torch

import patchwidget as pw

CLEAN, CORRUPT = "The capital of France is", "The capital of Japan is"


@pytest.fixture
def no_forward(demo, monkeypatch):
    """Fail the test if the model runs at all."""

    def refuse(*args, **kwargs):
        raise AssertionError("a forward pass ran before validation failed")

    monkeypatch.setattr(demo, "trace", refuse)
    return demo


CASES = [
    (
        dict(clean="When Mary and John went to the store", corrupt="When Mary went to the store"),
        r"different lengths \(8 vs 6\)[\s\S]*'John'",
    ),
    (dict(answer="Paris Tokyo", wrong="Paris Tokyo"), r"same tokens \['Paris', 'Tokyo'\]"),
    (dict(wrong=""), r"wrong '' is empty: it tokenizes to no tokens"),
    (dict(clean=""), r"clean prompt is empty"),
    (dict(clean=" ", corrupt=" "), r"clean prompt is empty"),
    (dict(site="resid_mid_typo"), r"unknown site 'resid_mid_typo'"),
    (dict(layers=[4]), r"layers index 4 is out of range: the model has 4 layers"),
    (dict(layers=[-1]), r"layers index -1 is out of range"),
    (dict(site="head_out", heads=[9]), r"head index 9 is out of range: the model has 4 heads"),
    (dict(heads=[0]), r"heads=\[0\] does not apply to site 'resid_pre'"),
    (dict(positions=[5]), r"positions index 5 is out of range: the model has 5 tokens"),
    (dict(clean=[CLEAN, CLEAN], corrupt=[CORRUPT]), r"clean has 2 prompts but corrupt has 1"),
    (
        dict(clean=[CLEAN, CLEAN], corrupt=[CORRUPT, CORRUPT], answer=["Paris"]),
        r"answer has 1 entries but there are 2 prompt pairs",
    ),
    (
        dict(clean=[CLEAN, "The capital of Peru is Lima"], corrupt=[CORRUPT, "The capital of Cuba is Lima"]),
        r"pair 1 has 6 tokens but pair 0 has 5",
    ),
    (dict(answer="Tokyo"), r"answer and wrong of pair 0 are the same token \['Tokyo'\]"),
    (dict(corrupt=CLEAN), r"identical .*nothing to patch"),
    (dict(clean="The capital of Atlantis is"), r"clean prompt .*lacks: \['Atlantis'\]"),
    (dict(direction="sideways"), r"unknown direction 'sideways'"),
    (dict(metric="accuracy"), r"unknown metric 'accuracy'"),
    (dict(method="magic"), r"unknown method 'magic'"),
    (dict(clean=" ".join(["Paris"] * 65), corrupt=" ".join(["Tokyo"] * 65)), r"65 tokens, more than .* 64"),
    (dict(batch_size=0), r"batch_size must be an integer of at least 1, got 0"),
    (dict(batch_size="64"), r"batch_size must be an integer of at least 1, got '64'"),
    (dict(memory_budget="2GB"), r"memory_budget must be a positive number of bytes or None, got '2GB'"),
    (dict(memory_budget=-1), r"memory_budget must be a positive number of bytes"),
    (dict(remote=1.5), r"remote must be False, True, 'local' or a server URL, got 1.5"),
]


@pytest.mark.parametrize("change,message", CASES)
def test_bad_input_is_refused_before_compute(no_forward, change, message):
    args = dict(clean=CLEAN, corrupt=CORRUPT, answer="Paris", wrong="Tokyo") | change
    with pytest.raises(pw.PatchwidgetError, match=message) as err:
        pw.patch(no_forward, **args)
    assert isinstance(err.value, ValueError)


def test_unknown_architecture_names_what_is_missing():
    class Config:
        model_type = "mamba"

    class Fake:  # wrapped as far as patchwidget looks (an nnsight model's _module and trace)
        config = Config()
        _module = torch.nn.Linear(1, 1)

        def trace(self, *args, **kwargs):
            raise AssertionError("refused before any trace")

    with pytest.raises(pw.UnsupportedModelError, match=r"'mamba' is not supported; supported: gemma, gpt2, .*register"):
        pw.patch(Fake(), CLEAN, CORRUPT, answer="Paris", wrong="Tokyo")


def test_a_site_map_naming_missing_modules_lists_them(demo, monkeypatch):
    from patchwidget.core import sites

    wrong = sites.Arch(**{**sites.ARCHITECTURES["gpt2"].__dict__, "mlp_proj_out": "mlp.down", "final_norm": "ln"})
    monkeypatch.setitem(sites.ARCHITECTURES, "gpt2", wrong)
    with pytest.raises(pw.UnsupportedModelError, match=r"lacks modules .*: ln\b"):
        pw.patch(demo, CLEAN, CORRUPT, answer="Paris", wrong="Tokyo")
    monkeypatch.setitem(sites.ARCHITECTURES, "gpt2", sites.Arch(**{**wrong.__dict__, "final_norm": "transformer.ln_f"}))
    with pytest.raises(pw.UnsupportedModelError, match=r"transformer\.h\[0\]\.mlp\.down"):
        pw.patch(demo, CLEAN, CORRUPT, answer="Paris", wrong="Tokyo")


def test_register_architecture_makes_a_new_model_type_work(demo, monkeypatch):
    from patchwidget.core import sites

    monkeypatch.setattr(demo.config, "model_type", "my_gpt")
    with pytest.raises(pw.UnsupportedModelError, match="'my_gpt' is not supported"):
        pw.patch(demo, CLEAN, CORRUPT, answer="Paris", wrong="Tokyo")
    monkeypatch.setitem(sites.ARCHITECTURES, "my_gpt", sites.ARCHITECTURES["gpt2"])
    assert pw.patch(demo, CLEAN, CORRUPT, answer="Paris", wrong="Tokyo").values.shape == (4, 5)
