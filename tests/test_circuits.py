"""Joint patching of a set of sites, against the hook reference."""

from __future__ import annotations

import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.core import batches

from .close import near
from .reference import Sizes, capture, site_hooks

# Heads with weights in the bundled model (training switched the others off, and a dead head's patch is a no-op).
CELLS = [
    pw.Cell("head_out", 0, head=3),
    pw.Cell("head_out", 1, head=0),
    pw.Cell("head_v", 3, head=1, pos=-1),
    pw.Cell("mlp_out", 2, pos=13),
    pw.Cell("attn_pattern", 1, head=0),
]


def reference_joint(hf, source, target, cells, a, w):
    """Patch every cell at once with plain hooks (attention pattern excluded)."""
    handles = []
    for cell in cells:
        src = capture(hf, source, cell.site, cell.layer)
        unit = cell.head if cell.head is not None else 0
        positions = range(len(source)) if cell.pos is None else [cell.pos % len(source)]

        def write(act, src=src, unit=unit, positions=positions):
            for p in positions:
                act[p, unit] = src[p, unit]

        handles.append(site_hooks(hf, cell.site, cell.layer, Sizes(hf.config), write))
    try:
        with torch.no_grad():
            logits = hf(target[None]).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    return (logits[a] - logits[w]).item()


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("batch_size", [64, 3])  # 3: batches that split the rows of a pair, some with no writes
def test_joint_and_single_effects_match_reference(demo, direction, batch_size, monkeypatch):
    pairs = demo_data.ioi_pairs(2, seed=9)
    seen, passes = [], []
    original = batches.layout
    monkeypatch.setattr(batches, "layout", lambda rows, n_pos: passes.append((rows, n_pos)) or original(rows, n_pos))
    r = pw.patch_sites(
        demo,
        [p.clean for p in pairs],
        [p.corrupt for p in pairs],
        answer=[p.answer for p in pairs],
        wrong=[p.wrong for p in pairs],
        cells=CELLS[:4],
        metric="logit_diff",
        direction=direction,
        batch_size=batch_size,
        progress=lambda done, total: seen.append(done),
    )
    # The 4 clean and corrupted runs report too when they take more than one pass (issue 17), then the 10 copies.
    run_passes = [] if batch_size >= 4 else [min(4, batch_size * (i + 1)) for i in range(-(-4 // batch_size))]
    assert seen[: len(run_passes)] == run_passes
    copies = seen[len(run_passes) :]
    # Passes hold at most batch_size rows, each at most a prompt long (short copies of a pair may share one).
    steps = [b - a for a, b in zip([0, *copies], copies)]
    assert copies[-1] == 2 * 5 and all(step > 0 for step in steps)
    assert passes and all(0 < len(rows) <= batch_size for rows, _ in passes)
    assert all(row.width <= n_pos for rows, n_pos in passes for row in rows)
    hf, tok = demo._module, demo.tokenizer
    for i, p in enumerate(pairs):
        clean, corrupt = torch.tensor(tok(p.clean)["input_ids"]), torch.tensor(tok(p.corrupt)["input_ids"])
        source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
        a, w = tok(p.answer)["input_ids"][0], tok(p.wrong)["input_ids"][0]
        assert r.per_pair_joint[i] == near(reference_joint(hf, source, target, CELLS[:4], a, w), 1e-4)
        for j, cell in enumerate(CELLS[:4]):
            single = reference_joint(hf, source, target, [cell], a, w)
            assert r.per_pair_singles[i, j] == near(single, 1e-4)


def test_singles_agree_with_patch_and_pattern_cell(demo):
    p = demo_data.ioi_pairs(1, seed=4)[0]
    r = pw.patch_sites(demo, p.clean, p.corrupt, answer=p.answer, wrong=p.wrong, cells=CELLS, metric="logit_diff_norm")
    grid = pw.patch(
        demo,
        p.clean,
        p.corrupt,
        answer=p.answer,
        wrong=p.wrong,
        site="attn_pattern",
        layers=[1],
        heads=[0],
        metric="logit_diff_norm",
    )
    assert r.singles[4] == near(grid.values[0, 0], 1e-4)
    heads = pw.patch(
        demo,
        p.clean,
        p.corrupt,
        answer=p.answer,
        wrong=p.wrong,
        site="head_out",
        by_position=False,
        metric="logit_diff_norm",
    )
    assert r.singles[0] == near(heads.values[0, 3], 1e-4)
    assert r.singles[1] == near(heads.values[1, 0], 1e-4)
    df = r.to_dataframe()
    assert list(df["cells"])[-2:] == ["sum of singles", "all together"]
    assert r.sum_of_singles == near(r.singles.sum(), 1e-5)  # normalised: the baseline is 0


def test_three_heads_carry_the_ioi_behaviour(demo):
    """The bundled model's IOI circuit (examples/ioi_workshop.ipynb): L3H1 reads at the verb what L0H3 and L1H0
    wrote there side by side, so the two patched together restore what L3H1 alone does, and more than either."""
    pairs = demo_data.ioi_pairs(8, seed=7)
    prompts = demo_data.as_prompts(pairs)
    grid = pw.patch(demo, **prompts, site="head_out", by_position=False, metric="logit_diff_norm")
    heads = grid.top_sites(3).cells  # the three heads of largest single effect
    assert {(c.layer, c.head) for c in heads} == {(0, 3), (1, 0), (3, 1)}
    r = pw.patch_sites(demo, **prompts, cells=heads, metric="logit_diff_norm")
    assert r.joint > 0.95 and r.sum_of_singles > 1.5  # in series: the effects overlap
    side_by_side = pw.patch_sites(
        demo,
        **prompts,
        cells=[pw.Cell("head_out", 0, head=3), pw.Cell("head_out", 1, head=0)],
        metric="logit_diff_norm",
    )
    assert side_by_side.joint > 0.95 > max(side_by_side.singles)


@pytest.mark.parametrize(
    "cells,message",
    [
        ([], "cells is empty"),
        ([pw.Cell("head_out", 0)], "needs head="),
        ([pw.Cell("resid_pre", 0, head=1)], "has no head axis"),
        ([pw.Cell("head_out", 9, head=0)], "layer index 9 is out of range"),
        ([pw.Cell("mlp_neuron", 0, neuron=99999)], "neuron index 99999 is out of range"),
        ([("head_out", 0, 1)], "must be patchwidget.Cell objects"),
    ],
)
def test_bad_cells(demo, cells, message):
    with pytest.raises(pw.PatchwidgetError, match=message):
        pw.patch_sites(
            demo, "The capital of France is", "The capital of Japan is", answer="Paris", wrong="Tokyo", cells=cells
        )
