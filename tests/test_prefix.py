"""Prefix reuse: a patched copy that computes only from its first patched position on,
with the target run's keys and values for the positions before it, equals the copy
computed over every position, on every architecture."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.core import batches, engine, runs, sites

from .close import assert_close
from .test_engine_reference import MODELS

SITES = ["resid_pre", "attn_out", "mlp_out", "head_out", "head_q", "head_k", "head_v"]


def spy(monkeypatch, module, name, record):
    """Replace ``module.name`` by a wrapper that appends ``record(*args)`` to the returned list per call."""
    calls = []
    original = getattr(module, name)

    def counted(*args):
        calls.append(record(*args))
        return original(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


def on_and_off(flag, run):
    """``run(speedups)`` with every exact speed-up, then with ``flag`` (a field of ``batches.Speedups``) off."""
    return run(batches.Speedups()), run(replace(batches.Speedups(), **{flag: False}))


@pytest.fixture
def reuse_count(monkeypatch):
    """Where the passes that started after position 0 started."""
    return spy(monkeypatch, engine, "prefix_cache", lambda model, kv, rows, end: end)


def both_ways(run):
    """``run(speedups)`` with prefix reuse, then with every copy computed from position 0."""
    return on_and_off("reuse_prefix", run)


def equal_on_and_off(model, flag, after_each=lambda site, direction: None):
    """Every site family in both directions on two IOI pairs gives the same values with speed-up ``flag`` on and
    off, to 1e-5 relative to logit differences of up to about 10 (float32 sums in another order);
    ``after_each(site, direction)`` runs after each comparison."""
    pairs = demo_data.ioi_pairs(2, seed=5)
    kw = dict(answer=[p.answer for p in pairs], wrong=[p.wrong for p in pairs], metric="logit_diff", batch_size=7)
    clean, corrupt = [p.clean for p in pairs], [p.corrupt for p in pairs]
    for site in SITES:
        for direction in ("denoise", "noise"):
            on, off = on_and_off(
                flag,
                lambda sp, s=site, d=direction: (
                    pw.patch(model, clean, corrupt, site=s, direction=d, speedups=sp, **kw).per_pair
                ),
            )
            assert_close(on, off, 1e-5, err_msg=f"{site} {direction}")
            after_each(site, direction)


@pytest.mark.parametrize("model_name", MODELS)
def test_prefix_reuse_equals_full_length_copies(tiny_models, model_name, monkeypatch, reuse_count):
    equal_on_and_off(tiny_models[model_name], "reuse_prefix")
    assert reuse_count and min(reuse_count) > 0  # the copies did start after position 0


@pytest.fixture
def packed_count(monkeypatch):
    """The shapes of the segment masks of packed passes (several copies in one row)."""
    return spy(monkeypatch, engine, "segment_mask", lambda model, allowed: tuple(allowed.shape))


def packed_and_single(run):
    """``run(speedups)`` with short copies packed into shared rows, then with one copy per row."""
    return on_and_off("pack", run)


@pytest.mark.parametrize("model_name", MODELS)
def test_packed_rows_equal_one_copy_per_row(tiny_models, model_name, monkeypatch, packed_count):
    """Copies of one pair packed end to end in one row, each with its own position ids and a 4D mask that
    shows it the target run's cached keys before its first position and its own segment, give the values
    of one copy per row on every architecture. float32 sums in another order: within 1e-5, relative to
    logit differences of up to about 10 (measured: at most 1.05e-5 absolute, on the demo model)."""

    def packed(site, direction):
        assert packed_count, f"{site} {direction}: no pass packed two copies in a row"
        packed_count.clear()

    equal_on_and_off(tiny_models[model_name], "pack", packed)


@pytest.mark.parametrize("model_name", ["gpt2-demo", "llama"])
def test_packed_rows_equal_one_copy_per_row_under_sdpa(tiny_models, model_name, monkeypatch, packed_count):
    """PyTorch's scaled-dot-product attention takes the same additive 4D mask as eager attention."""
    model = tiny_models[model_name]
    model._module.set_attn_implementation("sdpa")
    try:
        assert model.config._attn_implementation == "sdpa"
        equal_on_and_off(model, "pack")
    finally:
        model._module.set_attn_implementation("eager")
    assert packed_count


