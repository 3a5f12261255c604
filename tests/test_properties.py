"""Property-based tests: random messages and random prompt pairs never break anything."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patchwidget as pw
from patchwidget import demo_data

PAIRS = demo_data.ioi_pairs(2, seed=3)
TEXTS = dict(
    clean=[p.clean for p in PAIRS],
    corrupt=[p.corrupt for p in PAIRS],
    answer=[p.answer for p in PAIRS],
    wrong=[p.wrong for p in PAIRS],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 20),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["resid_pre", "head_out", "mean", "noise", "kl", "raw", "normalized"]),
)
# Where an index or a name is expected, hostile users send dicts and lists too (unhashable: a TypeError once).
hostile = st.one_of(scalars, st.dictionaries(st.text(max_size=3), scalars, max_size=2), st.lists(scalars, max_size=2))
messages = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["drill", "back", "set", "cancel", "joint", "bogus"])},
        optional={
            "request_id": st.one_of(st.integers(-3, 10**6), scalars, hostile),
            "panel": st.one_of(st.sampled_from(["resid_pre", "head_out", "components", "pattern"]), scalars, hostile),
            "row": st.one_of(st.integers(-2, 20), scalars, hostile),
            "col": st.one_of(st.integers(-2, 20), scalars, hostile),
            "level": st.one_of(st.integers(-2, 4), scalars, hostile),
            "key": st.one_of(st.sampled_from(["site", "direction", "metric", "scale", "pair", "method"]), scalars),
            "value": hostile,
            "cells": st.one_of(
                scalars,
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "panel": st.sampled_from(["resid_pre", "head_out"]),
                            "row": st.integers(-1, 5),
                            "col": st.integers(-1, 15),
                        }
                    ),
                    max_size=3,
                ),
            ),
        },
    ),
)


@pytest.fixture(scope="module")
def widget(demo):
    w = pw.explore(demo, **TEXTS, preview=False)
    yield w
    w.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msg=messages)
def test_random_messages_leave_the_widget_consistent(widget, msg):
    widget._on_msg(widget, msg, [])  # must never raise into the comm
    assert widget.status["state"] in ("idle", "running", "error", "cancelled")
    view = widget.view
    assert view["panels"] and all(len(p["values"]) == len(p["rows"]) for p in view["panels"])
    assert len(widget.breadcrumb) == view["level"] + 1
    if widget.status["state"] == "error":
        assert widget.status["message"]


words = st.sampled_from(demo_data.vocabulary()[2:] + ["Atlantis", "", " ", "é", "北京", "Paris,", "Mary's"])
texts = st.lists(words, min_size=0, max_size=8).map(" ".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(clean=texts, corrupt=texts, answer=words, wrong=words)
def test_random_prompt_pairs_either_patch_or_raise_a_clear_error(demo, clean, corrupt, answer, wrong):
    try:
        r = pw.patch(demo, clean, corrupt, answer=answer, wrong=wrong, layers=[0])
    except pw.PatchwidgetError as err:
        assert str(err)
        return
    assert r.values.shape == (1, len(r.tokens)) and np.all(np.isfinite(r.values))


# Text that has broken offline pages elsewhere: comment and script openers, the template's placeholders.
page_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["<!--<script>", "</script>", "__DATA__", "__BUNDLE__", "__CSS__", "__TITLE__", "&lt;", "\u2028"]),
)


@settings(max_examples=100, deadline=None)
@given(tokens=st.lists(page_text, min_size=1, max_size=6), title=page_text)
def test_no_token_changes_the_offline_page(tokens, title):
    import json

    from patchwidget.ui.export import standalone_html

    data = {"start": 0, "states": [{"breadcrumb": [{"label": t} for t in tokens]}], "edges": {}, "vmax": None}
    page = standalone_html(data, title=title)
    head, rest = page.split('<script type="application/json" id="pw-data">', 1)
    embedded, tail = rest.split("</script>", 1)
    assert json.loads(embedded) == data
    assert page.count("<script") == 3 and "<script" not in embedded
    assert "__DATA__" not in tail.split('id="pw-bundle">', 1)[0]  # nothing was filled in twice
