"""Prompts of any length: grids by span, checked against the plain span reference, and padding
that changes nothing (a mixed-length batch equals each pair computed alone)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchwidget as pw

from .close import assert_close, near
from .reference import reference_path_patch, reference_span_patch

T = pw.Template("When {IO} and {S1} went to the {PLACE} , {S2} gave a {OBJ} to")


def ioi(io, s, place, other_place, obj="drink", other="Anna"):
    """An IOI pair whose corrupted prompt names another subject second (and may name another place)."""
    clean = T.fill(IO=io, S1=s, PLACE=place, S2=s, OBJ=obj)
    corrupt = T.fill(IO=io, S1=s, PLACE=other_place, S2=other, OBJ=obj)
    return clean, corrupt, io, s


# Clean and corrupted prompts of different lengths within each pair, and across pairs.
UNEQUAL = [ioi("Mary", "John", "store", "silver castle"), ioi("Tom", "Lisa", "orange forest tunnel", "park", "book")]
# Equal lengths within each pair, different across pairs: alone, each pair needs no padding at all.
ACROSS = [ioi("Mary", "John", "store", "park"), ioi("Tom", "Lisa", "orange forest tunnel", "silver castle anchor")]


def args(pairs):
    return dict(
        clean=[p[0] for p in pairs],
        corrupt=[p[1] for p in pairs],
        answer=[p[2] for p in pairs],
        wrong=[p[3] for p in pairs],
    )


def aligned(source_span, target_span, last_only=False):
    """Written out independently of the engine: pair the last k positions, k the shorter span's length."""
    k = 1 if last_only else min(len(source_span), len(target_span))
    return list(source_span)[len(source_span) - k :], list(target_span)[len(target_span) - k :]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("site", ["resid_pre", "head_out", "mlp_out"])
def test_span_grid_matches_the_plain_reference(demo, site, direction):
    tok = demo.tokenizer
    kw = args(UNEQUAL)
    r = pw.patch(demo, kw.pop("clean"), kw.pop("corrupt"), site=site, direction=direction, metric="logit_diff", **kw)
    columns = [s.label for s in UNEQUAL[0][0].spans(tok)]
    assert r.dims[-1] == "span" and r.coords["span"] == columns
    assert "PLACE" in columns and "last token" in columns
    units = [None] if site != "head_out" else list(range(demo.config.n_head))
    for i, (clean, corrupt, answer, wrong) in enumerate(UNEQUAL):
        source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
        src_ids, tgt_ids = (torch.tensor(tok(str(p))["input_ids"]) for p in (source, target))
        assert len(src_ids) != len(tgt_ids)  # the point of this test
        a, w = tok(answer)["input_ids"][0], tok(wrong)["input_ids"][0]
        for c, (src_span, tgt_span) in enumerate(zip(source.spans(tok), target.spans(tok))):
            read, write = aligned(src_span.positions, tgt_span.positions)
            for layer in range(demo.config.n_layer):
                for j, unit in enumerate(units):
                    expected = reference_span_patch(
                        demo._module, src_ids, tgt_ids, site, layer, read, write, a, w, unit
                    )
                    got = r.per_pair[i, layer, j, c] if unit is not None else r.per_pair[i, layer, c]
                    assert got == near(expected, 1e-4), (i, src_span.label, layer, unit)


def test_last_token_of_each_span(demo):
    tok = demo.tokenizer
    kw = args(UNEQUAL)
    r = pw.patch(demo, kw.pop("clean"), kw.pop("corrupt"), span_positions="last", metric="logit_diff", **kw)
    place = r.coords["span"].index("PLACE")
    for i, (clean, corrupt, answer, wrong) in enumerate(UNEQUAL):
        src_ids, tgt_ids = (torch.tensor(tok(str(p))["input_ids"]) for p in (clean, corrupt))
        read, write = aligned(clean.spans(tok)[place].positions, corrupt.spans(tok)[place].positions, last_only=True)
        a, w = tok(answer)["input_ids"][0], tok(wrong)["input_ids"][0]
        for layer in range(demo.config.n_layer):
            expected = reference_span_patch(demo._module, src_ids, tgt_ids, "resid_pre", layer, read, write, a, w)
            assert r.per_pair[i, layer, place] == near(expected, 1e-4)


