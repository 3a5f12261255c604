"""``pw.generate``: greedy continuations under a patch, against the plain reference that reruns everything.

The reference (``tests/reference.py::reference_generate``) runs the whole sequence again for every
new token, with hooks overwriting the prompt positions at the cells' sites; the package runs the
patched prompt once and continues from its key-value cache. Token for token they must agree.
"""

from __future__ import annotations

import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.core.sites import model_info

from .reference import reference_generate

PAIRS = demo_data.ioi_pairs(2, seed=3)
CLEAN, CORRUPT = [p.clean for p in PAIRS], [p.corrupt for p in PAIRS]
N = 6
# Cells per model: a head at the last position and the residual stream at the second subject (position 9);
# on the grouped-query model a key-value head too. The bundled model's heads with weights are L0H3, L1H0, L3H1.
CELLS = {
    "gpt2-demo": [pw.Cell("head_out", 3, head=1, pos=-1), pw.Cell("resid_pre", 1, pos=9)],
    "qwen2-gqa": [
        pw.Cell("head_out", 2, head=3, pos=-1),
        pw.Cell("head_v", 1, head=1, pos=9),
        pw.Cell("resid_pre", 1, pos=9),
    ],
}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def ids_of(model, text):
    return torch.tensor(model.tokenizer(text)["input_ids"])


def ref_writes(cells, n_pos):
    """The cells as the reference's writes, for prompts of one length ``n_pos``."""
    out = []
    for c in cells:
        positions = range(n_pos) if c.pos is None else [c.pos % n_pos]
        out.append((c.site, c.layer, c.head if c.head is not None else c.neuron, [(p, p) for p in positions]))
    return out


def expected(model, clean, corrupt, cells, direction, n=N):
    """The reference's clean, corrupted and patched continuations, one list of ids per pair."""
    hf, eos = model._module, model.tokenizer.eos_token_id
    out = {"clean": [], "corrupt": [], "patched": []}
    for c, k in zip(clean, corrupt):
        c_ids, k_ids = ids_of(model, c), ids_of(model, k)
        source, target = (c_ids, k_ids) if direction == "denoise" else (k_ids, c_ids)
        out["clean"].append(reference_generate(hf, c_ids, c_ids, [], n, eos))
        out["corrupt"].append(reference_generate(hf, k_ids, k_ids, [], n, eos))
        out["patched"].append(reference_generate(hf, source, target, ref_writes(cells, len(target)), n, eos))
    return out


def hf_greedy(model, text, n=N):
    """Hugging Face's own greedy generation, cut before the first eos."""
    eos = model.tokenizer.eos_token_id
    ids = ids_of(model, text)[None]
    with torch.no_grad():
        out = model._module.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    new = out[0, ids.shape[1] :].tolist()
    return new[: new.index(eos)] if eos in new else new


def assert_matches(g, want):
    assert g.clean_ids == want["clean"]
    assert g.corrupt_ids == want["corrupt"]
    assert g.patched_ids == want["patched"]
    assert len(g.clean) == len(g.corrupt) == len(g.patched) == len(g.patched_ids)


