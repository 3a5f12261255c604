"""The normalised view is a display setting (issue 38, item 3): the widget computes each level once, in the one
default metric (``logit_diff``), and shows it normalised from those raw numbers; the normalised view equals
what the named metric ``logit_diff_norm`` computes, and the searches' levels are left as computed."""

from __future__ import annotations

import numpy as np
import pytest

import patchwidget as pw
from patchwidget.ui import view as V
from patchwidget.ui.scale import check_scale, scaled
from patchwidget.ui.session import Level, Session, Settings

from .close import assert_close
from .test_widget import TEXTS


@pytest.fixture(scope="module")
def session(demo):
    s = Session(demo, **TEXTS, batch_size=16, preview=False)
    yield s
    s.close()


def test_one_default_metric_everywhere():
    """The entry points, the session and the widget share one default: the raw logit difference."""
    import inspect

    from patchwidget.cli import build_parser
    from patchwidget.core.metrics import DEFAULT

    assert DEFAULT == "logit_diff"
    entry_points = [pw.patch, pw.path_patch, pw.patch_sites, pw.faithfulness, pw.find_circuit, pw.find_bottleneck]
    entry_points += [pw.Circuit.evaluate, pw.explore, pw.PatchWidget.__init__]
    for fn in entry_points:
        assert inspect.signature(fn).parameters["metric"].default == DEFAULT, fn.__qualname__
    assert Settings().metric == DEFAULT
    assert build_parser().parse_args(["run", "--model", "demo", "--site", "resid_pre"]).metric == DEFAULT


def test_the_normalised_view_of_a_grid_is_the_normalised_metric(demo, session):
    """Shown normalised, the raw grid is, per pair, what ``metric="logit_diff_norm"`` computes."""
    top = Level("top", site="resid_pre")
    computed = session.compute(top, Settings())
    raw = computed.results["resid_pre"]
    assert raw.settings["metric"] == "logit_diff"
    named = pw.patch(demo, **TEXTS, site="resid_pre", metric="logit_diff_norm")
    shown = scaled(computed, "normalized").results["resid_pre"]
    assert_close(shown.per_pair, named.per_pair, 1e-5)
    assert scaled(computed, "raw") is computed
    view = V.level_view(0, [top], computed, Settings(), session, "mean", "normalized")
    assert view["normalized"] and view["title"].endswith("normalised (clean 1, corrupted 0)")
    assert (
        view["panels"][0]["values"]
        == V.level_view(0, [top], scaled(computed, "normalized"), Settings(), session, "mean")["panels"][0]["values"]
    )
    raw_view = V.level_view(0, [top], computed, Settings(), session, "mean", "raw")
    assert not raw_view["normalized"] and raw_view["panels"][0]["values"] != view["panels"][0]["values"]


def test_the_joint_table_and_the_lens_normalised(demo, session):
    cells = [pw.Cell("head_out", 3, head=1), pw.Cell("mlp_out", 2)]
    joint = session.compute(Level("joint", cells=tuple(cells)), Settings())
    named = pw.patch_sites(demo, **TEXTS, cells=cells, metric="logit_diff_norm")
    shown = scaled(joint, "normalized").joint
    assert_close(shown.per_pair_joint, named.per_pair_joint, 1e-5)
    assert_close(shown.per_pair_singles, named.per_pair_singles, 1e-5)
    lens = scaled(session.compute(Level("lens", "lens"), Settings()), "normalized").results["logit_lens"]
    assert_close(lens.per_pair[:, -1, -1], np.ones(lens.n_pairs), 1e-5)  # the last layer says what the model says


def test_a_search_is_shown_as_computed(session):
    circuit = session.compute(Level("circuit", target=0.8), Settings())
    assert scaled(circuit, "normalized") is circuit
    view = V.level_view(
        0, [Level("top", site="resid_pre"), circuit.level], circuit, Settings(), session, "mean", "normalized"
    )
    assert not view["normalized"] and "normalised" not in view["title"]


def test_an_unknown_scale_is_refused():
    assert check_scale("raw") == "raw"
    with pytest.raises(pw.SettingsError, match="scale must be one of normalized, raw, got 'norm'"):
        check_scale("norm")
