"""Answers of several tokens (issue 30): the metric reads the whole continuation by teacher forcing, and the
engine equals the plain twin (``reference.reference_sequence_patch``: each continuation appended to the
target prompt and run on its own, one run per cell and continuation) on every site family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.core import continuation
from patchwidget.core.batches import NONE

from .close import assert_close, near
from .reference import (
    continuation_logprob,
    reference_attribution,
    reference_faithfulness,
    reference_sequence_patch,
    reference_span_patch,
)
from .test_engine_reference import narrowing
from .test_faithfulness import _kept, _random_sets

# Two IOI pairs whose answers and wrong answers have 1 to 3 tokens, of other lengths than each other's.
PAIRS = demo_data.ioi_pairs(2, seed=11)
CLEAN = [p.clean for p in PAIRS]
CORRUPT = [p.corrupt for p in PAIRS]
ANSWERS = [f" {PAIRS[0].answer} went to", f" {PAIRS[1].answer}"]
WRONGS = [f" {PAIRS[0].wrong}", f" {PAIRS[1].wrong} and {PAIRS[1].answer}"]
SITES = [s for s in pw.SITES]


def ids(model, text):
    return torch.tensor(model.tokenizer(text)["input_ids"])


def seq(model, text):
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def units_of(model, site, kwargs):
    config = model._module.config
    if not pw.SITES[site].unit:
        return [0]
    if site == "mlp_neuron":
        return kwargs["neurons"]
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return list(range(kv if site in ("head_k", "head_v") else config.num_attention_heads))


def expected_grid(model, site, direction, kwargs, by_position):
    """The plain twin's grid, ``(pair, ...)`` as the engine's ``per_pair``."""
    out = []
    for clean, corrupt, answer, wrong in zip(CLEAN, CORRUPT, ANSWERS, WRONGS):
        source, target = (ids(model, clean), ids(model, corrupt))
        if direction == "noise":
            source, target = target, source
        grid = reference_sequence_patch(
            model._module,
            source,
            target,
            site,
            list(range(model.config.num_hidden_layers)),
            units_of(model, site, kwargs),
            list(range(len(target))),
            by_position,
            seq(model, answer),
            seq(model, wrong),
        ).numpy()
        if not pw.SITES[site].unit:
            grid = grid[:, 0]
        out.append(grid if by_position else grid[..., 0])
    return np.stack(out)


def test_answers_keep_their_tokens(demo):
    batch = pw.data.prompts.prepare_prompts(demo.tokenizer, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS)
    assert [len(s) for s in batch.answer_seqs] == [3, 1] and [len(s) for s in batch.wrong_seqs] == [1, 3]
    assert batch.width == batch.n_pos + 2 + 2
    one = pw.data.prompts.prepare_prompts(
        demo.tokenizer, CLEAN, CORRUPT, answer=[p.answer for p in PAIRS], wrong=[p.wrong for p in PAIRS]
    )
    assert one.answer_seqs is None and one.width == one.n_pos  # one-token answers: the engine as it was


@pytest.mark.parametrize("model_name", ["gpt2-demo", "qwen2-gqa"])
@pytest.mark.parametrize("site", SITES)
def test_grid_equals_plain_twin(tiny_models, model_name, site):
    model = tiny_models[model_name]
    kwargs = narrowing(model, site)
    for direction in ("denoise", "noise"):
        result = pw.patch(model, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS, site=site, direction=direction, **kwargs)
        expected = expected_grid(model, site, direction, kwargs, result.dims[-1] == "pos")
        assert result.per_pair.shape == expected.shape
        spread = np.abs(expected - result.corrupt_baseline.reshape((-1,) + (1,) * (expected.ndim - 1)))
        if direction == "denoise":
            assert spread.max() > 1e-3  # the comparison has power: patching moves the metric somewhere
        assert_close(result.per_pair, expected, 1e-4, err_msg=direction)


@pytest.mark.parametrize("model_name", ["gpt2-demo", "qwen2-gqa"])
def test_baselines_are_the_continuations_log_probabilities(tiny_models, model_name):
    model = tiny_models[model_name]
    result = pw.patch(model, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS, site="resid_pre", layers=[0])
    for i, (clean, corrupt) in enumerate(zip(CLEAN, CORRUPT)):
        for text, got in ((clean, result.clean_baseline[i]), (corrupt, result.corrupt_baseline[i])):
            want = continuation_logprob(model._module, ids(model, text), seq(model, ANSWERS[i]))
            want -= continuation_logprob(model._module, ids(model, text), seq(model, WRONGS[i]))
            assert got == near(want, 1e-4)
    prob = pw.patch(model, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS, site="resid_pre", layers=[0], metric="prob")
    want = np.exp(continuation_logprob(model._module, ids(model, CLEAN[0]), seq(model, ANSWERS[0])))
    assert prob.clean_baseline[0] == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("model_name", ["gpt2-demo", "qwen2-gqa"])
@pytest.mark.parametrize("site", ["resid_pre", "head_out", "mlp_out"])
def test_attribution_equals_its_directional_derivative(tiny_models, model_name, site):
    model = tiny_models[model_name]
    result = pw.patch(model, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS, site=site, method="attribution")
    for i in range(len(CLEAN)):
        source, target = ids(model, CLEAN[i]), ids(model, CORRUPT[i])
        for layer in range(model.config.num_hidden_layers):
            units = units_of(model, site, {})
            want = reference_attribution(
                model._module,
                source,
                target,
                site,
                layer,
                units,
                list(range(len(target))),
                seq(model, ANSWERS[i]),
                seq(model, WRONGS[i]),
            ).numpy()
            got = result.per_pair[i, layer] if pw.SITES[site].unit else result.per_pair[i, layer][None]
            assert_close(got, want, 1e-4, err_msg=f"pair {i} layer {layer}")


def test_every_speedup_gives_the_same_grid(demo):
    """Prefix reuse, packed rows and the plain batched loop read the continuations alike."""
    grids = [
        pw.patch(demo, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS, site="resid_pre", speedups=s, batch_size=b)
        for s, b in ((None, 64), (pw.Speedups(pack=False), 5), (pw.Speedups(reuse_prefix=False), 64))
    ] + [pw.patch(demo, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS, site="resid_pre", speedups=NONE)]
    for grid in grids[1:]:
        assert_close(grid.per_pair, grids[0].per_pair, 1e-5)


def test_a_branch_that_sees_the_other_fails_the_comparison(demo, monkeypatch):
    """The twin has power over the mask: branches that see each other's tokens give other numbers."""
    built = continuation.build

    def leaky(*args):
        ext = built(*args)
        n_pos = args[0].shape[1]
        allowed = ext.allowed.clone()
        allowed[:, n_pos:, n_pos:] |= torch.tril(torch.ones_like(allowed[0, n_pos:, n_pos:]))
        return continuation.Extension(ext.ids, ext.positions, allowed, ext.reads, ext.targets, ext.sign)

    monkeypatch.setattr(continuation, "build", leaky)
    result = pw.patch(demo, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS, site="resid_pre")
    expected = expected_grid(demo, "resid_pre", "denoise", {}, True)
    with pytest.raises(AssertionError):
        assert_close(result.per_pair, expected, 1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(answer=""), r"answer '' is empty: it tokenizes to no tokens"),
        (dict(answer=" Mary went", wrong=" Mary went"), r"same tokens \['Mary', 'went'\]"),
        (dict(answer=" Mary" + " went" * 60), r"answer of pair 0 .* runs past the model's context of 64"),
        (dict(metric=lambda logits: logits[:, 0]), r"callable of one position's logits"),
    ],
)
def test_bad_input_is_refused_before_compute(demo, monkeypatch, kwargs, message):
    def no_trace(*args, **kw):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(demo, "trace", no_trace)
    given = dict(answer=" Mary went to", wrong=" John", site="resid_pre") | kwargs
    with pytest.raises((pw.PromptError, pw.SettingsError, pw.MetricError), match=message):
        pw.patch(demo, CLEAN[0], CORRUPT[0], **given)