@pytest.mark.parametrize("model_name", ["gpt2-demo", "gpt_neox", "llama", "gemma-gqa"])
def test_padding_changes_nothing(tiny_models, model_name):
    """Every per-pair value of a mixed-length batch equals the pair computed alone, with no padding.

    Fails if the prompts are padded on the left without position ids (checked by padding on the
    left: learned and rotary positions then shift, and every value of the shorter pair moves).
    """
    model = tiny_models[model_name]

    def run(pairs, **settings):
        kw = args(pairs)
        return pw.patch(model, kw.pop("clean"), kw.pop("corrupt"), metric="logit_diff", batch_size=5, **kw, **settings)

    for method in ("exact", "attribution"):
        for direction in ("denoise", "noise"):
            for site in ("resid_pre", "head_out"):
                settings = dict(site=site, method=method, direction=direction)
                both = run(ACROSS, **settings).per_pair
                for i, pair in enumerate(ACROSS):
                    alone = run([pair], **settings).per_pair
                    # 1e-5, relative to values of size ~7 too: float32 sums in batches of another shape
                    assert_close(both[i], alone[0], 1e-5, err_msg=f"{settings} pair {i}")


def test_plain_strings_of_different_lengths_point_to_templates(demo):
    clean, corrupt, answer, wrong = UNEQUAL[0]
    with pytest.raises(pw.PromptError, match="Template"):
        pw.patch(demo, str(clean), str(corrupt), answer=answer, wrong=wrong)


def test_mixed_kinds_and_templates_are_refused_before_compute(demo):
    clean, corrupt, answer, wrong = UNEQUAL[0]
    with pytest.raises(pw.PromptError, match="mix plain strings"):
        pw.patch(demo, clean, str(corrupt), answer=answer, wrong=wrong)
    other = pw.Template("After {IO} and {S1} went to the {PLACE} , {S2} gave a {OBJ} to")
    stranger = other.fill(IO="Mary", S1="John", PLACE="park", S2="Anna", OBJ="drink")
    with pytest.raises(pw.PromptError, match="different templates"):
        pw.patch(demo, [clean, clean], [corrupt, stranger], answer=answer, wrong=wrong)
    with pytest.raises(pw.SettingsError, match="span_positions"):
        pw.patch(demo, clean, corrupt, answer=answer, wrong=wrong, span_positions="first")
    with pytest.raises(pw.SettingsError, match="span columns"):
        pw.patch(demo, clean, corrupt, answer=answer, wrong=wrong, positions=[40])


def _path_reference(model, pairs, direction, senders, receivers):
    """Logit difference per pair from the plain path-patching twin, senders aligned span by span
    (written out here, independently of the engine), receivers at their spans' target positions."""
    tok = model.tokenizer
    out = []
    for clean, corrupt, answer, wrong in pairs:
        source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
        src_ids, tgt_ids = (torch.tensor(tok(str(p))["input_ids"]) for p in (source, target))
        pairs_at = []
        for src_span, tgt_span in zip(source.spans(tok), target.spans(tok)):
            read, write = aligned(src_span.positions, tgt_span.positions)
            pairs_at += [(r, w) for r, w in zip(read, write) if w not in {t for _, t in pairs_at}]
        plain, at = "logits", None
        if receivers != "logits":
            plain = [(c.site, c.layer, c.head) for c in receivers]
            spans = {s.label: s.positions for s in target.spans(tok)}
            at = [list(spans[c.pos]) if c.pos is not None else list(range(len(tgt_ids))) for c in receivers]
        logits = reference_path_patch(model._module, src_ids, tgt_ids, senders, plain, pairs_at, at)
        a, w = tok(answer)["input_ids"][0], tok(wrong)["input_ids"][0]
        out.append(float(logits[a] - logits[w]))
    return np.array(out)