@pytest.mark.parametrize("name", ["gpt2-demo", "qwen2-gqa"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_cells_match_the_reference_token_for_token(tiny_models, name, direction):
    model = tiny_models[name]
    g = pw.generate(model, CLEAN, CORRUPT, cells=CELLS[name], direction=direction, max_new_tokens=N)
    want = expected(model, CLEAN, CORRUPT, CELLS[name], direction)
    assert_matches(g, want)
    assert g.direction == direction and g.cells == CELLS[name] and g.max_new_tokens == N
    # The unpatched continuations are Hugging Face's own greedy ones too.
    assert g.clean_ids == [hf_greedy(model, c) for c in CLEAN]
    assert g.corrupt_ids == [hf_greedy(model, k) for k in CORRUPT]
    # The patch changes the target's continuation somewhere, so the comparison above can fail.
    target = g.corrupt_ids if direction == "denoise" else g.clean_ids
    assert g.patched_ids != target
    assert g.patched == [model.tokenizer.decode(ids) for ids in g.patched_ids]


SITE_CELLS = [
    pw.Cell("embed", pos=9),
    pw.Cell("head_q", 3, head=1, pos=-1),
    pw.Cell("head_k", 3, head=1, pos=12),
    pw.Cell("head_out", 0, head=3),  # every position
    pw.Cell("attn_out", 1, pos=10),
    pw.Cell("resid_mid", 2, pos=10),
    pw.Cell("mlp_neuron", 2, neuron=5, pos=-1),
    pw.Cell("mlp_out", 2, pos=-1),
    pw.Cell("resid_post", 2, pos=9),
]


@pytest.mark.parametrize("cell", SITE_CELLS, ids=lambda c: c.label)
def test_every_site_matches_the_reference(demo, cell):
    g = pw.generate(demo, CLEAN, CORRUPT, cells=[cell], max_new_tokens=4)
    as_written = pw.Cell("resid_pre", 0, pos=cell.pos) if cell.site == "embed" else cell
    assert g.patched_ids == expected(demo, CLEAN, CORRUPT, [as_written], "denoise", n=4)["patched"]


def test_a_different_cell_gives_a_different_continuation(demo):
    one = pw.generate(demo, CLEAN, CORRUPT, cells=[pw.Cell("head_out", 3, head=1, pos=-1)], max_new_tokens=N)
    other = pw.generate(demo, CLEAN, CORRUPT, cells=[pw.Cell("head_out", 3, head=1, pos=4)], max_new_tokens=N)
    assert one.patched_ids != other.patched_ids
    assert other.patched_ids == expected(demo, CLEAN, CORRUPT, other.cells, "denoise")["patched"]


@pytest.mark.parametrize("name", ["gpt2-demo", "qwen2-gqa"])
def test_a_circuit_patches_its_cells_in_its_own_direction(tiny_models, name):
    model = tiny_models[name]
    circuit = pw.Circuit(cells=CELLS[name], provenance={"direction": "noise", "shape": model_info(model).shape()})
    g = pw.generate(model, CLEAN, CORRUPT, circuit=circuit, max_new_tokens=N)
    assert g.direction == "noise"
    assert_matches(g, expected(model, CLEAN, CORRUPT, CELLS[name], "noise"))
    g = pw.generate(model, CLEAN, CORRUPT, circuit=circuit, direction="denoise", max_new_tokens=N)
    assert g.direction == "denoise"
    assert_matches(g, expected(model, CLEAN, CORRUPT, CELLS[name], "denoise"))


def test_a_circuit_without_a_direction_denoises(demo):
    circuit = pw.Circuit(cells=CELLS["gpt2-demo"])
    assert pw.generate(demo, CLEAN, CORRUPT, circuit=circuit, max_new_tokens=2).direction == "denoise"


T = pw.Template("When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to")
T_CLEAN = [
    T.fill(IO="Mary", S1="John", PLACE="store", S2="John"),
    T.fill(IO="Tom", S1="Lisa", PLACE="silver castle", S2="Lisa"),
]
T_CORRUPT = [
    T.fill(IO="Mary", S1="John", PLACE="park", S2="Anna"),
    T.fill(IO="Tom", S1="Lisa", PLACE="orange forest tunnel", S2="Mark"),
]


def span_writes(model, cells, source, target):
    """Span cells as the reference's writes: each span's positions paired from its last token."""
    src = {s.label: s.positions for s in source.spans(model.tokenizer)}
    tgt = {s.label: s.positions for s in target.spans(model.tokenizer)}
    out = []
    for c in cells:
        k = min(len(src[c.pos]), len(tgt[c.pos]))
        pairs = list(zip(src[c.pos][len(src[c.pos]) - k :], tgt[c.pos][len(tgt[c.pos]) - k :]))
        out.append((c.site, c.layer, c.head, pairs))
    return out


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_template_prompts_patch_by_span(demo, direction):
    cells = [
        pw.Cell("resid_pre", 1, pos="PLACE"),
        pw.Cell("resid_pre", 1, pos="S2"),
        pw.Cell("head_out", 3, head=1, pos="last token"),
    ]
    g = pw.generate(demo, T_CLEAN, T_CORRUPT, cells=cells, direction=direction, max_new_tokens=N)
    hf, eos = demo._module, demo.tokenizer.eos_token_id
    for i, (c, k) in enumerate(zip(T_CLEAN, T_CORRUPT)):
        source, target = (c, k) if direction == "denoise" else (k, c)
        writes = span_writes(demo, cells, source, target)
        assert g.patched_ids[i] == reference_generate(
            hf, ids_of(demo, str(source)), ids_of(demo, str(target)), writes, N, eos
        )
        assert g.clean_ids[i] == hf_greedy(demo, str(c))
        assert g.corrupt_ids[i] == hf_greedy(demo, str(k))
    # Pair 1's prompts differ in length (PLACE is 2 and 3 tokens): its runs are its own, never padded.
    assert len(ids_of(demo, str(T_CLEAN[1]))) != len(ids_of(demo, str(T_CORRUPT[1])))
    assert g.patched_ids != (g.corrupt_ids if direction == "denoise" else g.clean_ids)


def test_the_name_mover_head_moves_the_continuation_to_the_clean_name(demo):
    ex = demo_data.IOI_EXAMPLE
    g = pw.generate(demo, ex["clean"], ex["corrupt"], cells=[pw.Cell("head_out", 3, head=1, pos=-1)], max_new_tokens=5)
    tok = demo.tokenizer
    first = lambda ids: tok.decode(ids[0]).strip()
    assert first(g.clean_ids[0]) == ex["answer"]  # Mary
    assert first(g.corrupt_ids[0]) == ex["wrong"]  # John
    # L3H1 at the last token alone carries the name: the patched corrupted run says the clean answer.
    assert first(g.patched_ids[0]) == ex["answer"]
    # Measured: the whole continuation then is the clean run's ("Mary drink drink drink drink"), and the
    # corrupted run's differs after its first token too ("John Sarah ..."), so this says more than the first token.
    assert g.patched_ids == g.clean_ids and g.corrupt_ids[0][1:] != g.clean_ids[0][1:]
    # A head with no weights (training switched it off) changes nothing.
    dead = pw.generate(
        demo, ex["clean"], ex["corrupt"], cells=[pw.Cell("head_out", 3, head=0, pos=-1)], max_new_tokens=3
    )
    assert dead.patched_ids == dead.corrupt_ids


def test_generation_stops_at_eos(demo):
    # Two pairs in one batch: the row that ends runs on with the other, its further tokens unused.
    cells = [pw.Cell("head_out", 3, head=1, pos=-1)]
    full = pw.generate(demo, CLEAN, CORRUPT, cells=cells, max_new_tokens=4)
    stop = full.clean_ids[0][1]  # the clean run's second new token, taken as the end-of-text token
    tok, eos = demo.tokenizer, demo.tokenizer.eos_token_id
    tok.eos_token_id = stop
    try:
        g = pw.generate(demo, CLEAN, CORRUPT, cells=cells, max_new_tokens=4)
    finally:
        tok.eos_token_id = eos
    assert tok.eos_token_id == eos
    assert g.clean_ids[0] == full.clean_ids[0][:1]  # stopped there, the eos token not included
    cut = lambda ids: ids[: ids.index(stop)] if stop in ids else ids
    for got, was in (
        (g.clean_ids, full.clean_ids),
        (g.corrupt_ids, full.corrupt_ids),
        (g.patched_ids, full.patched_ids),
    ):
        assert got == [cut(ids) for ids in was]
    assert any(len(ids) == 4 for ids in g.corrupt_ids)  # a row that did not end ran its 4 tokens


def test_progress_counts_every_pass_and_can_stop_the_run(demo):
    """``progress(done, total)`` after each forward pass (the widget's Cancel raises from it): the two pairs have
    one length, so each of the three runs is one batch of ``max_new_tokens`` passes."""
    cells, seen = CELLS["gpt2-demo"], []
    g = pw.generate(demo, CLEAN, CORRUPT, cells=cells, max_new_tokens=3, progress=lambda *a: seen.append(a))
    assert seen == [(done, 9) for done in range(1, 10)]
    assert g.patched_ids == pw.generate(demo, CLEAN, CORRUPT, cells=cells, max_new_tokens=3).patched_ids

    class Stop(Exception):
        pass

    def stop(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        pw.generate(demo, CLEAN, CORRUPT, cells=cells, max_new_tokens=3, progress=stop)


def test_remote_local_gives_the_same_tokens(demo):
    cells = CELLS["gpt2-demo"]
    here = pw.generate(demo, CLEAN, CORRUPT, cells=cells, max_new_tokens=3)
    there = pw.generate(demo, CLEAN, CORRUPT, cells=cells, max_new_tokens=3, remote="local")
    assert (there.clean_ids, there.corrupt_ids, there.patched_ids) == (
        here.clean_ids,
        here.corrupt_ids,
        here.patched_ids,
    )


def test_result_reads_as_a_table(demo):
    g = pw.generate(demo, CLEAN, CORRUPT, cells=CELLS["gpt2-demo"], max_new_tokens=2)
    df = g.to_dataframe()
    assert list(df.columns) == ["clean prompt", "corrupt prompt", "clean", "corrupt", "patched"]
    assert list(df["patched"]) == g.patched and list(df["clean prompt"]) == CLEAN
    text = repr(g)
    assert "Generation" in text and "denoise" in text and repr(g.patched[0]) in text


# --- refused before any forward pass -------------------------------------------------------------------


@pytest.fixture
def no_forward(demo):
    """Fails the test if the model runs a forward pass."""
    calls = []
    handle = demo._module.register_forward_pre_hook(lambda *a: calls.append(1))
    yield
    handle.remove()
    assert not calls, "a forward pass ran before the input was refused"


OTHER_SHAPE = {"n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "d_model": 64, "d_mlp": 128}


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(cells=CELLS["gpt2-demo"], max_new_tokens=0), pw.SettingsError, "max_new_tokens"),
        (dict(cells=CELLS["gpt2-demo"], max_new_tokens=-3), pw.SettingsError, "max_new_tokens"),
        (dict(cells=CELLS["gpt2-demo"], max_new_tokens=2.5), pw.SettingsError, "max_new_tokens"),
        (dict(cells=CELLS["gpt2-demo"], max_new_tokens=True), pw.SettingsError, "max_new_tokens"),
        (dict(cells=CELLS["gpt2-demo"], max_new_tokens="5"), pw.SettingsError, "max_new_tokens"),
        (dict(cells=CELLS["gpt2-demo"], max_new_tokens=51), pw.SettingsError, "context"),
        (
            dict(cells=CELLS["gpt2-demo"], circuit=pw.Circuit(cells=CELLS["gpt2-demo"])),
            pw.SettingsError,
            "not both",
        ),
        (dict(), pw.SettingsError, "cells"),
        (dict(cells=[]), pw.SettingsError, "cells"),
        (dict(cells=pw.Circuit(cells=CELLS["gpt2-demo"])), pw.SettingsError, "circuit="),
        (
            dict(circuit=pw.Circuit(cells=CELLS["gpt2-demo"], provenance={"shape": OTHER_SHAPE})),
            pw.SettingsError,
            "shape",
        ),
        (dict(circuit=CELLS["gpt2-demo"]), pw.SettingsError, "circuit"),
        (dict(cells=CELLS["gpt2-demo"], direction="sideways"), pw.SettingsError, "direction"),
        (dict(cells=[pw.Cell("head_out", 9, head=1)]), pw.SettingsError, "layer"),
        (dict(cells=[pw.Cell("attn_pattern", 1, head=0)]), pw.SettingsError, "attn_pattern"),
        (dict(cells=CELLS["gpt2-demo"], remote="maybe?"), pw.RemoteSettingError, "remote"),
    ],
)
def test_bad_input_is_refused_before_compute(demo, no_forward, kwargs, error, words):
    with pytest.raises(error, match=words):
        pw.generate(demo, CLEAN, CORRUPT, **kwargs)


def test_bad_prompts_are_refused_before_compute(demo, no_forward):
    with pytest.raises(pw.PromptError, match="noise"):
        pw.generate(demo, CLEAN[0], pw.noise("Mary"), cells=CELLS["gpt2-demo"])
    with pytest.raises(pw.PromptError, match="different lengths"):
        pw.generate(demo, CLEAN[0], CLEAN[0] + " Mary", cells=CELLS["gpt2-demo"])
    with pytest.raises(pw.PromptError, match="2 prompts but corrupt has 1"):
        pw.generate(demo, CLEAN, CORRUPT[:1], cells=CELLS["gpt2-demo"])
    with pytest.raises(pw.SettingsError, match="span label"):
        pw.generate(demo, T_CLEAN, T_CORRUPT, cells=[pw.Cell("resid_pre", 1, pos=3)])


def test_the_context_check_names_the_longest_prompt(demo, no_forward):
    # 14-token prompts in a 64-position context: 50 new tokens fit, 51 do not.
    with pytest.raises(pw.SettingsError, match=r"14 tokens.*51.*64"):
        pw.generate(demo, CLEAN, CORRUPT, cells=CELLS["gpt2-demo"], max_new_tokens=51)


def outside(model, circuit_nodes, n_pos):
    """The reference's writes for a circuit run alone, written out plainly: every node of the model (the
    embeddings, each head's output, each MLP's output) that is not in the circuit takes the corrupted
    prompt's value at every position of the clean prompt."""
    config = model._module.config
    nodes = [("resid_pre", 0, None)]  # the embeddings: the residual stream entering the first block
    for layer in range(config.num_hidden_layers):
        nodes += [("head_out", layer, h) for h in range(config.num_attention_heads)] + [("mlp_out", layer, None)]
    kept = {("resid_pre", 0, None) if c.site == "embed" else (c.site, c.layer, c.head) for c in circuit_nodes}
    return [(s, la, u, [(p, p) for p in range(n_pos)]) for s, la, u in nodes if (s, la, u) not in kept]


@pytest.mark.parametrize("name", ["gpt2-demo", "qwen2-gqa"])
def test_a_circuit_alone_is_the_clean_run_with_everything_else_corrupted(tiny_models, name):
    """``alone=True``: MIB's m(C) as a continuation, equal to the plain twin with every node outside the
    circuit overwritten with its corrupted value; the empty-ish and the full circuit give the corrupted and
    the clean runs' continuations."""
    model = tiny_models[name]
    config = model._module.config
    nodes = [pw.Cell("embed"), pw.Cell("head_out", 1, head=0), pw.Cell("mlp_out", 1), pw.Cell("head_out", 2, head=1)]
    circuit = pw.Circuit(cells=nodes, provenance={"direction": "noise", "shape": model_info(model).shape()})
    g = pw.generate(model, CLEAN, CORRUPT, circuit=circuit, alone=True, max_new_tokens=N)
    hf, eos = model._module, model.tokenizer.eos_token_id
    for i, (c, k) in enumerate(zip(CLEAN, CORRUPT)):
        c_ids, k_ids = ids_of(model, c), ids_of(model, k)
        assert g.patched_ids[i] == reference_generate(hf, k_ids, c_ids, outside(model, nodes, len(c_ids)), N, eos)
    assert g.direction == "noise"
    every = pw.faithfulness_nodes(config.num_hidden_layers, config.num_attention_heads)
    full = pw.generate(model, CLEAN, CORRUPT, cells=every, alone=True, max_new_tokens=N)
    assert full.patched_ids == full.clean_ids  # nothing outside: the clean run
    knocked = pw.generate(model, CLEAN, CORRUPT, circuit=circuit, max_new_tokens=N)
    assert knocked.patched_ids != g.patched_ids  # alone is not the circuit knocked out


def test_alone_refuses_what_faithfulness_refuses(demo, no_forward):
    with pytest.raises(pw.SettingsError, match="its direction is 'noise'"):
        pw.generate(demo, CLEAN, CORRUPT, cells=[pw.Cell("embed")], direction="denoise", alone=True)
    with pytest.raises(pw.SettingsError, match="nodes are"):
        pw.generate(demo, CLEAN, CORRUPT, cells=[pw.Cell("resid_pre", 1)], alone=True)