def test_template_pairs_of_other_lengths_equal_each_pair_alone(demo):
    """A shorter pair's row is padded to the longest prompt: its continuations must see its real tokens only
    (not the pads) and go on from its own last token, so each pair reads as it reads alone."""
    t = pw.Template("When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to")
    clean = [
        t.fill(IO="Mary", S1="John", PLACE="store", S2="John"),
        t.fill(IO="Tom", S1="Lisa", PLACE="silver castle", S2="Lisa"),
    ]
    corrupt = [
        t.fill(IO="Mary", S1="John", PLACE="store", S2="Mary"),
        t.fill(IO="Tom", S1="Lisa", PLACE="silver castle", S2="Tom"),
    ]
    answers, wrongs = [" Mary went to", " Tom"], [" John", " Lisa and Tom"]
    for site in ("resid_pre", "head_out"):
        both = pw.patch(demo, clean, corrupt, answer=answers, wrong=wrongs, site=site)
        assert both.dims[-1] == "span"
        for i in range(2):
            alone = pw.patch(demo, clean[i], corrupt[i], answer=answers[i], wrong=wrongs[i], site=site)
            assert_close(both.per_pair[i], alone.per_pair[0], 1e-4, err_msg=f"{site} pair {i}")
            assert both.clean_baseline[i] == near(float(alone.clean_baseline[0]), 1e-4)