# A pair whose names differ before a slot of different lengths: positions with no partner then see
# a changed past, so freezing a sender there matters.
CHANGED_BEFORE = (
    T.fill(IO="Mary", S1="John", PLACE="store", S2="John", OBJ="drink"),
    T.fill(IO="Anna", S1="Tom", PLACE="silver castle", S2="Lisa", OBJ="drink"),
    "Mary",
    "John",
)


@pytest.mark.parametrize("model_name", ["gpt2-demo", "llama"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_path_patching_across_lengths_matches_the_plain_twin(tiny_models, model_name, direction):
    """Senders carry the source value at the span-aligned positions only (frozen elsewhere); receivers
    at a span's positions of the target; pairs of different lengths in one batch."""
    model = tiny_models[model_name]
    last = model.config.num_hidden_layers - 1
    pairs = [*UNEQUAL, CHANGED_BEFORE]
    kw = args(pairs)
    clean, corrupt = kw.pop("clean"), kw.pop("corrupt")
    moved = 0.0
    # A value receiver at PLACE reads the positions with no partner: there a sender's freeze matters.
    receiver_sets = [
        [pw.Cell("head_q", last, head=0), pw.Cell("head_k", last, head=1, pos="S2")],
        [pw.Cell("head_v", last, head=0, pos="PLACE")],
    ]
    for receivers in ["logits", *receiver_sets]:
        for senders in ([(0, 1)], [(0, 3), (1, 1)]):
            got = pw.path_patch(
                model, clean, corrupt, **kw, senders=senders, receivers=receivers, direction=direction, batch_size=3
            )
            want = _path_reference(model, pairs, direction, senders, receivers)
            assert_close(got.per_pair, want, 1e-4, err_msg=f"{receivers} {senders}")
            base = got.corrupt_baseline if direction == "denoise" else got.clean_baseline
            moved = max(moved, np.abs(got.per_pair - base).max())
    assert moved > 1e-2  # the comparison has power
    sweep = pw.path_patch(model, clean, corrupt, **kw, direction=direction)
    assert sweep.dims == ("layer", "head")
    assert_close(sweep.per_pair[:, 0, 1], _path_reference(model, pairs, direction, [(0, 1)], "logits"), 1e-4)


def test_span_results_plot_save_and_load(demo, tmp_path):
    kw = args(UNEQUAL)
    r = pw.patch(demo, kw.pop("clean"), kw.pop("corrupt"), **kw)
    fig = r.plot()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "PLACE" in labels and "last token" in labels
    path = tmp_path / "spans.npz"
    r.save(path)
    back = pw.PatchResult.load(path)
    assert back.dims == r.dims and back.coords["span"] == r.coords["span"]
    np.testing.assert_array_equal(back.per_pair, r.per_pair)


def test_a_span_grid_names_no_circuit(demo):
    kw = args(UNEQUAL)
    r = pw.patch(demo, kw.pop("clean"), kw.pop("corrupt"), **kw)
    with pytest.raises(pw.SettingsError, match="grid by span"):
        r.top_sites(3)


def test_patch_sites_with_span_cells_matches_the_span_grid(demo):
    """A span cell patched alone equals that cell of patch's grid; two spans together equal patch with both at once."""
    kw = args(UNEQUAL)
    clean, corrupt = kw.pop("clean"), kw.pop("corrupt")
    grid = pw.patch(demo, clean, corrupt, metric="logit_diff", **kw)
    cells = [pw.Cell("resid_pre", 1, pos="S2"), pw.Cell("resid_pre", 1, pos="PLACE")]
    joint = pw.patch_sites(demo, clean, corrupt, cells=cells, metric="logit_diff", **kw)
    spans = grid.coords["span"]
    for j, cell in enumerate(cells):
        assert_close(joint.per_pair_singles[:, j], grid.per_pair[:, 1, spans.index(cell.pos)], 1e-5)
    both = [spans.index("S2"), spans.index("PLACE")]
    together = pw.patch(demo, clean, corrupt, layers=[1], positions=both, by_position=False, metric="logit_diff", **kw)
    assert_close(joint.per_pair_joint, together.per_pair[:, 0], 1e-5)
    with pytest.raises(pw.SettingsError, match="span label"):
        pw.patch_sites(demo, clean, corrupt, cells=[pw.Cell("resid_pre", 1, pos=3)], **kw)
    with pytest.raises(pw.SettingsError, match="needs prompts made from a template"):
        pw.patch_sites(
            demo,
            "The capital of France is",
            "The capital of Japan is",
            answer="Paris",
            wrong="Tokyo",
            cells=[pw.Cell("resid_pre", 1, pos="S2")],
        )


def test_within_opens_a_span_into_the_positions_every_pair_has(demo):
    """``within`` columns are the span's aligned positions, one token each, as the plain reference patches them."""
    tok = demo.tokenizer
    pair = ioi("Mary", "John", "orange forest tunnel", "silver castle")  # PLACE: 3 tokens, then 2
    kw = args([pair])
    r = pw.patch(demo, kw.pop("clean"), kw.pop("corrupt"), within="PLACE", metric="logit_diff", **kw)
    assert r.dims == ("layer", "span") and r.coords["span"] == ["PLACE[0]", "PLACE[1]"]
    clean, corrupt, answer, wrong = pair
    src_ids, tgt_ids = (torch.tensor(tok(str(p))["input_ids"]) for p in (clean, corrupt))
    place = [s.label for s in clean.spans(tok)].index("PLACE")
    src, tgt = clean.spans(tok)[place].positions, corrupt.spans(tok)[place].positions
    a, w = tok(answer)["input_ids"][0], tok(wrong)["input_ids"][0]
    for i, (read, written) in enumerate(zip(src[-2:], tgt[-2:])):  # aligned from the last token
        for layer in range(demo.config.n_layer):
            expected = reference_span_patch(demo._module, src_ids, tgt_ids, "resid_pre", layer, [read], [written], a, w)
            assert r.per_pair[0, layer, i] == near(expected, 1e-4)
    # With a pair whose PLACE has one token, only the last position is one every pair has.
    kw = args([pair, UNEQUAL[0]])
    both = pw.patch(demo, kw.pop("clean"), kw.pop("corrupt"), within="PLACE", metric="logit_diff", **kw)
    assert both.coords["span"] == ["PLACE[0]"]
    assert_close(both.per_pair[0, :, 0], r.per_pair[0, :, 1], 1e-5)
    kw = args(UNEQUAL)
    with pytest.raises(pw.SettingsError, match="not a span of the template"):
        pw.patch(demo, kw.pop("clean"), kw.pop("corrupt"), within="NOPE", **kw)
    with pytest.raises(pw.SettingsError, match="needs prompts made from a template"):
        pw.patch(demo, "The capital of France is", "The capital of Japan is", answer="Paris", wrong="Tokyo", within="X")


def test_attention_pattern_across_lengths_is_refused(demo):
    kw = args(UNEQUAL)
    with pytest.raises(pw.SettingsError, match="attn_pattern"):
        pw.patch(demo, kw.pop("clean"), kw.pop("corrupt"), site="attn_pattern", **kw)
    kw = args(ACROSS)  # equal lengths within each pair: the pattern's rows pair up
    r = pw.patch(demo, kw.pop("clean"), kw.pop("corrupt"), site="attn_pattern", layers=[1], **kw)
    assert np.isfinite(r.values).all()
