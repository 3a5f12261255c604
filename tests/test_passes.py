"""The passes the planner returns, as data: no model runs here (issue 26: plan first, then run)."""

from __future__ import annotations

import torch

from patchwidget.core import batches, passes
from patchwidget.core.cells import Write

N_POS, N_LAYERS, D = 6, 2, 8


def _tables(changed_from: int):
    """A target run and a source run of one pair that differ from position ``changed_from`` on."""
    target = {(layer, "resid_pre"): torch.zeros(1, N_POS, 1, D) for layer in range(N_LAYERS)}
    source = {key: value.clone() for key, value in target.items()}
    for value in source.values():
        value[:, changed_from:] = 1.0
    return {"source": source, "target": target, "captured": {}}


def _grid(layers=range(N_LAYERS)):
    """A resid_pre grid of one pair: one copy per (layer, position)."""
    return [(0, (Write(layer, "resid_pre", 0, (p,)),)) for layer in layers for p in range(N_POS)]


def _plan(copies, tables, speedups, reuse=True, batch_size=64, reads=()):
    shape = passes.Shape(N_POS, N_LAYERS, 768, [N_POS] * len(copies), reuse=reuse, two_columns=True)
    return passes.plan_passes(
        copies, tables, list(reads), shape, speedups, batch_size, torch.tensor([7]), torch.tensor([3])
    )


def test_copies_before_the_first_change_are_no_ops_and_the_rest_start_where_they_change():
    copies = _grid()
    planned = _plan(copies, _tables(changed_from=2), batches.Speedups(pack=False))
    # positions 0 and 1 copy the target's own value at both layers: no-ops, never run
    assert sorted(planned.noop) == [0, 1, 6, 7]
    ran = sorted(i for p in planned.passes for i in p.copies)
    assert ran == [i for i in range(len(copies)) if i not in planned.noop]
    for p in planned.passes:
        assert p.mask is None and p.cache_end == p.lay.start  # one copy per row, the prefix from the cache
        assert p.cache_end >= 2  # nothing before the first change is recomputed
        assert p.skip_below == min(copies[i][1][0].layer for i in p.copies)
        assert p.columns.tolist() == [3, 7]  # the two answer columns, sorted
        for k, i in enumerate(p.copies):  # each copy's write lands at its own row and position
            (w,) = copies[i][1]
            rows, index, units, values = p.writes[(w.layer, "resid_pre")]
            at = (rows == p.lay.copy_row[k]).nonzero()[:, 0]
            assert (p.lay.positions[rows[at], index[at]] == w.positions[0]).all()
            assert (values[at] == 1.0).all()


def test_without_reuse_every_copy_runs_from_position_0():
    planned = _plan(_grid(), _tables(changed_from=2), batches.Speedups(pack=False), reuse=False)
    assert all(p.cache_end == 0 and p.lay.start == 0 for p in planned.passes)
    assert sorted(planned.noop) == [0, 1, 6, 7]  # no-ops are still skipped


def test_packing_puts_short_copies_of_a_pair_end_to_end_under_a_mask():
    copies = _grid(layers=[1])
    planned = _plan(copies, _tables(changed_from=0), batches.Speedups())
    packed = [p for p in planned.passes if p.mask is not None]
    assert packed, "an every-token grid of one layer packs"
    for p in packed:
        assert p.mask.shape == (len(p.lay.pairs), 1, p.lay.positions.shape[1], p.cache_end + p.lay.positions.shape[1])
        assert p.last is not None and p.trim_last_mlp  # several copies a row: the MLP at their last tokens
    unpacked = _plan(copies, _tables(changed_from=0), batches.Speedups(pack=False))
    assert all(p.mask is None for p in unpacked.passes)


def test_batch_size_bounds_rows_and_the_last_mlp_is_trimmed_only_where_nothing_after_it_is_read():
    copies = _grid(layers=[0])
    planned = _plan(copies, _tables(changed_from=0), batches.Speedups(pack=False), batch_size=2)
    assert all(len(p.lay.pairs) <= 2 for p in planned.passes)
    assert all(p.trim_last_mlp for p in planned.passes)
    reading = _plan(copies, _tables(changed_from=0), batches.Speedups(pack=False), reads=[(N_LAYERS - 1, "resid_post")])
    assert not any(p.trim_last_mlp for p in reading.passes)
    assert all(p.steps[-1] == ((N_LAYERS - 1, "resid_post"), "read") for p in reading.passes)
    off = _plan(copies, _tables(changed_from=0), batches.Speedups(pack=False, trim_last_mlp=False))
    assert not any(p.trim_last_mlp for p in off.passes)


def test_choose_keeps_only_the_speed_ups_that_apply():
    every = batches.Speedups()
    local = batches.choose(every, remote=False, on_cpu=True, packable=True, columns_metric=True, sites={"resid_pre"})
    assert local == every
    gpu = batches.choose(every, remote=False, on_cpu=False, packable=True, columns_metric=True, sites={"resid_pre"})
    assert gpu.max_positions is None
    pattern = batches.choose(
        every, remote=False, on_cpu=True, packable=True, columns_metric=False, sites={"attn_pattern"}
    )
    assert not pattern.reuse_prefix and not pattern.pack and not pattern.two_columns
    sliding = batches.choose(every, remote=False, on_cpu=True, packable=False, columns_metric=True, sites=set())
    assert not sliding.pack and sliding.reuse_prefix
    server = batches.choose(every, remote=True, on_cpu=True, packable=True, columns_metric=True, sites=set())
    assert server.pass_overhead == batches.REMOTE_PASS_OVERHEAD and not server.reuse_prefix
    assert (
        batches.choose(batches.NONE, remote=False, on_cpu=True, packable=True, columns_metric=True, sites=set())
        == batches.NONE
    )