def test_packed_rows_with_spans_noise_joint_sets_and_paths(demo, monkeypatch, packed_count):
    """Prompts of different lengths (each copy ends at its own prompt's last token), noise on the target's
    embeddings, joint sets and path patching (which reads each copy's activations back) agree packed too."""
    template = pw.Template("When {IO} and {S1} went to the {PLACE} , {S2} gave a {OBJ} to")
    clean = [template.fill(IO="Mary", S1="John", PLACE="store", S2="John", OBJ="drink")] * 2
    corrupt = [
        template.fill(IO="Mary", S1="John", PLACE="silver castle", S2="Anna", OBJ="drink"),
        template.fill(IO="Mary", S1="John", PLACE="park", S2="Anna", OBJ="book"),
    ]
    kw = dict(answer=["Mary"] * 2, wrong=["John"] * 2, metric="logit_diff")
    for site in ("resid_pre", "head_out"):
        packed, single = packed_and_single(
            lambda sp, s=site: pw.patch(demo, clean, corrupt, site=s, within="PLACE", speedups=sp, **kw).per_pair
        )
        assert_close(packed, single, 1e-5, err_msg=site)
    prompt = demo_data.fact_pairs(1, seed=0)[0]
    one = dict(answer=prompt.answer, wrong=prompt.wrong, metric="logit_diff")
    noise = pw.noise(positions=[1, 2])
    packed, single = packed_and_single(
        lambda sp: pw.patch(demo, prompt.clean, noise, site="resid_pre", speedups=sp, **one).per_pair
    )
    assert_close(packed, single, 1e-5)
    cells = [pw.Cell("head_out", 1, head=0, pos=-1), pw.Cell("mlp_out", 1, pos=-3), pw.Cell("resid_pre", 1, pos=-4)]
    packed, single = packed_and_single(
        lambda sp: vars(pw.patch_sites(demo, prompt.clean, prompt.corrupt, cells=cells, speedups=sp, **one))
    )
    for key in ("per_pair_joint", "per_pair_singles"):
        assert_close(packed[key], single[key], 1e-5)
    pairs = demo_data.ioi_pairs(2, seed=3)
    kw = dict(answer=[p.answer for p in pairs], wrong=[p.wrong for p in pairs], metric="logit_diff")
    clean, corrupt = [p.clean for p in pairs], [p.corrupt for p in pairs]
    receivers = [pw.Cell("head_v", 3, head=1)]
    packed, single = packed_and_single(
        lambda sp: pw.path_patch(demo, clean, corrupt, receivers=receivers, speedups=sp, **kw).per_pair
    )
    assert_close(packed, single, 1e-5)
    assert packed_count