@pytest.mark.parametrize("model_name", ["gpt2-demo", "qwen2-gqa"])
@pytest.mark.parametrize("ablation", ["patch", "mean"])
def test_faithfulness_equals_the_plain_twin(tiny_models, model_name, ablation):
    """MIB's f with the continuations' log-probabilities: every node outside C carries its corrupted value at
    the prompt's positions, the continuations computed (``reference_faithfulness`` with lists of ids)."""
    model = tiny_models[model_name]
    plain = [
        (ids(model, c), ids(model, k), seq(model, a), seq(model, w))
        for c, k, a, w in zip(CLEAN, CORRUPT, ANSWERS, WRONGS)
    ]
    for cells in _random_sets(model, np.random.default_rng(1), 3):
        got = pw.faithfulness(model, CLEAN, CORRUPT, answer=ANSWERS, wrong=WRONGS, circuit=cells, ablation=ablation)
        assert got == near(reference_faithfulness(model._module, plain, _kept(cells), ablation), 1e-4)


def test_joint_patch_and_path_patch_read_the_continuations(demo):
    """``patch_sites`` and ``path_patch`` through the same loop: one cell equals its grid's cell, and a
    last-layer sender's path to the logits equals patching its output at every position."""
    kw = dict(answer=ANSWERS, wrong=WRONGS)
    grid = pw.patch(demo, CLEAN, CORRUPT, site="head_out", **kw)
    joint = pw.patch_sites(demo, CLEAN, CORRUPT, cells=[pw.Cell("head_out", 3, head=1, pos=-1)], **kw)
    assert_close(joint.per_pair_joint, grid.per_pair[:, 3, 1, -1], 1e-4)
    whole = pw.patch(demo, CLEAN, CORRUPT, site="head_out", by_position=False, **kw)
    path = pw.path_patch(demo, CLEAN, CORRUPT, senders=[(3, 1)], **kw)
    assert_close(path.per_pair.reshape(-1), whole.per_pair[:, 3, 1], 1e-4)


@pytest.mark.parametrize("metric", ["prob", "kl", "logit_diff_norm"])
def test_every_metric_reads_the_same_through_either_unembedding(demo, metric):
    """The reads unembedded outside the trace (``continuation.scored_hidden``) equal the model's own logits
    read in full (no speed-ups), for every metric."""
    kw = dict(answer=ANSWERS, wrong=WRONGS, site="head_out", metric=metric)
    fast, plain = pw.patch(demo, CLEAN, CORRUPT, **kw), pw.patch(demo, CLEAN, CORRUPT, speedups=NONE, **kw)
    assert_close(fast.per_pair, plain.per_pair, 1e-5)
    assert np.ptp(fast.per_pair) > 1e-3  # the grid varies: the comparison has power


def test_a_callable_metric_on_log_probabilities(demo):
    """A callable naming ``answer_logprob`` and ``wrong_logprob`` receives each continuation's summed
    log-probability (and the last prompt token's logits), for answers of several tokens or of one."""

    def diff(logits, answer_logprob, wrong_logprob):
        return answer_logprob - wrong_logprob

    def prob(logits, answer_logprob, wrong_logprob):
        return answer_logprob.exp()

    for answers, wrongs in ((ANSWERS, WRONGS), ([p.answer for p in PAIRS], [p.wrong for p in PAIRS])):
        kw = dict(answer=answers, wrong=wrongs, site="head_out")
        for custom, named in ((diff, "logit_diff"), (prob, "prob")):
            got = pw.patch(demo, CLEAN, CORRUPT, metric=custom, **kw)
            assert_close(got.per_pair, pw.patch(demo, CLEAN, CORRUPT, metric=named, **kw).per_pair, 1e-5)
    with pytest.raises(pw.MetricError, match=r"shape \(\)"):
        pw.patch(
            demo,
            CLEAN,
            CORRUPT,
            answer=ANSWERS,
            wrong=WRONGS,
            metric=lambda logits, answer_logprob, wrong_logprob: answer_logprob.sum(),
        )


