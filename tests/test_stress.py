"""Fast clicking, many requests, batch sizes and repeated runs."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc

import numpy as np
import pytest

import patchwidget as pw
from patchwidget import demo_data

from .close import assert_close
from .test_widget import TEXTS, send, wait_idle


def test_a_hundred_quick_clicks_end_on_the_last_request(demo):
    w = pw.explore(demo, **TEXTS)
    start = time.perf_counter()
    for i in range(1, 101):  # alternate drilling into different layers and going back
        if i % 2:
            send(w, type="drill", request_id=i, panel="resid_pre", row=(i // 2) % 4, col=9)
        else:
            send(w, type="back", request_id=i, level=0)
    handler_time = time.perf_counter() - start
    send(w, type="drill", request_id=101, panel="resid_pre", row=2, col=13)
    assert wait_idle(w, 101)["state"] == "idle"
    assert w.view["request_id"] == 101 and w.path[-1] == {
        "kind": "heads",
        "site": "resid_pre",
        "layer": 2,
        "head": None,
        "pos": 13,
        "cells": (),
        "target": None,  # find_circuit's target, for a search level only
        "spans": False,  # plain-string prompts: columns are tokens
        "span": None,
        "pair": None,  # the pair a "says" request continues, for that kind only
        "alone": False,  # a "says" request about a circuit run on its own, for that kind only
        "edges": False,  # a circuit of edges, for a circuit level only
    }
    assert handler_time < 30  # handlers return at once; only a broken queue could take this long
    seen = []
    w.observe(lambda change: seen.append(change["new"]["request_id"]), names="view")
    send(w, type="back", request_id=102, level=0)
    send(w, type="drill", request_id=103, panel="resid_pre", row=3, col=13)  # a level none of the clicks opened
    assert wait_idle(w, 103)["state"] == "idle"
    # The worker takes requests in order, so anything stale would have arrived before 103's view.
    assert seen and all(r in (102, 103) for r in seen) and seen[-1] == 103, seen
    w.close()


def test_no_thread_or_memory_leak_after_a_thousand_requests(demo):
    pair = demo_data.fact_pairs(1)[0]
    w = pw.explore(demo, pair.clean, pair.corrupt, answer=pair.answer, wrong=pair.wrong)
    threads = threading.active_count()

    def burst(first):
        for i in range(first, first + 500):
            send(w, type="drill", request_id=i, panel="resid_pre", row=i % 4, col=3) if i % 2 else send(
                w, type="back", request_id=i, level=0
            )
        wait_idle(w, first + 499)

    burst(1)  # warms the level cache
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    burst(501)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert threading.active_count() == threads
    assert len(w.explorer.pending) <= 1 and len(w.session.cache) <= 5
    assert grown < 2 * 2**20, f"{grown} bytes kept after 500 more requests"
    w.close()
    assert threading.active_count() == threads - 1  # the session's worker is gone


@pytest.mark.parametrize("site", ["resid_pre", "head_out", "attn_pattern", "mlp_neuron"])
def test_results_do_not_depend_on_batch_size_or_repetition(tiny_models, site):
    model = tiny_models["llama"]
    pairs = demo_data.ioi_pairs(3, seed=1)
    kw = dict(answer=[p.answer for p in pairs], wrong=[p.wrong for p in pairs], site=site)
    kw |= {"neurons": list(range(0, 128, 9))} if site == "mlp_neuron" else {}
    args = ([p.clean for p in pairs], [p.corrupt for p in pairs])
    reference = pw.patch(model, *args, batch_size=1000, **kw).per_pair
    for batch_size in (1, 7, 64):
        assert_close(pw.patch(model, *args, batch_size=batch_size, **kw).per_pair, reference, 1e-5)
    np.testing.assert_array_equal(pw.patch(model, *args, batch_size=1000, **kw).per_pair, reference)