def test_pack_rows_fills_rows_of_one_pair_and_layer_within_capacity():
    n_pos = 15
    ids = list(range(2 * 15 * 3))
    pairs = [i // 45 for i in ids]
    firsts = [i % 15 for i in ids]
    lowest = [(i // 15) % 3 for i in ids]
    ends = [n_pos - pair for pair in pairs]  # the second pair's prompt is one token shorter
    rows = batches.pack_rows(ids, pairs, firsts, ends, lowest, n_pos)
    segments = [segment for row in rows for segment in row.segments]
    assert sorted(copy for copy, _, _ in segments) == ids
    for row in rows:
        assert row.width <= n_pos
        assert all(pairs[c] == row.pair and lowest[c] == row.lowest for c, _, _ in row.segments)
    # The first pair's 15 copies per layer have lengths 15..1 (120 positions): 8 full rows, no waste.
    first_pair = [row for row in rows if row.pair == 0]
    assert len(first_pair) == 3 * 8 and all(row.width == n_pos for row in first_pair)
    assert len(batches.pack_rows(ids, pairs, firsts, ends, lowest, 0)) == len(ids)


def test_plan_rows_packs_where_it_saves_work_and_caps_passes():
    """Short every-token grids pack (the rectangles' waste outweighs the wider attention); a long prompt whose
    copies start late does not (little waste, and packed rows would attend to twice the keys)."""
    short = [(p, layer) for layer in range(12) for p in range(15)]
    ids = list(range(len(short)))
    rows, _ = batches.plan_rows(
        ids, [0] * len(ids), [p for p, _ in short], [15] * len(ids), [c[1] for c in short], 15, 12, 768, 64, pack=True
    )
    assert any(len(row.segments) > 1 for row in rows)
    late = list(range(120, 240))
    rows, groups = batches.plan_rows(
        list(range(120)), [0] * 120, late, [240] * 120, [8] * 120, 240, 12, 768, 64, pack=True, max_positions=512
    )
    assert all(len(row.segments) == 1 for row in rows)
    for batch in groups:  # within the cap unless one row alone is wider
        width = 240 - min(rows[i].segments[0][1] for i in batch)
        assert len(batch) == 1 or len(batch) * width <= 512
    rows, _ = batches.plan_rows(
        ids, [0] * len(ids), [p for p, _ in short], [15] * len(ids), [c[1] for c in short], 15, 12, 768, 64, pack=False
    )
    assert all(len(row.segments) == 1 for row in rows)


def test_segment_mask_shows_each_copy_its_cache_and_own_segment():
    rows = batches.pack_rows([0, 1], [0, 0], [2, 4], [6, 6], [0, 0], capacity=6)
    copies, lay = batches.layout(rows, n_pos=6)
    assert lay.start is None and lay.cache_end == 4
    allowed = batches.segment_mask(lay)[0, 0]  # (query, cache + key)
    # Row: copy 0 at positions 2..5 (indices 0-3), copy 1 at 4..5 (indices 4-5).
    assert lay.positions[0].tolist() == [2, 3, 4, 5, 4, 5]
    expected = torch.zeros(6, 10, dtype=torch.bool)
    for q in range(4):  # copy 0: cached positions 0, 1, then its own tokens up to itself
        expected[q, :2] = True
        expected[q, 4 : 4 + q + 1] = True
    for q in range(4, 6):  # copy 1: cached positions 0..3, then its own tokens
        expected[q, :4] = True
        expected[q, 8 : 8 + q - 4 + 1] = True
    assert torch.equal(allowed, expected)


@pytest.fixture
def trim_count(monkeypatch):
    """Where patched passes ran the last block's MLP: at the last position only (1) or at the read positions."""
    return spy(monkeypatch, engine, "mlp_at_read_positions", lambda model, info, keep: keep)


@pytest.mark.parametrize("model_name", MODELS)
def test_last_mlp_at_the_last_position_equals_the_full_mlp(tiny_models, model_name, monkeypatch, trim_count):
    """The last block's MLP run at the last position only (``sites.TRIM_LAST_MLP``) changes no value, on every
    architecture; passes that write or read the last layer's MLP output, neurons or residual stream after it
    run the MLP in full."""
    model = tiny_models[model_name]
    pairs = demo_data.ioi_pairs(2, seed=5)
    kw = dict(answer=[p.answer for p in pairs], wrong=[p.wrong for p in pairs], metric="logit_diff", batch_size=7)
    clean, corrupt = [p.clean for p in pairs], [p.corrupt for p in pairs]
    last = sites.model_info(model).n_layers - 1
    cases = [(site, None) for site in SITES] + [(site, [last]) for site in ("resid_post", "mlp_out", "mlp_neuron")]
    for site, layers in cases:
        trimmed, full = on_and_off(
            "trim_last_mlp",
            lambda sp, s=site, ls=layers: (
                pw.patch(model, clean, corrupt, site=s, layers=ls, speedups=sp, **kw).per_pair
            ),
        )
        assert_close(trimmed, full, 1e-5, err_msg=site)
    assert trim_count  # the MLP was trimmed in some passes


@pytest.mark.parametrize("model_name", ["gpt2-demo", "qwen2-gqa", "gpt_neox"])
def test_last_mlp_at_the_read_positions_with_answers_of_several_tokens(tiny_models, model_name, trim_count):
    """Answers of several tokens are read at the prompt's last token and each fed token: the last block's MLP
    runs at those positions only, packed rows too, and every value equals the MLP run whole."""
    model = tiny_models[model_name]
    pairs = demo_data.ioi_pairs(2, seed=5)
    kw = dict(answer=[p.answer + " and" for p in pairs], wrong=[p.wrong for p in pairs], batch_size=7)
    clean, corrupt = [p.clean for p in pairs], [p.corrupt for p in pairs]
    for site in ("resid_pre", "head_out", "attn_out"):
        trimmed, full = on_and_off(
            "trim_last_mlp", lambda sp, s=site: pw.patch(model, clean, corrupt, site=s, speedups=sp, **kw).per_pair
        )
        assert_close(trimmed, full, 1e-5, err_msg=site)
    assert any(isinstance(keep, torch.Tensor) and len(keep) > 1 for keep in trim_count), trim_count


def test_prefix_reuse_with_noise_and_joint_sets(demo, monkeypatch, reuse_count):
    """Noise on the target's embeddings, and sets of cells at different positions, agree too."""
    prompt = demo_data.fact_pairs(1, seed=0)[0]
    kw = dict(answer=prompt.answer, wrong=prompt.wrong, metric="logit_diff")
    noise = pw.noise(positions=[1, 2])
    reused, full = both_ways(lambda sp: pw.patch(demo, prompt.clean, noise, site="mlp_out", speedups=sp, **kw).per_pair)
    assert_close(reused, full, 1e-5)
    cells = [pw.Cell("head_out", 1, head=0, pos=-1), pw.Cell("mlp_out", 0, pos=-2), pw.Cell("resid_pre", 2, pos=-3)]
    reused, full = both_ways(
        lambda sp: vars(pw.patch_sites(demo, prompt.clean, prompt.corrupt, cells=cells, speedups=sp, **kw)),
    )
    for key in ("per_pair_joint", "per_pair_singles"):
        assert_close(reused[key], full[key], 1e-5)
    assert reuse_count


def test_prefix_reuse_in_path_patching(demo, monkeypatch, reuse_count):
    """Path patching freezes sites at every position: freezes before the first sender position are left out."""
    pairs = demo_data.ioi_pairs(2, seed=3)
    kw = dict(answer=[p.answer for p in pairs], wrong=[p.wrong for p in pairs], metric="logit_diff")
    clean, corrupt = [p.clean for p in pairs], [p.corrupt for p in pairs]
    reused, full = both_ways(
        lambda sp: (
            pw.path_patch(demo, clean, corrupt, receivers=[pw.Cell("head_v", 3, head=1)], speedups=sp, **kw).per_pair
        ),
    )
    assert_close(reused, full, 1e-5)
    assert reuse_count


def test_batch_plan_covers_every_copy_once_within_batch_size(monkeypatch):
    costs = sorted((p, layer) for p in range(15) for layer in range(12) for _ in range(3))
    ids = list(range(len(costs)))
    for batch_size in (1, 7, 64, 1000):
        groups = batches.plan_batches(costs, batch_size, 15, 12, ids)
        assert sorted(i for b in groups for i in b) == ids
        assert all(0 < len(b) <= batch_size for b in groups)
    # Least work under the cost model it states: below full batches in the same order, and below
    # every copy run from position 0 in full batches sorted by layer (the engine before prefix reuse).
    overhead = batches.PASS_OVERHEAD  # per block a pass runs

    def work(batches):
        return sum(
            (12 - min(costs[i][1] for i in b)) * (overhead + len(b) * (15 - min(costs[i][0] for i in b)))
            for b in batches
        )

    planned = work(batches.plan_batches(costs, 64, 15, 12, ids))
    assert planned < work([ids[i : i + 64] for i in range(0, len(ids), 64)])
    by_layer = sorted(ids, key=lambda i: costs[i][1])
    before = sum(
        (12 - costs[b[0]][1]) * (overhead + len(b) * 15) for b in (by_layer[i : i + 64] for i in range(0, 540, 64))
    )
    assert planned < 0.9 * before
    # Bands of positions ordered by layer: on a grid where every position changes, below the best
    # split of either plain order (the planner before bands), by more than 5 % (measured: 6 %).
    monkeypatch.setattr(batches, "BAND_WIDTHS", ())
    plain = work(batches.plan_batches(costs, 64, 15, 12, ids))
    assert planned < 0.95 * plain


def test_runs_without_a_complete_cache_run_copies_from_position_0(demo, monkeypatch):
    """A wrapper that replaced the attention modules leaves no keys: the copies run whole, still exact."""
    from patchwidget.core import sites

    class Layer:
        keys = values = None

    assert sites.cache_tensors(None, 5) is None
    assert sites.cache_tensors(type("Cache", (), {"layers": [Layer()]})(), 5) is None
    prompt = demo_data.fact_pairs(1, seed=0)[0]
    kw = dict(answer=prompt.answer, wrong=prompt.wrong, metric="logit_diff")
    expected = pw.patch(demo, prompt.clean, prompt.corrupt, **kw).per_pair
    monkeypatch.setattr(runs, "cache_tensors", lambda cache, n_pos: None)
    assert_close(pw.patch(demo, prompt.clean, prompt.corrupt, **kw).per_pair, expected, 1e-5)


@pytest.mark.parametrize("model_name", ["gpt2-demo", "llama", "gemma-gqa"])
def test_logit_difference_from_two_columns_equals_the_full_unembedding(tiny_models, model_name, monkeypatch):
    """The logit difference unembeds only the answer and wrong columns; a custom metric (full logits) agrees."""
    model = tiny_models[model_name]
    calls = []
    original = engine.answer_logits
    monkeypatch.setattr(engine, "answer_logits", lambda *a: calls.append(1) or original(*a))
    pairs = demo_data.ioi_pairs(3, seed=2)
    kw = dict(answer=[p.answer for p in pairs], wrong=[p.wrong for p in pairs], site="head_out", batch_size=9)
    clean, corrupt = [p.clean for p in pairs], [p.corrupt for p in pairs]
    narrow = pw.patch(model, clean, corrupt, metric="logit_diff", **kw).per_pair
    assert calls
    calls.clear()

    def full_logit_diff(logits, answer, wrong):
        rows = torch.arange(len(logits))
        return logits[rows, answer] - logits[rows, wrong]

    full = pw.patch(model, clean, corrupt, metric=full_logit_diff, **kw).per_pair
    assert not calls
    assert_close(narrow, full, 1e-5)