def test_the_searches_score_the_continuations(demo):
    """find_circuit and find_bottleneck through the same loop: a found circuit's f is faithfulness on its
    nodes, a bottleneck's restore the joint patch of its cells, both with the continuations' scores."""
    pairs = demo_data.ioi_pairs(4, seed=3)
    texts = dict(
        clean=[p.clean for p in pairs],
        corrupt=[p.corrupt for p in pairs],
        answer=[f" {p.answer} went to" for p in pairs],
        wrong=[f" {p.wrong}" for p in pairs],
    )
    circuit = pw.find_circuit(demo, **texts)
    assert circuit.faithfulness == near(pw.faithfulness(demo, **texts, circuit=circuit.cells), 1e-5)
    assert circuit.faithfulness != near(pw.faithfulness(demo, **texts, circuit=circuit.cells[:-1]), 1e-3)
    bottleneck = pw.find_bottleneck(demo, **texts, metric="logit_diff_norm")
    joint = pw.patch_sites(demo, **texts, cells=bottleneck.cells, metric="logit_diff_norm")
    assert bottleneck.restore == near(joint.joint, 1e-5)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_template_pairs_of_unequal_lengths_equal_the_span_twin(demo, direction):
    """Clean and corrupted prompts of different lengths, aligned by span: each span cell equals the plain
    span twin (``reference_span_patch`` with the continuations appended to the target prompt)."""
    from .test_spans import UNEQUAL, aligned

    tok = demo.tokenizer
    answers, wrongs = [f" {p[2]} went to" for p in UNEQUAL], [f" {p[3]}" for p in UNEQUAL]
    clean, corrupt = [p[0] for p in UNEQUAL], [p[1] for p in UNEQUAL]
    r = pw.patch(demo, clean, corrupt, answer=answers, wrong=wrongs, site="resid_pre", direction=direction)
    for i, (c, k, *_) in enumerate(UNEQUAL):
        source, target = (c, k) if direction == "denoise" else (k, c)
        src_ids, tgt_ids = (torch.tensor(tok(str(p))["input_ids"]) for p in (source, target))
        for col, (src_span, tgt_span) in enumerate(zip(source.spans(tok), target.spans(tok))):
            read, write = aligned(src_span.positions, tgt_span.positions)
            for layer in range(demo.config.n_layer):
                want = reference_span_patch(
                    demo._module,
                    src_ids,
                    tgt_ids,
                    "resid_pre",
                    layer,
                    read,
                    write,
                    seq(demo, answers[i]),
                    seq(demo, wrongs[i]),
                )
                assert r.per_pair[i, layer, col] == near(want, 1e-4), (i, src_span.label, layer)


def test_remote_execution_reads_the_continuations_alike(demo):
    """``remote="local"`` runs every pass as a server would (no cached keys and values, no packing, full
    logits): the same grid."""
    kw = dict(answer=ANSWERS, wrong=WRONGS, site="head_out")
    here, served = pw.patch(demo, CLEAN, CORRUPT, **kw), pw.patch(demo, CLEAN, CORRUPT, remote="local", **kw)
    assert_close(served.per_pair, here.per_pair, 1e-5)


def test_noise_as_the_corruption(demo):
    """Gaussian noise on the subject's embeddings (none on the continuation's positions): every speed-up
    and the plain loop agree, and the estimate's baselines are the exact grid's."""
    kw = dict(answer=ANSWERS[0], wrong=WRONGS[0], site="resid_pre")
    corrupt = pw.noise(PAIRS[0].wrong, samples=3)
    fast, plain = pw.patch(demo, CLEAN[0], corrupt, **kw), pw.patch(demo, CLEAN[0], corrupt, speedups=NONE, **kw)
    assert_close(fast.per_pair, plain.per_pair, 1e-5)
    assert abs(float(fast.clean_baseline[0] - fast.corrupt_baseline[0])) > 1e-2  # the noise moved the metric
    estimate = pw.patch(demo, CLEAN[0], corrupt, method="attribution", **kw)
    assert_close(estimate.corrupt_baseline, fast.corrupt_baseline, 1e-5)
