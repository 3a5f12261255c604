"""The table of drill-down levels: every entry labels, computes, draws and opens as it says."""

from __future__ import annotations

import numpy as np
import pytest

from patchwidget.core.cells import Cell
from patchwidget.ui.levels import LEVELS, N_TOP_NEURONS, Display, Level
from patchwidget.ui.session import Session, Settings

from .close import assert_close
from .test_widget import PAIRS, TEXTS

TOKENS_OF_PAIR_0 = PAIRS[0].clean.split()


@pytest.fixture(scope="module")
def session(demo):
    s = Session(demo, **TEXTS, preview=False)
    yield s
    s.close()


def test_every_kind_is_one_entry(session):
    assert set(LEVELS) == {
        "top",
        "span",
        "heads",
        "head",
        "feeds",
        "direct",
        "neurons",
        "search",
        "circuit",
        "joint",
        "says",
        "lens",
    }
    for kind, entry in LEVELS.items():
        assert callable(entry.label) and callable(entry.compute) and callable(entry.panels), kind


@pytest.mark.parametrize(
    "level,label,panel_shapes",
    [
        (Level("top", site="resid_pre"), "resid_pre", [("resid_pre", 4, 14)]),
        (Level("top", site="head_out"), "head_out", [("head_out", 4, 4)]),
        (Level("heads", layer=2, pos=9), "L2 heads", [("head_out", 4, 14)]),
        (Level("head", layer=1, head=2), "L1 H2", [("components", 4, 14), ("pattern", 14, 14)]),
        (Level("neurons", layer=0, pos=9), f"L0 neurons at {TOKENS_OF_PAIR_0[9]!r}", [("neurons", N_TOP_NEURONS, 1)]),
        (Level("feeds", layer=2, head=1), "what feeds L2 H1", [("head_q", 4, 4), ("head_k", 4, 4), ("head_v", 4, 4)]),
        (Level("direct", layer=2, head=1), "direct to logits", [("logits", 4, 4)]),
        (Level("circuit", target=0.9), "find circuit (target 0.9)", [("circuit", 5, 5), ("curve", 1, 10)]),
    ],
)
def test_each_level_computes_and_draws_its_panels(session, level, label, panel_shapes):
    tokens = session.prompts.tokens
    assert level.label(tokens) == label
    computed = LEVELS[level.kind].compute(level, _patcher(session))
    panels = LEVELS[level.kind].panels(computed, Display(tokens, "mean"))
    assert [(p["id"], len(p["rows"]), len(p["cols"])) for p in panels] == panel_shapes
    for p in panels:
        assert np.array(p["values"], dtype=float).shape == (len(p["rows"]), len(p["cols"]))


def test_clicks_open_the_narrower_level(session):
    opens = lambda level, panel, row, col: LEVELS[level.kind].opens(level, panel, row, col, session.info)
    assert opens(Level("top", "resid_pre"), "resid_pre", 2, 9) == Level("heads", "resid_pre", layer=2, pos=9)
    assert opens(Level("top", "mlp_out"), "mlp_out", 1, 3) == Level("neurons", "mlp_out", layer=1, pos=3)
    assert opens(Level("top", "head_out"), "head_out", 3, 1) == Level("head", "head_out", layer=3, head=1)
    assert opens(Level("heads", layer=2, pos=9), "head_out", 1, 4) == Level("head", layer=2, head=1)
    assert opens(Level("head", layer=1, head=2), "components", 0, 0) == Level("feeds", layer=1, head=2)  # q
    assert opens(Level("head", layer=1, head=2), "components", 3, 5) == Level("direct", layer=1, head=2)  # out
    assert opens(Level("head", layer=1, head=2), "pattern", 0, 0) is None
    assert opens(Level("feeds", layer=2, head=1), "head_k", 0, 3) == Level("head", layer=0, head=3)  # upstream
    assert opens(Level("neurons", layer=0, pos=9), "neurons", 0, 0) is None
    # The circuit diagram: the last layer on top, heads then the MLP, the embeddings in the last row.
    found = Level("circuit", target=0.9)
    assert opens(found, "circuit", 0, 1) == Level("head", layer=3, head=1)
    assert opens(found, "circuit", 3, 4) == Level("top", site="mlp_out")
    assert opens(found, "circuit", 4, 0) is None and opens(found, "curve", 0, 3) is None


def test_the_cell_under_a_click_comes_from_indices_not_labels(session):
    level = Level("neurons", layer=0, pos=9)
    computed = LEVELS["neurons"].compute(level, _patcher(session))
    (panel,) = LEVELS["neurons"].panels(computed, Display(session.prompts.tokens))
    panel = {**panel, "rows": ["not a label" for _ in panel["rows"]]}  # labels are never read back
    effects = np.abs(computed.results["mlp_neuron"].values[0])
    cell = session.cell(level, panel, 0, 0)
    assert cell == Cell("mlp_neuron", 0, neuron=int(np.argmax(effects)), pos=9)
    assert session.cell(Level("head", layer=1, head=2), {"id": "pattern"}, 0, 0) is None
    assert session.cell(Level("heads", layer=2), {"id": "head_out"}, 3, 5) == Cell("head_out", 2, head=3, pos=5)


def _patcher(session):
    from patchwidget.ui.session import _Patcher

    return _Patcher(session, Settings(), lambda done, total: None)


def test_what_feeds_a_head_is_path_patching_into_its_query_key_and_value(session, demo):
    import patchwidget as pw

    # L3H1 reads the IOI name through its value (examples/ioi_workshop.ipynb): a receiver with something to show.
    computed = LEVELS["feeds"].compute(Level("feeds", layer=3, head=1), _patcher(session))
    direct = pw.path_patch(
        demo, **TEXTS, receivers=[Cell("head_v", 3, head=1)]
    )  # the session computes in the one default metric
    assert_close(computed.results["head_v"].per_pair, direct.per_pair, 1e-6)
    assert np.nanmax(np.abs(direct.values)) > 0.1
    assert np.isnan(computed.results["head_q"].values[3:]).all()  # no path from at or above layer 3
